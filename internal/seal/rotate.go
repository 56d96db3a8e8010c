package seal

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Paths of the two endpoints (the caller mounts the handlers there).
const (
	// RotatePath is the operator's rotation endpoint, on any server.
	RotatePath = "/flotilla/v1/operator/secrets/rotate"
	// PushPath is where a server receives a keyring from another server.
	PushPath = "/internal/v1/seal/keyring"
)

// maxKeyringBytes bounds a pushed keyring (thousands of keys fit).
const maxKeyringBytes = 1 << 20

// pushTimeout bounds one push to one server.
const pushTimeout = 10 * time.Second

// Reencrypter rewrites every Secret with the current primary key and says
// how many it rewrote (*api.Server).
type Reencrypter interface {
	ReencryptSecrets(ctx context.Context) (int, error)
}

// RotateResult is the answer of a successful rotation.
type RotateResult struct {
	// KeyID is the new primary key; Previous the one it replaced.
	KeyID    string `json:"keyID"`
	Previous string `json:"previous"`
	// Servers are the peers that received the keyring.
	Servers []string `json:"servers"`
	// Reencrypted is how many Secrets were rewritten with KeyID.
	Reencrypted int `json:"reencrypted"`
}

type rotator struct {
	live   *Live
	re     Reencrypter
	peers  func() []string
	client *http.Client
	log    *slog.Logger
	mu     sync.Mutex // one rotation at a time on this server
}

// RotateHandler serves POST RotatePath on any server: a new key, pushed to
// every server not primary, then pushed again primary, then every Secret
// re-encrypted through re (see the package comment). peers returns every
// server's API address, "host:port" (reached over https) or a base URL
// with a scheme; this server may be among them, its own live is installed
// directly either way. An empty list is refused (503). peers should be
// every server of the Raft configuration, reachable or not: a server left
// out would miss the key and fail to read the Secrets written with it. client must present this server's certificate
// (PushPath is for servers only); nil = http.DefaultClient; re may be nil
// (no re-encryption). Errors are metav1.Status JSON: 503 naming the server
// when a push fails, 500 otherwise. Logs go to slog.Default().
func RotateHandler(live *Live, re Reencrypter, peers func() []string, client *http.Client) http.Handler {
	if client == nil {
		client = http.DefaultClient
	}
	if peers == nil {
		peers = func() []string { return nil }
	}
	rt := &rotator{live: live, re: re, peers: peers, client: client, log: slog.Default().With("component", "seal")}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			writeStatus(w, methodNotAllowed(r.Method))
			return
		}
		res, err := rt.rotate(r.Context())
		if err != nil {
			var st apierrors.APIStatus
			if !errors.As(err, &st) {
				st = apierrors.NewInternalError(err)
			}
			writeStatus(w, st.Status())
			return
		}
		writeJSON(w, http.StatusOK, res)
	})
}

func (rt *rotator) rotate(ctx context.Context) (*RotateResult, error) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	peers := rt.peers()
	live := rt.live
	if len(peers) == 0 {
		// Even a one-server cluster lists itself: an empty list means the
		// membership is not known, and a key only this server held would
		// make the Secrets it writes unreadable everywhere else.
		return nil, apierrors.NewServiceUnavailable("no servers known to hand the new key to; try again shortly")
	}

	// Phase 1: every server learns the new key, still decrypt-only.
	staged := live.Keyring()
	prev := staged.PrimaryID()
	id := staged.AddKey()
	log := rt.log.With("key", id, "previous", prev)
	if err := live.Install(staged); err != nil {
		return nil, fmt.Errorf("install key %s here: %w", id, err)
	}
	if _, err := rt.pushAll(ctx, peers, staged); err != nil {
		log.Warn("secrets key rotation aborted before the new key was made primary", "err", err)
		return nil, apierrors.NewServiceUnavailable(fmt.Sprintf("%v; key %s was not made primary", err, id))
	}

	// Phase 2: every server encrypts with it.
	primary := staged.Clone()
	if err := primary.SetPrimary(id); err != nil {
		return nil, err
	}
	switched, err := rt.pushAll(ctx, peers, primary)
	if err == nil {
		if ierr := live.Install(primary); ierr != nil {
			err = fmt.Errorf("install key %s as primary here: %w", id, ierr)
		}
	}
	if err != nil {
		// Put back the servers that already switched: the key stays
		// installed everywhere, primary nowhere.
		if _, rerr := rt.pushAll(context.WithoutCancel(ctx), switched, staged); rerr != nil {
			log.Error("secrets key rotation: could not switch servers back to the previous primary", "servers", switched, "err", rerr)
		}
		log.Warn("secrets key rotation aborted while making the new key primary", "err", err)
		return nil, apierrors.NewServiceUnavailable(fmt.Sprintf("%v; key %s was not made primary", err, id))
	}
	log.Info("secrets key rotated", "servers", len(peers))

	res := &RotateResult{KeyID: id, Previous: prev, Servers: append([]string{}, peers...)}
	if rt.re != nil {
		n, err := rt.re.ReencryptSecrets(ctx)
		res.Reencrypted = n
		if err != nil {
			return nil, fmt.Errorf("key %s is primary on every server, but re-encrypting Secrets failed after %d (run the rotation again): %w", id, n, err)
		}
		log.Info("secrets re-encrypted", "count", n)
	}
	return res, nil
}

// pushAll sends k to every peer at once. It returns the peers that took it
// and, when any did not, an error naming the first of those (in peers'
// order) and how many failed.
func (rt *rotator) pushAll(ctx context.Context, peers []string, k *Keyring) ([]string, error) {
	body, err := k.Marshal()
	if err != nil {
		return nil, err
	}
	errs := make([]error, len(peers))
	var wg sync.WaitGroup
	for i, p := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = rt.push(ctx, p, body)
		}()
	}
	wg.Wait()
	var ok []string
	var first error
	failed := 0
	for i, p := range peers {
		if errs[i] == nil {
			ok = append(ok, p)
			continue
		}
		failed++
		if first == nil {
			first = fmt.Errorf("push keyring to server %s: %w", p, errs[i])
		}
	}
	if failed > 1 {
		first = fmt.Errorf("%w (and %d more servers failed)", first, failed-1)
	}
	return ok, first
}

func (rt *rotator) push(ctx context.Context, peer string, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, pushTimeout)
	defer cancel()
	base := peer
	if !strings.Contains(base, "://") {
		base = "https://" + base
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(base, "/")+PushPath, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := rt.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode/100 == 2 {
		return nil
	}
	var st metav1.Status
	if json.Unmarshal(msg, &st) == nil && st.Message != "" {
		return fmt.Errorf("%s: %s", resp.Status, st.Message)
	}
	return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(msg)))
}

// PushHandler serves POST PushPath: install the keyring in the body (JSON,
// as Keyring.Marshal) into live, merged (see Live.Install). It must be
// reachable by servers only: mount it under /internal/. Logs go to
// slog.Default().
func PushHandler(live *Live) http.Handler {
	log := slog.Default().With("component", "seal")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			writeStatus(w, methodNotAllowed(r.Method))
			return
		}
		data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxKeyringBytes))
		if err != nil {
			writeStatus(w, apierrors.NewBadRequest("read keyring: "+err.Error()).Status())
			return
		}
		k, err := ParseKeyring(data)
		if err != nil {
			writeStatus(w, apierrors.NewBadRequest(err.Error()).Status())
			return
		}
		if err := live.Install(k); err != nil {
			if errors.Is(err, ErrKeyConflict) {
				writeStatus(w, metav1.Status{Status: metav1.StatusFailure, Code: http.StatusConflict, Reason: metav1.StatusReasonConflict, Message: err.Error()})
				return
			}
			log.Error("install pushed secrets keyring", "err", err)
			writeStatus(w, apierrors.NewInternalError(err).Status())
			return
		}
		log.Info("secrets keyring installed", "primary", live.PrimaryID())
		writeJSON(w, http.StatusOK, map[string]string{"primary": live.PrimaryID()})
	})
}

func methodNotAllowed(method string) metav1.Status {
	return metav1.Status{Status: metav1.StatusFailure, Code: http.StatusMethodNotAllowed, Reason: metav1.StatusReasonMethodNotAllowed,
		Message: fmt.Sprintf("%s is not supported: use POST", method)}
}

func writeStatus(w http.ResponseWriter, st metav1.Status) {
	st.Kind, st.APIVersion = "Status", "v1"
	writeJSON(w, int(st.Code), st)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
