package seal

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// peer is one "server": its own Live behind PushHandler.
type peer struct {
	live *Live
	srv  *httptest.Server
	// fail, when it returns true for the n-th push (from 1), answers 500.
	fail   func(n int) bool
	pushes atomic.Int32
}

// newPeers starts n servers sharing the keyring k (as after bootstrap).
func newPeers(t *testing.T, n int, k *Keyring) []*peer {
	t.Helper()
	var ps []*peer
	for range n {
		live, err := NewLive(filepath.Join(t.TempDir(), "secrets.json"), k)
		if err != nil {
			t.Fatal(err)
		}
		p := &peer{live: live}
		h := PushHandler(live)
		p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != PushPath {
				http.NotFound(w, r)
				return
			}
			n := int(p.pushes.Add(1))
			if p.fail != nil && p.fail(n) {
				http.Error(w, "disk full", http.StatusInternalServerError)
				return
			}
			h.ServeHTTP(w, r)
		}))
		t.Cleanup(p.srv.Close)
		ps = append(ps, p)
	}
	return ps
}

type reencryptFunc func(context.Context) (int, error)

func (f reencryptFunc) ReencryptSecrets(ctx context.Context) (int, error) { return f(ctx) }

func urls(ps []*peer) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.srv.URL)
	}
	return out
}

func postRotate(t *testing.T, h http.Handler) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, RotatePath, nil))
	return rec
}

func TestRotateReachesEveryServer(t *testing.T) {
	k := NewKeyring()
	old := k.PrimaryID()
	local, err := NewLive(filepath.Join(t.TempDir(), "secrets.json"), k)
	if err != nil {
		t.Fatal(err)
	}
	peers := newPeers(t, 2, k)
	sealedBefore, _ := local.Encrypt([]byte("old secret"))
	var reencryptSaw []string
	h := RotateHandler(local, reencryptFunc(func(context.Context) (int, error) {
		// Re-encryption runs only once every server encrypts with the new key.
		for _, p := range peers {
			reencryptSaw = append(reencryptSaw, p.live.PrimaryID())
		}
		reencryptSaw = append(reencryptSaw, local.PrimaryID())
		return 7, nil
	}), func() []string { return urls(peers) }, nil)
	rec := postRotate(t, h)
	if rec.Code != http.StatusOK {
		t.Fatalf("rotate: %d %s", rec.Code, rec.Body)
	}
	var res RotateResult
	if err := json.Unmarshal(rec.Body.Bytes(), &res); err != nil {
		t.Fatal(err)
	}
	if res.KeyID == "" || res.KeyID == old || res.Previous != old || res.Reencrypted != 7 || len(res.Servers) != 2 {
		t.Fatalf("result %+v (old key %q)", res, old)
	}
	for i, id := range reencryptSaw {
		if id != res.KeyID {
			t.Fatalf("server %d had primary %q when re-encryption ran, want %q", i, id, res.KeyID)
		}
	}
	for i, p := range peers {
		if got := p.pushes.Load(); got != 2 {
			t.Fatalf("peer %d got %d pushes, want 2 (new key, then primary)", i, got)
		}
		if p.live.PrimaryID() != res.KeyID {
			t.Fatalf("peer %d primary %q, want %q", i, p.live.PrimaryID(), res.KeyID)
		}
		// Every server reads what any other wrote, before and after.
		if got, err := p.live.Decrypt(sealedBefore); err != nil || string(got) != "old secret" {
			t.Fatalf("peer %d decrypting a value sealed before rotation: %q, %v", i, got, err)
		}
		fresh, _ := p.live.Encrypt([]byte("new secret"))
		if got, err := local.Decrypt(fresh); err != nil || string(got) != "new secret" {
			t.Fatalf("local decrypting peer %d's new value: %q, %v", i, got, err)
		}
		// And it is on the peer's disk.
		back, err := Open(p.live.path)
		if err != nil || back.PrimaryID() != res.KeyID {
			t.Fatalf("peer %d's file: primary %q, %v", i, back.PrimaryID(), err)
		}
	}
	if local.PrimaryID() != res.KeyID {
		t.Fatalf("local primary %q, want %q", local.PrimaryID(), res.KeyID)
	}
}

func TestRotateFailingPeerAborts(t *testing.T) {
	for _, tc := range []struct {
		name string
		fail func(n int) bool // for the second peer
	}{
		{"first push fails", func(int) bool { return true }},
		{"second push fails", func(n int) bool { return n == 2 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := NewKeyring()
			old := k.PrimaryID()
			local, err := NewLive("", k)
			if err != nil {
				t.Fatal(err)
			}
			peers := newPeers(t, 2, k)
			peers[1].fail = tc.fail
			reencrypted := false
			h := RotateHandler(local, reencryptFunc(func(context.Context) (int, error) { reencrypted = true; return 0, nil }),
				func() []string { return urls(peers) }, nil)
			rec := postRotate(t, h)
			if rec.Code != http.StatusServiceUnavailable {
				t.Fatalf("rotate with a failing peer: %d %s, want 503", rec.Code, rec.Body)
			}
			var st metav1.Status
			if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil || st.Kind != "Status" {
				t.Fatalf("answer is not a Status: %s", rec.Body)
			}
			if !strings.Contains(st.Message, peers[1].srv.URL) {
				t.Fatalf("message %q does not name the failing server %s", st.Message, peers[1].srv.URL)
			}
			if reencrypted {
				t.Fatal("re-encryption ran after a failed push")
			}
			for i, l := range []*Live{local, peers[0].live, peers[1].live} {
				if l.PrimaryID() != old {
					t.Fatalf("server %d has primary %q after the aborted rotation, want the old %q", i, l.PrimaryID(), old)
				}
			}
		})
	}
}

func TestPushHandlerRejects(t *testing.T) {
	live, err := NewLive("", NewKeyring())
	if err != nil {
		t.Fatal(err)
	}
	h := PushHandler(live)
	conflicting := keyringWith(t, live.PrimaryID(), make([]byte, keySize))
	cj, _ := conflicting.Marshal()
	for _, tc := range []struct {
		name, method, body string
		code               int
	}{
		{"get", http.MethodGet, "", http.StatusMethodNotAllowed},
		{"garbage", http.MethodPost, "nope", http.StatusBadRequest},
		{"conflicting key", http.MethodPost, string(cj), http.StatusConflict},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := live.PrimaryID()
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(tc.method, PushPath, strings.NewReader(tc.body)))
			if rec.Code != tc.code {
				t.Fatalf("code %d, want %d: %s", rec.Code, tc.code, rec.Body)
			}
			if live.PrimaryID() != before || len(live.Keyring().IDs()) != 1 {
				t.Fatal("a refused push changed the keyring")
			}
		})
	}
}

func TestRotateRefusesWithoutPeers(t *testing.T) {
	live, err := NewLive("", NewKeyring())
	if err != nil {
		t.Fatal(err)
	}
	before := live.PrimaryID()
	rec := postRotate(t, RotateHandler(live, nil, func() []string { return nil }, nil))
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("rotate with no known servers: %d %s, want 503", rec.Code, rec.Body)
	}
	if live.PrimaryID() != before || len(live.Keyring().IDs()) != 1 {
		t.Fatal("a refused rotation changed the keyring")
	}
}
