package auth_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/pem"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"flotilla/api"
	"flotilla/api/apitest"
	"flotilla/api/auth"
	"flotilla/fsm"
	"flotilla/internal/satoken"
)

// costClients is how many client goroutines each sub-benchmark runs, as
// the API benchmark of issue 3 (64 concurrent creators).
const costClients = 64

// costGetPods is how many pods the GET sub-benchmarks read, round robin.
const costGetPods = 100

// BenchmarkAPISecurityCost measures what TLS and the auth Middleware cost
// the whole API, in one run (issue 7: at most 20% of its throughput):
// client-go (JSON, QPS -1, one clientset shared by 64 goroutines) against
// api.Server on apitest's in-memory cluster, as
//
//   - plain: HTTP/1.1 without TLS, no Middleware (enough idle connections
//     for every goroutine, as storebench's API phase);
//   - tls: HTTPS with HTTP/2 (as the product serves it), no Middleware:
//     not one of issue 7's cases but the control that separates the cost
//     of the Middleware from that of the transport (plain is HTTP/1.1 on
//     64 connections, the others HTTP/2 on one);
//   - tls-admin: as tls, with the Middleware and the admin token (the
//     system:masters fast path);
//   - tls-rbac: the same with a pod-bound ServiceAccount token signed by
//     satoken, allowed by a RoleBinding (the RBAC path, with the
//     ServiceAccount and pod existence checks of every request).
//
// Each runs pod creates and single-pod GETs and reports ops/s. Operations
// are the outer level so the numbers compared are measured next to each
// other in time. Each timed run gets a fresh server and store; there is no
// Raft here, so a create costs far less than on a real cluster and the
// ratio is a pessimistic bound.
func BenchmarkAPISecurityCost(b *testing.B) {
	// tls-rbac-h1: the RBAC path over HTTPS with HTTP/1.1 (a pool of
	// connections, as plain), to tell HTTP/2's share of the cost from
	// TLS's and authorization's.
	modes := []string{"plain", "tls", "tls-admin", "tls-rbac", "tls-rbac-h1"}
	b.Run("create", func(b *testing.B) {
		for _, mode := range modes {
			b.Run(mode, func(b *testing.B) {
				pods := startCostServer(b, mode).CoreV1().Pods(metav1.NamespaceDefault)
				var seq atomic.Int64
				runCost(b, func(ctx context.Context) error {
					_, err := pods.Create(ctx, costPod("c-"+strconv.FormatInt(seq.Add(1), 10)), metav1.CreateOptions{})
					return err
				})
			})
		}
	})
	b.Run("get", func(b *testing.B) {
		for _, mode := range modes {
			b.Run(mode, func(b *testing.B) {
				pods := startCostServer(b, mode).CoreV1().Pods(metav1.NamespaceDefault)
				for i := range costGetPods {
					if _, err := pods.Create(context.Background(), costPod(getPodName(i)), metav1.CreateOptions{}); err != nil {
						b.Fatal(err)
					}
				}
				var seq atomic.Int64
				runCost(b, func(ctx context.Context) error {
					_, err := pods.Get(ctx, getPodName(int(seq.Add(1)%costGetPods)), metav1.GetOptions{})
					return err
				})
			})
		}
	})
}

// runCost runs op from costClients goroutines b.N times in all and
// reports the throughput.
func runCost(b *testing.B, op func(ctx context.Context) error) {
	b.Helper()
	ctx := context.Background()
	if err := op(ctx); err != nil { // connections up, the path works
		b.Fatal(err)
	}
	b.SetParallelism(max(1, costClients/runtime.GOMAXPROCS(0)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := op(ctx); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

func getPodName(i int) string { return "g-" + strconv.Itoa(i) }

// costPod is a minimal valid pod.
func costPod(name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "nginx:1.27"}}},
	}
}

// startCostServer starts the API for mode (see BenchmarkAPISecurityCost)
// and returns a clientset as that mode's user; both stop when b's run
// ends.
func startCostServer(b *testing.B, mode string) kubernetes.Interface {
	b.Helper()
	h1 := strings.HasSuffix(mode, "-h1")
	mode = strings.TrimSuffix(mode, "-h1")
	discard := slog.New(slog.DiscardHandler)
	cluster := apitest.NewCluster(fsm.Config{})
	cfg := api.Config{Cluster: cluster, Logger: discard}
	var a *auth.Auth
	var saKey *ecdsa.PrivateKey
	if mode == "tls-admin" || mode == "tls-rbac" {
		var err error
		if saKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			b.Fatal(err)
		}
		// VerifySA as cmd/flotilla wires it.
		a, err = auth.New(auth.Config{
			Store:      cluster.Store(),
			AdminToken: adminToken,
			VerifySA:   auth.VerifySAWith(&saKey.PublicKey),
			ReadIndex:  cluster.ReadIndex,
			Logger:     discard,
		})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		b.Cleanup(func() { cancel(); a.Wait() })
		if err := a.Start(ctx); err != nil {
			b.Fatal(err)
		}
		cfg.Middleware = a.Middleware
	}
	srv, err := api.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.EnsureDefaults(ctx); err != nil {
		b.Fatalf("EnsureDefaults: %v", err)
	}

	hs := httptest.NewUnstartedServer(srv.Handler())
	rc := &rest.Config{
		QPS:           -1,
		ContentConfig: rest.ContentConfig{ContentType: "application/json", AcceptContentTypes: "application/json"},
	}
	if mode == "plain" {
		hs.Start()
		b.Cleanup(hs.Close)
		tr := &http.Transport{MaxIdleConns: 2 * costClients, MaxIdleConnsPerHost: 2 * costClients, DisableCompression: true}
		b.Cleanup(tr.CloseIdleConnections)
		rc.Host, rc.Transport = hs.URL, tr
		return newClientset(b, rc)
	}
	hs.EnableHTTP2 = !h1
	hs.StartTLS()
	b.Cleanup(hs.Close)
	rc.Host = hs.URL
	rc.TLSClientConfig.CAData = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: hs.Certificate().Raw})
	if mode == "tls" {
		return newClientset(b, rc)
	}
	rc.BearerToken = adminToken
	admin := newClientset(b, rc)
	if mode == "tls-admin" {
		return admin
	}

	// tls-rbac: ServiceAccount "bench" may get and create pods in default
	// by a RoleBinding; its token is bound to a pod, as a mounted one is.
	ns := metav1.NamespaceDefault
	sa, err := admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "bench"}}, metav1.CreateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	runner := costPod("runner")
	runner.Spec.ServiceAccountName = sa.Name
	if runner, err = admin.CoreV1().Pods(ns).Create(ctx, runner, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	if _, err := admin.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-writer"},
		Rules:      []rbacv1.PolicyRule{{Verbs: []string{"get", "create"}, APIGroups: []string{""}, Resources: []string{"pods"}}},
	}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	rb, err := admin.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "bench"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "pod-writer"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: sa.Name}},
	}, metav1.CreateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	rev, err := strconv.ParseUint(rb.ResourceVersion, 10, 64)
	if err != nil {
		b.Fatal(err)
	}
	if err := a.WaitRBAC(ctx, rev); err != nil {
		b.Fatal(err)
	}
	tok, err := satoken.Issue(saKey, satoken.Claims{
		Namespace: ns, ServiceAccount: sa.Name, ServiceAccountUID: string(sa.UID),
		PodName: runner.Name, PodUID: string(runner.UID),
		Audiences: []string{auth.DefaultAudience}, Expiry: time.Now().Add(time.Hour),
	})
	if err != nil {
		b.Fatal(err)
	}
	sc := rest.CopyConfig(rc)
	sc.BearerToken = tok
	return newClientset(b, sc)
}

func newClientset(b *testing.B, rc *rest.Config) kubernetes.Interface {
	b.Helper()
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		b.Fatal(err)
	}
	return cs
}
