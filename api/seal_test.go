package api_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"flotilla/api"
	"flotilla/api/apitest"
	"flotilla/fsm"
	"flotilla/internal/seal"
)

func newLive(t *testing.T) *seal.Live {
	t.Helper()
	live, err := seal.NewLive("", seal.NewKeyring())
	if err != nil {
		t.Fatal(err)
	}
	return live
}

func sealedServer(t *testing.T, live *seal.Live) *apitest.Server {
	t.Helper()
	return apitest.NewServer(t, apitest.Options{API: func(c *api.Config) { c.Seal = live }})
}

// apiOver serves a second API over the same cluster (another master, or
// the same one restarted with another Seal).
func apiOver(t *testing.T, c api.Cluster, s api.Sealer) (*api.Server, kubernetes.Interface) {
	t.Helper()
	cfg := api.Config{Cluster: c}
	if s != nil {
		cfg.Seal = s
	}
	srv, err := api.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: hs.URL, ContentConfig: rest.ContentConfig{ContentType: "application/json"}, QPS: 1000, Burst: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return srv, cs
}

func secretKey(ns, name string) string { return "/core/secrets/" + ns + "/" + name }

// rawSecret is the value the FSM holds for a Secret.
func rawSecret(t *testing.T, st *fsm.Store, ns, name string) *fsm.KeyValue {
	t.Helper()
	kv, _ := st.Get(secretKey(ns, name))
	if kv == nil {
		t.Fatalf("no stored value for secret %s/%s", ns, name)
	}
	return kv
}

// assertSealed fails unless the stored value of the Secret is sealed and
// shows none of the plaintexts, raw or base64 (as JSON writes []byte).
func assertSealed(t *testing.T, st *fsm.Store, ns, name string, plains ...string) {
	t.Helper()
	v := rawSecret(t, st, ns, name).Value
	if !bytes.HasPrefix(v, []byte(seal.Prefix)) {
		t.Fatalf("secret %s/%s is stored unsealed: %.80q", ns, name, v)
	}
	for _, p := range plains {
		for _, form := range []string{p, base64.StdEncoding.EncodeToString([]byte(p)), base64.RawStdEncoding.EncodeToString([]byte(p))} {
			if bytes.Contains(v, []byte(form)) {
				t.Fatalf("stored secret %s/%s contains %q", ns, name, form)
			}
		}
	}
	if bytes.Contains(v, []byte(name)) {
		t.Fatalf("stored secret %s/%s shows its name: the whole object must be sealed", ns, name)
	}
}

func wantData(t *testing.T, what string, s *corev1.Secret, key, want string) {
	t.Helper()
	if got := string(s.Data[key]); got != want {
		t.Fatalf("%s: data[%q] = %q, want %q", what, key, got, want)
	}
}

// sealEvent reads one watch event within a deadline.
func sealEvent(t *testing.T, w watch.Interface) watch.Event {
	t.Helper()
	select {
	case ev, ok := <-w.ResultChan():
		if !ok {
			t.Fatal("watch closed")
		}
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no watch event within 10s")
	}
	return watch.Event{}
}

func rawRequest(t *testing.T, method, url, accept string, body []byte) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data
}

func TestSecretsSealedAtRest(t *testing.T) {
	live := newLive(t)
	s := sealedServer(t, live)
	st := s.Cluster.Store()
	ctx := ctxT(t)
	secrets := s.Client.CoreV1().Secrets("default")
	const p1, p2, p3 = "hunter2-first-plaintext", "second-plaintext-value", "third-plaintext-value"

	created, err := secrets.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "db", Labels: map[string]string{"app": "db"}, Finalizers: []string{"example.com/keep"}},
		Data:       map[string][]byte{"password": []byte(p1)},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wantData(t, "create", created, "password", p1)
	assertSealed(t, st, "default", "db", p1)

	got, err := secrets.Get(ctx, "db", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wantData(t, "get", got, "password", p1)
	if got.ResourceVersion != created.ResourceVersion {
		t.Fatalf("get rv %s, create rv %s", got.ResourceVersion, created.ResourceVersion)
	}
	list, err := secrets.List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 1 {
		t.Fatalf("list: %d items", len(list.Items))
	}
	wantData(t, "list", &list.Items[0], "password", p1)

	// A watch with a selector also decodes every event's previous value.
	w, err := secrets.Watch(ctx, metav1.ListOptions{ResourceVersion: created.ResourceVersion, LabelSelector: "app=db"})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	// And a watch from the start lists the stored secret.
	w0, err := secrets.Watch(ctx, metav1.ListOptions{ResourceVersion: "0"})
	if err != nil {
		t.Fatal(err)
	}
	ev := sealEvent(t, w0)
	w0.Stop()
	if ev.Type != watch.Added {
		t.Fatalf("initial watch event %s", ev.Type)
	}
	wantData(t, "initial watch event", ev.Object.(*corev1.Secret), "password", p1)

	// update
	got.Data["password"] = []byte(p2)
	updated, err := secrets.Update(ctx, got, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wantData(t, "update", updated, "password", p2)
	assertSealed(t, st, "default", "db", p1, p2)
	ev = sealEvent(t, w)
	if ev.Type != watch.Modified {
		t.Fatalf("after update: event %s", ev.Type)
	}
	wantData(t, "update event", ev.Object.(*corev1.Secret), "password", p2)

	// An update that changes nothing is skipped, as without a Seal.
	same, err := secrets.Update(ctx, updated, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if same.ResourceVersion != updated.ResourceVersion {
		t.Fatalf("a no-op update moved resourceVersion %s -> %s", updated.ResourceVersion, same.ResourceVersion)
	}

	// patch (merge, with write-only stringData)
	patched, err := secrets.Patch(ctx, "db", types.MergePatchType, []byte(`{"stringData":{"password":"`+p3+`"}}`), metav1.PatchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wantData(t, "patch", patched, "password", p3)
	assertSealed(t, st, "default", "db", p1, p2, p3)
	ev = sealEvent(t, w)
	wantData(t, "patch event", ev.Object.(*corev1.Secret), "password", p3)

	// Table output (kubectl get) decodes too.
	code, body := rawRequest(t, http.MethodGet, s.URL+"/api/v1/namespaces/default/secrets", "application/json;as=Table;v=v1;g=meta.k8s.io", nil)
	var tbl metav1.Table
	if code != http.StatusOK || json.Unmarshal(body, &tbl) != nil || len(tbl.Rows) != 1 {
		t.Fatalf("table: %d %s", code, body)
	}

	// delete, kept by its finalizer: the answer is the object.
	code, body = rawRequest(t, http.MethodDelete, s.URL+"/api/v1/namespaces/default/secrets/db", "", nil)
	var deleting corev1.Secret
	if code != http.StatusOK || json.Unmarshal(body, &deleting) != nil {
		t.Fatalf("delete: %d %s", code, body)
	}
	wantData(t, "delete answer", &deleting, "password", p3)
	if deleting.DeletionTimestamp == nil {
		t.Fatal("delete answer has no deletionTimestamp")
	}
	assertSealed(t, st, "default", "db", p3)
	ev = sealEvent(t, w)
	wantData(t, "delete (finalizer) event", ev.Object.(*corev1.Secret), "password", p3)

	// The last finalizer goes: the watch sees DELETED with the object.
	if _, err := secrets.Patch(ctx, "db", types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	ev = sealEvent(t, w)
	if ev.Type != watch.Deleted {
		t.Fatalf("after the last finalizer: event %s", ev.Type)
	}
	wantData(t, "deleted event", ev.Object.(*corev1.Secret), "password", p3)

	// deletecollection answers with the deleted objects.
	for _, n := range []string{"a", "b"} {
		if _, err := secrets.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "bulk-" + n}, StringData: map[string]string{"token": "bulk-plaintext-" + n}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		assertSealed(t, st, "default", "bulk-"+n, "bulk-plaintext-"+n)
	}
	code, body = rawRequest(t, http.MethodDelete, s.URL+"/api/v1/namespaces/default/secrets", "", nil)
	var gone corev1.SecretList
	if code != http.StatusOK || json.Unmarshal(body, &gone) != nil || len(gone.Items) != 2 {
		t.Fatalf("deletecollection: %d %s", code, body)
	}
	for _, it := range gone.Items {
		wantData(t, "deletecollection", &it, "token", "bulk-plaintext-"+it.Name[len("bulk-"):])
	}

	// Other resources are not sealed.
	if _, err := s.Client.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "plain"}, Data: map[string]string{"k": "visible"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if kv, _ := st.Get("/core/configmaps/default/plain"); kv == nil || !bytes.Contains(kv.Value, []byte("visible")) {
		t.Fatal("a ConfigMap was not stored as plain JSON")
	}
}

func TestSecretWrittenBeforeSealStillReads(t *testing.T) {
	s := apitest.NewServer(t) // no Seal: the cluster before encryption
	ctx := ctxT(t)
	if _, err := s.Client.CoreV1().Secrets("default").Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "legacy"}, StringData: map[string]string{"k": "legacy-plaintext"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if v := rawSecret(t, s.Cluster.Store(), "default", "legacy").Value; !bytes.HasPrefix(v, []byte("{")) {
		t.Fatalf("without a Seal the secret should be JSON: %.40q", v)
	}
	live := newLive(t)
	_, cs := apiOver(t, s.Cluster, live)
	got, err := cs.CoreV1().Secrets("default").Get(ctx, "legacy", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wantData(t, "legacy get", got, "k", "legacy-plaintext")
	list, err := cs.CoreV1().Secrets("default").List(ctx, metav1.ListOptions{})
	if err != nil || len(list.Items) != 1 {
		t.Fatalf("list: %v %v", list, err)
	}
	wantData(t, "legacy list", &list.Items[0], "k", "legacy-plaintext")
	// The next write seals it.
	got.Labels = map[string]string{"touched": "yes"}
	if _, err := cs.CoreV1().Secrets("default").Update(ctx, got, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	assertSealed(t, s.Cluster.Store(), "default", "legacy", "legacy-plaintext")
}

// onlyKey returns a Live holding just the key id of k (the old keys gone).
func onlyKey(t *testing.T, k *seal.Keyring, id string) *seal.Live {
	t.Helper()
	data, err := k.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var j struct {
		Primary string            `json:"primary"`
		Keys    map[string][]byte `json:"keys"`
	}
	if err := json.Unmarshal(data, &j); err != nil {
		t.Fatal(err)
	}
	j.Primary, j.Keys = id, map[string][]byte{id: j.Keys[id]}
	data, _ = json.Marshal(j)
	only, err := seal.ParseKeyring(data)
	if err != nil {
		t.Fatal(err)
	}
	live, err := seal.NewLive("", only)
	if err != nil {
		t.Fatal(err)
	}
	return live
}

func TestReencryptSecrets(t *testing.T) {
	s := apitest.NewServer(t)
	ctx := ctxT(t)
	st := s.Cluster.Store()
	// One Secret from before encryption ...
	if _, err := s.Client.CoreV1().Secrets("default").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "old"}, StringData: map[string]string{"k": "old-plaintext"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// ... and three sealed with the first key.
	live := newLive(t)
	first := live.PrimaryID()
	sealedAPI, cs := apiOver(t, s.Cluster, live)
	for _, ns := range []string{"default", "kube-system"} {
		for _, n := range []string{"x", "y"} {
			if ns == "kube-system" && n == "y" {
				continue
			}
			if _, err := cs.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: n}, StringData: map[string]string{"k": ns + "-" + n + "-plaintext"}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			if id, _ := seal.KeyID(rawSecret(t, st, ns, n).Value); id != first {
				t.Fatalf("%s/%s sealed with %q, want %q", ns, n, id, first)
			}
		}
	}
	cmKV, _ := st.Get("/core/configmaps/kube-system/extension-apiserver-authentication")
	before, err := cs.CoreV1().Secrets("default").Get(ctx, "x", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w, err := cs.CoreV1().Secrets("default").Watch(ctx, metav1.ListOptions{ResourceVersion: before.ResourceVersion, FieldSelector: "metadata.name=x"})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	k := live.Keyring()
	second := k.Rotate()
	if err := live.Install(k); err != nil {
		t.Fatal(err)
	}
	n, err := sealedAPI.ReencryptSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 4 {
		t.Fatalf("ReencryptSecrets rewrote %d secrets, want 4", n)
	}
	for _, key := range [][2]string{{"default", "old"}, {"default", "x"}, {"default", "y"}, {"kube-system", "x"}} {
		if id, ok := seal.KeyID(rawSecret(t, st, key[0], key[1]).Value); !ok || id != second {
			t.Fatalf("%s/%s sealed with %q after re-encryption, want %q", key[0], key[1], id, second)
		}
	}
	assertSealed(t, st, "default", "old", "old-plaintext")
	if cmKV != nil {
		if now, _ := st.Get(cmKV.Key); now.ModRevision != cmKV.ModRevision {
			t.Fatal("ReencryptSecrets rewrote a ConfigMap")
		}
	}
	// An ordinary write: a new resourceVersion, a MODIFIED event, the same object.
	ev := sealEvent(t, w)
	obj := ev.Object.(*corev1.Secret)
	if ev.Type != watch.Modified || obj.ResourceVersion == before.ResourceVersion {
		t.Fatalf("event %s rv %s (before %s)", ev.Type, obj.ResourceVersion, before.ResourceVersion)
	}
	wantData(t, "re-encrypted event", obj, "k", "default-x-plaintext")

	// The first key is no longer needed: a server with only the second reads everything.
	_, only := apiOver(t, s.Cluster, onlyKey(t, live.Keyring(), second))
	for _, key := range [][2]string{{"default", "old"}, {"default", "x"}, {"default", "y"}, {"kube-system", "x"}} {
		got, err := only.CoreV1().Secrets(key[0]).Get(ctx, key[1], metav1.GetOptions{})
		if err != nil {
			t.Fatalf("%s/%s with only the new key: %v", key[0], key[1], err)
		}
		want := key[0] + "-" + key[1] + "-plaintext"
		if key[1] == "old" {
			want = "old-plaintext"
		}
		wantData(t, "after re-encryption", got, "k", want)
	}
	// While a server with only the first key cannot: the data really moved.
	_, stale := apiOver(t, s.Cluster, onlyKey(t, live.Keyring(), first))
	if _, err := stale.CoreV1().Secrets("default").Get(ctx, "x", metav1.GetOptions{}); err == nil {
		t.Fatal("a server holding only the old key read a re-encrypted secret")
	}

	// Nothing left to move still rewrites (with the same primary) and is harmless.
	if n, err := sealedAPI.ReencryptSecrets(ctx); err != nil || n != 4 {
		t.Fatalf("second ReencryptSecrets: %d, %v", n, err)
	}
}

// racyCluster runs before once, just ahead of the first Apply after it is set.
type racyCluster struct {
	*apitest.Cluster
	mu     sync.Mutex
	before func()
}

func (c *racyCluster) setBefore(f func()) {
	c.mu.Lock()
	c.before = f
	c.mu.Unlock()
}

func (c *racyCluster) Apply(ctx context.Context, txn *fsm.Txn) (*fsm.TxnResult, error) {
	c.mu.Lock()
	f := c.before
	c.before = nil
	c.mu.Unlock()
	if f != nil {
		f()
	}
	return c.Cluster.Apply(ctx, txn)
}

func TestReencryptSecretsRetriesConflict(t *testing.T) {
	s := apitest.NewServer(t)
	ctx := ctxT(t)
	live := newLive(t)
	rc := &racyCluster{Cluster: s.Cluster}
	srv, cs := apiOver(t, rc, live)
	if _, err := cs.CoreV1().Secrets("default").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "busy"}, StringData: map[string]string{"k": "v1"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	k := live.Keyring()
	second := k.Rotate()
	if err := live.Install(k); err != nil {
		t.Fatal(err)
	}
	// A client's write lands between ReencryptSecrets' read and its write.
	rc.setBefore(func() {
		cur, err := cs.CoreV1().Secrets("default").Get(ctx, "busy", metav1.GetOptions{})
		if err != nil {
			t.Error(err)
			return
		}
		cur.Data["k"] = []byte("v2")
		if _, err := cs.CoreV1().Secrets("default").Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
			t.Error(err)
		}
	})
	n, err := srv.ReencryptSecrets(ctx)
	if err != nil || n != 1 {
		t.Fatalf("ReencryptSecrets: %d, %v", n, err)
	}
	got, err := cs.CoreV1().Secrets("default").Get(ctx, "busy", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wantData(t, "after a racing update", got, "k", "v2")
	if id, _ := seal.KeyID(rawSecret(t, s.Cluster.Store(), "default", "busy").Value); id != second {
		t.Fatalf("sealed with %q, want %q", id, second)
	}
}

// The rotation endpoint re-encrypts through the API server.
var _ seal.Reencrypter = (*api.Server)(nil)

// The API's Sealer is what a server holds.
var _ api.Sealer = (*seal.Live)(nil)
