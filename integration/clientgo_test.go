package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/retry"
)

// restConfig loads the admin kubeconfig s wrote, as any client-go program
// would; wrap, when set, sees every request and response.
func restConfig(t *testing.T, s *server, wrap func(http.RoundTripper) http.RoundTripper) *rest.Config {
	t.Helper()
	kc := filepath.Join(s.dataDir, "kubeconfig")
	waitFor(t, 10*time.Second, s.name+"'s kubeconfig", func() (bool, string) {
		return fileExists(kc), kc + " not written yet"
	})
	cfg, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		t.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 200, 400
	cfg.Timeout = 10 * time.Second
	if wrap != nil {
		cfg.Wrap(wrap)
	}
	return cfg
}

func clientsetFor(t *testing.T, s *server) *kubernetes.Clientset {
	t.Helper()
	cs, err := kubernetes.NewForConfig(restConfig(t, s, nil))
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func testPod(name string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "nginx:1.25"}}},
	}
}

// splitRoles returns the leader and the followers of a three-master cluster.
func splitRoles(t *testing.T, servers []*server) (*server, []*server) {
	t.Helper()
	var id string
	waitFor(t, 10*time.Second, "a leader", func() (bool, string) {
		var err error
		id, _, err = leaderOf(servers[0])
		if err != nil {
			return false, err.Error()
		}
		return id != "", "no leader"
	})
	var leader *server
	var followers []*server
	for _, s := range servers {
		if s.name == id {
			leader = s
		} else {
			followers = append(followers, s)
		}
	}
	return leader, followers
}

// TestClientGo drives a three-master cluster with client-go: typed CRUD
// through a follower and through the leader, then a shared informer on a
// follower that keeps its cache whole while the leader is killed under it.
func TestClientGo(t *testing.T) {
	start := time.Now()
	servers := startThree(t, 4)
	leader, followers := splitRoles(t, servers)
	t.Logf("cluster up in %s; leader %s", time.Since(start).Round(time.Millisecond), leader.name)

	for _, target := range []*server{followers[0], leader} {
		role := "follower"
		if target == leader {
			role = "leader"
		}
		t.Run("CRUD via "+role, func(t *testing.T) {
			testTypedCRUD(t, clientsetFor(t, target), clientsetFor(t, followers[1]), "crud-"+role)
		})
	}
	t.Run("informer across a leader kill", func(t *testing.T) {
		testInformerLeaderKill(t, servers)
	})
	t.Logf("client-go suite took %s", time.Since(start).Round(time.Millisecond))
}

// testTypedCRUD writes through cs and checks, through other (another
// master), that every write is visible there at once.
func testTypedCRUD(t *testing.T, cs, other *kubernetes.Clientset, ns string) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}

	t.Run("configmaps", func(t *testing.T) {
		cms := cs.CoreV1().ConfigMaps(ns)
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cm", Labels: map[string]string{"app": "a"}}, Data: map[string]string{"k": "v1"}}
		created, err := cms.Create(ctx, cm, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create: %v", err)
		}
		if created.UID == "" || created.ResourceVersion == "" || created.CreationTimestamp.IsZero() {
			t.Fatalf("create did not stamp metadata: %+v", created.ObjectMeta)
		}
		if _, err := cms.Create(ctx, cm, metav1.CreateOptions{}); !apierrors.IsAlreadyExists(err) {
			t.Fatalf("second create: want AlreadyExists, got %v", err)
		}
		got, err := other.CoreV1().ConfigMaps(ns).Get(ctx, "cm", metav1.GetOptions{})
		if err != nil || got.UID != created.UID || got.ResourceVersion != created.ResourceVersion {
			t.Fatalf("get through another master: %v %+v", err, got)
		}

		got.Data["k"] = "v2"
		updated, err := cms.Update(ctx, got, metav1.UpdateOptions{})
		if err != nil || updated.ResourceVersion == created.ResourceVersion || updated.Data["k"] != "v2" {
			t.Fatalf("update: %v %+v", err, updated)
		}
		// created carries the old resourceVersion now.
		created.Data["k"] = "stale"
		if _, err := cms.Update(ctx, created, metav1.UpdateOptions{}); !apierrors.IsConflict(err) {
			t.Fatalf("update with a stale resourceVersion: want Conflict, got %v", err)
		}

		patched, err := cms.Patch(ctx, "cm", types.StrategicMergePatchType, []byte(`{"metadata":{"labels":{"patched":"smp"}}}`), metav1.PatchOptions{})
		if err != nil || patched.Labels["patched"] != "smp" || patched.Labels["app"] != "a" {
			t.Fatalf("strategic merge patch: %v %+v", err, patched)
		}
		patched, err = cms.Patch(ctx, "cm", types.JSONPatchType, []byte(`[{"op":"replace","path":"/data/k","value":"v3"}]`), metav1.PatchOptions{})
		if err != nil || patched.Data["k"] != "v3" {
			t.Fatalf("json patch: %v %+v", err, patched)
		}
		patched, err = cms.Patch(ctx, "cm", types.MergePatchType, []byte(`{"data":{"k":null,"n":"1"}}`), metav1.PatchOptions{})
		if err != nil || len(patched.Data) != 1 || patched.Data["n"] != "1" {
			t.Fatalf("merge patch: %v %+v", err, patched)
		}

		for i := 0; i < 5; i++ {
			c := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("page-%d", i), Labels: map[string]string{"app": "page"}}}
			if _, err := cms.Create(ctx, c, metav1.CreateOptions{}); err != nil {
				t.Fatalf("create %s: %v", c.Name, err)
			}
		}
		list, err := other.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{LabelSelector: "app in (a)"})
		if err != nil || len(list.Items) != 1 || list.Items[0].Name != "cm" {
			t.Fatalf("list by label: %v %+v", err, list)
		}
		// Pages of two from one snapshot; a write between pages does not
		// show in them.
		var names []string
		opts := metav1.ListOptions{LabelSelector: "app=page", Limit: 2}
		for page := 0; ; page++ {
			l, err := cms.List(ctx, opts)
			if err != nil {
				t.Fatalf("list page %d: %v", page, err)
			}
			for _, it := range l.Items {
				names = append(names, it.Name)
			}
			if page == 0 {
				late := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "page-late", Labels: map[string]string{"app": "page"}}}
				if _, err := cms.Create(ctx, late, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			if l.Continue == "" {
				break
			}
			opts.Continue = l.Continue
		}
		if strings.Join(names, ",") != "page-0,page-1,page-2,page-3,page-4" {
			t.Fatalf("paged list: %v", names)
		}

		wrongUID := types.UID("00000000-0000-0000-0000-000000000000")
		err = cms.Delete(ctx, "cm", metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &wrongUID}})
		if !apierrors.IsConflict(err) {
			t.Fatalf("delete with a wrong uid precondition: want Conflict, got %v", err)
		}
		if err := cms.Delete(ctx, "cm", metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &created.UID}}); err != nil {
			t.Fatalf("delete: %v", err)
		}
		if _, err := other.CoreV1().ConfigMaps(ns).Get(ctx, "cm", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Fatalf("get after delete: want NotFound, got %v", err)
		}
		if err := cms.DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: "app=page"}); err != nil {
			t.Fatalf("deletecollection: %v", err)
		}
		// Every namespace has the cluster CA's ConfigMap (as in
		// Kubernetes); the test's own are gone.
		if l, err := other.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{FieldSelector: "metadata.name!=kube-root-ca.crt"}); err != nil || len(l.Items) != 0 {
			t.Fatalf("list after deletecollection: %v %+v", err, l)
		}
	})

	t.Run("pods", func(t *testing.T) {
		pods := cs.CoreV1().Pods(ns)
		p := testPod("", map[string]string{"app": "gen"})
		p.GenerateName = "gen-"
		created, err := pods.Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create: %v", err)
		}
		if !strings.HasPrefix(created.Name, "gen-") || len(created.Name) <= len("gen-") ||
			created.Spec.RestartPolicy != corev1.RestartPolicyAlways || created.Status.Phase != corev1.PodPending {
			t.Fatalf("create with generateName: %+v", created)
		}
		// A status write changes only status; a spec write leaves status.
		// The scheduler writes these pods' status too (no nodes: it marks
		// them unschedulable), so each write is a read-modify-write retried
		// on conflict.
		var afterStatus, afterSpec *corev1.Pod
		err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
			cur, err := pods.Get(ctx, created.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			cur.Status.Message = "from the test"
			cur.Labels["ignored"] = "yes"
			afterStatus, err = pods.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
			return err
		})
		if err != nil || afterStatus.Status.Message != "from the test" || afterStatus.Labels["ignored"] != "" {
			t.Fatalf("update status: %v %+v", err, afterStatus)
		}
		err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
			cur, err := other.CoreV1().Pods(ns).Get(ctx, created.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			cur.Spec.Containers[0].Image = "nginx:1.26"
			cur.Status.Message = "ignored"
			afterSpec, err = pods.Update(ctx, cur, metav1.UpdateOptions{})
			return err
		})
		if err != nil || afterSpec.Spec.Containers[0].Image != "nginx:1.26" || afterSpec.Status.Message != "from the test" ||
			afterSpec.Generation != created.Generation+1 {
			t.Fatalf("update: %v %+v", err, afterSpec)
		}
		// Pod spec is immutable apart from images.
		bad := afterSpec.DeepCopy()
		bad.Spec.Containers[0].Name = "renamed"
		if _, err := pods.Update(ctx, bad, metav1.UpdateOptions{}); !apierrors.IsInvalid(err) {
			t.Fatalf("update of an immutable field: want Invalid, got %v", err)
		}
		l, err := other.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "metadata.namespace=" + ns + ",status.phase=Pending"})
		if err != nil || len(l.Items) != 1 || l.Items[0].Name != created.Name {
			t.Fatalf("list all namespaces by field: %v %+v", err, l)
		}
		if err := pods.Delete(ctx, created.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatalf("delete: %v", err)
		}
	})

	t.Run("deployments and scale", func(t *testing.T) {
		deps := cs.AppsV1().Deployments(ns)
		labels := map[string]string{"app": "web"}
		d := &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: "web"},
			Spec: appsv1.DeploymentSpec{
				Selector: &metav1.LabelSelector{MatchLabels: labels},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec:       testPod("", nil).Spec,
				},
			},
		}
		created, err := deps.Create(ctx, d, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create: %v", err)
		}
		if created.Spec.Replicas == nil || *created.Spec.Replicas != 1 || created.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType {
			t.Fatalf("deployment defaults: %+v", created.Spec)
		}
		// The deployment controller writes status as soon as the object
		// exists, so each write below re-reads and retries on conflict.
		var before *autoscalingv1.Scale
		err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
			sc, err := other.AppsV1().Deployments(ns).GetScale(ctx, "web", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if sc.Spec.Replicas != 1 || sc.Status.Selector != "app=web" {
				return fmt.Errorf("scale before the update: %+v", sc)
			}
			before = sc.DeepCopy()
			sc.Spec.Replicas = 3
			_, err = deps.UpdateScale(ctx, "web", sc, metav1.UpdateOptions{})
			return err
		})
		if err != nil {
			t.Fatalf("update scale: %v", err)
		}
		got, err := other.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil || *got.Spec.Replicas != 3 || got.Generation != created.Generation+1 {
			t.Fatalf("after scale: %v %+v", err, got)
		}
		before.Spec.Replicas = 5
		if _, err := deps.UpdateScale(ctx, "web", before, metav1.UpdateOptions{}); !apierrors.IsConflict(err) {
			t.Fatalf("scale with a stale resourceVersion: want Conflict, got %v", err)
		}
		// The selector is immutable.
		err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
			cur, err := other.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
			if err != nil {
				return err
			}
			cur.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": "other"}}
			cur.Spec.Template.Labels = map[string]string{"app": "other"}
			_, err = deps.Update(ctx, cur, metav1.UpdateOptions{})
			return err
		})
		if !apierrors.IsInvalid(err) {
			t.Fatalf("change of selector: want Invalid, got %v", err)
		}
		if err := deps.Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
			t.Fatalf("delete: %v", err)
		}
	})

	t.Run("services", func(t *testing.T) {
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "np"},
			Spec: corev1.ServiceSpec{
				Type:     corev1.ServiceTypeNodePort,
				Selector: map[string]string{"app": "web"},
				Ports:    []corev1.ServicePort{{Port: 80}},
			},
		}
		created, err := cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create: %v", err)
		}
		if !strings.HasPrefix(created.Spec.ClusterIP, "10.") || created.Spec.Ports[0].NodePort < 30000 || created.Spec.Ports[0].NodePort > 32767 {
			t.Fatalf("allocation: clusterIP %q nodePort %d", created.Spec.ClusterIP, created.Spec.Ports[0].NodePort)
		}
		created.Spec.ClusterIP = "10.96.100.100"
		created.Spec.ClusterIPs = []string{"10.96.100.100"}
		if _, err := other.CoreV1().Services(ns).Update(ctx, created, metav1.UpdateOptions{}); !apierrors.IsInvalid(err) {
			t.Fatalf("change of clusterIP: want Invalid, got %v", err)
		}
		if err := cs.CoreV1().Services(ns).Delete(ctx, "np", metav1.DeleteOptions{}); err != nil {
			t.Fatalf("delete: %v", err)
		}
	})
}

// watchRecorder is an http.RoundTripper that remembers the requests a client
// made and counts the BOOKMARK events in the watch streams it read.
type watchRecorder struct {
	rt        http.RoundTripper
	bookmarks atomic.Int64

	mu   sync.Mutex
	reqs []string
}

func (w *watchRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	w.mu.Lock()
	w.reqs = append(w.reqs, req.Method+" "+req.URL.RequestURI())
	w.mu.Unlock()
	resp, err := w.rt.RoundTrip(req)
	if err == nil && req.URL.Query().Get("watch") != "" {
		resp.Body = &bookmarkCounter{ReadCloser: resp.Body, n: &w.bookmarks}
	}
	return resp, err
}

func (w *watchRecorder) requests() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.reqs...)
}

// bookmarkCounter counts `"type":"BOOKMARK"` in a JSON watch stream; the
// tail of each read is kept so a marker split across reads still counts.
type bookmarkCounter struct {
	io.ReadCloser
	n    *atomic.Int64
	tail []byte
}

var bookmarkMarker = []byte(`"type":"BOOKMARK"`)

func (b *bookmarkCounter) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		buf := append(b.tail, p[:n]...)
		b.n.Add(int64(bytes.Count(buf, bookmarkMarker)))
		keep := len(bookmarkMarker) - 1
		if len(buf) < keep {
			keep = len(buf)
		}
		b.tail = append([]byte(nil), buf[len(buf)-keep:]...)
	}
	return n, err
}

// podSet is what an informer's event handlers saw.
type podSet struct {
	mu      sync.Mutex
	added   map[string]bool
	deleted map[string]bool
	updates int
}

func (s *podSet) handler() cache.ResourceEventHandlerFuncs {
	name := func(obj any) string {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		return obj.(*corev1.Pod).Name
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.mu.Lock(); s.added[name(obj)] = true; s.mu.Unlock() },
		UpdateFunc: func(any, any) { s.mu.Lock(); s.updates++; s.mu.Unlock() },
		DeleteFunc: func(obj any) { s.mu.Lock(); s.deleted[name(obj)] = true; s.mu.Unlock() },
	}
}

// missing lists the names in want that the handlers did not see added.
func (s *podSet) missing(want []string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, n := range want {
		if !s.added[n] {
			out = append(out, n)
		}
	}
	return out
}

// createPod creates a pod through cs, retrying through the election after a
// leader kill. A retry that finds the pod already there counts: the earlier
// attempt was committed but its answer was lost.
func createPod(ctx context.Context, cs kubernetes.Interface, ns, name string) error {
	var last error
	for ctx.Err() == nil {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		_, err := cs.CoreV1().Pods(ns).Create(cctx, testPod(name, map[string]string{"app": "inf"}), metav1.CreateOptions{})
		cancel()
		if err == nil || apierrors.IsAlreadyExists(err) {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("create pod %s: %w (last error: %v)", name, ctx.Err(), last)
}

// testInformerLeaderKill runs a shared pod informer on one follower while
// pods are created through the other, kills the leader with SIGKILL in the
// middle, and checks that the informer ends up holding every pod created,
// before, during and after the election, and that the restarted master serves
// the same objects.
func testInformerLeaderKill(t *testing.T, servers []*server) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	// Roles are read again here, just before they matter.
	leader, followers := splitRoles(t, servers)
	watched, writer := followers[0], followers[1]
	const ns = "informer"

	rec := &watchRecorder{}
	cfg := restConfig(t, watched, func(rt http.RoundTripper) http.RoundTripper { rec.rt = rt; return rec })
	// Watches outlive the client timeout; the informer sets its own.
	cfg.Timeout = 0
	infClient, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	wc := clientsetFor(t, writer)
	if _, err := wc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var created []string
	for i := 0; i < 3; i++ {
		name := fmt.Sprintf("listed-%d", i)
		if err := createPod(ctx, wc, ns, name); err != nil {
			t.Fatal(err)
		}
		created = append(created, name)
	}

	// A raw watch-list through the typed client: the current state as
	// ADDED events, then the BOOKMARK that marks their end.
	w, err := infClient.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{
		SendInitialEvents:    ptrTo(true),
		ResourceVersionMatch: metav1.ResourceVersionMatchNotOlderThan,
		AllowWatchBookmarks:  true,
	})
	if err != nil {
		t.Fatalf("watch-list: %v", err)
	}
	var initial []string
	for done := false; !done; {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatalf("watch-list closed after %v", initial)
			}
			switch ev.Type {
			case watch.Added:
				initial = append(initial, ev.Object.(*corev1.Pod).Name)
			case watch.Bookmark:
				p := ev.Object.(*corev1.Pod)
				if p.Annotations[metav1.InitialEventsAnnotationKey] != "true" || p.ResourceVersion == "" {
					t.Fatalf("bookmark without the initial-events-end annotation: %+v", p.ObjectMeta)
				}
				done = true
			default:
				t.Fatalf("watch-list: unexpected %s %+v", ev.Type, ev.Object)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("watch-list: no initial-events-end bookmark after %v", initial)
		}
	}
	w.Stop()
	if strings.Join(initial, ",") != strings.Join(created, ",") {
		t.Fatalf("watch-list initial events %v, want %v", initial, created)
	}

	factory := informers.NewSharedInformerFactoryWithOptions(infClient, 0, informers.WithNamespace(ns))
	inf := factory.Core().V1().Pods().Informer()
	seen := &podSet{added: map[string]bool{}, deleted: map[string]bool{}}
	if _, err := inf.AddEventHandler(seen.handler()); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	defer func() { close(stop); factory.Shutdown() }()
	factory.Start(stop)
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		t.Fatal("informer did not sync")
	}
	if m := seen.missing(created); len(m) > 0 {
		t.Fatalf("informer's list lacks %v", m)
	}
	// client-go lists by watch-list: the sync needed the bookmark.
	waitFor(t, 5*time.Second, "a bookmark to the informer", func() (bool, string) {
		return rec.bookmarks.Load() > 0, fmt.Sprintf("requests %v", rec.requests())
	})
	t.Logf("informer synced; requests so far: %v", rec.requests())

	storeNames := func() []string {
		var names []string
		for _, o := range inf.GetStore().List() {
			names = append(names, o.(*corev1.Pod).Name)
		}
		sort.Strings(names)
		return names
	}
	waitAll := func(what string, want []string, timeout time.Duration) {
		t.Helper()
		waitFor(t, timeout, what, func() (bool, string) {
			have := map[string]bool{}
			for _, n := range storeNames() {
				have[n] = true
			}
			var missing []string
			for _, n := range want {
				if !have[n] {
					missing = append(missing, n)
				}
			}
			return len(missing) == 0, fmt.Sprintf("store lacks %v", missing)
		})
	}

	// A writer creates pods one after another through the other follower,
	// through the kill and the election. It stops between creates, so every
	// pod that exists is one it counted.
	var mu sync.Mutex
	var stopWriting atomic.Bool
	writerDone := make(chan error, 1)
	progress := make(chan int, 1000)
	go func() {
		for i := 0; !stopWriting.Load(); i++ {
			name := fmt.Sprintf("live-%03d", i)
			if err := createPod(ctx, wc, ns, name); err != nil {
				writerDone <- err
				return
			}
			mu.Lock()
			created = append(created, name)
			n := len(created)
			mu.Unlock()
			progress <- n
		}
		writerDone <- nil
	}()
	waitCreated := func(n int) {
		t.Helper()
		for {
			select {
			case got := <-progress:
				if got >= n {
					return
				}
			case err := <-writerDone:
				t.Fatalf("writer stopped: %v", err)
			case <-time.After(30 * time.Second):
				t.Fatalf("writer stuck below %d pods", n)
			}
		}
	}
	mu.Lock()
	beforeKill := len(created)
	mu.Unlock()
	waitCreated(beforeKill + 10)

	leader.kill()
	killed := time.Now()
	var newLeader string
	waitFor(t, 15*time.Second, "a new leader", func() (bool, string) {
		id, peers, err := leaderOf(watched)
		if err != nil {
			return false, err.Error()
		}
		newLeader = id
		return id != "" && id != leader.name, fmt.Sprintf("leader %q peers %+v", id, peers)
	})
	t.Logf("new leader %s %s after the kill", newLeader, time.Since(killed).Round(time.Millisecond))
	mu.Lock()
	atElection := len(created)
	mu.Unlock()
	// Twenty more pods once the new leader is in place.
	waitCreated(atElection + 20)
	stopWriting.Store(true)
	if err := <-writerDone; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	all := append([]string(nil), created...)
	mu.Unlock()
	waitAll(fmt.Sprintf("all %d pods in the informer", len(all)), all, 20*time.Second)
	t.Logf("informer holds all pods %s after the kill", time.Since(killed).Round(time.Millisecond))
	if m := seen.missing(all); len(m) > 0 {
		t.Fatalf("the informer's handlers never saw %v added", m)
	}
	t.Logf("%d pods created across the kill (%d before the new leader); informer requests: %v", len(all), atElection, rec.requests())

	// Updates and deletes after the election reach the informer too, from
	// writes through its own master.
	cs := clientsetFor(t, watched)
	for _, name := range all[:3] {
		if err := cs.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatalf("delete %s: %v", name, err)
		}
	}
	if _, err := cs.CoreV1().Pods(ns).Patch(ctx, all[3], types.MergePatchType, []byte(`{"metadata":{"labels":{"touched":"yes"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "deletes and a patch in the informer", func() (bool, string) {
		store := inf.GetStore()
		for _, name := range all[:3] {
			if _, ok, _ := store.GetByKey(ns + "/" + name); ok {
				return false, name + " still in the store"
			}
		}
		o, ok, _ := store.GetByKey(ns + "/" + all[3])
		if !ok || o.(*corev1.Pod).Labels["touched"] != "yes" {
			return false, all[3] + " not patched in the store"
		}
		return true, ""
	})
	remaining := all[3:]
	sort.Strings(remaining)

	// The killed master comes back on its data dir, catches up, and serves
	// the same objects as the informer holds. It is also told a survivor's
	// gossip address, as an operator would when the seed is down: a seed
	// restarted with only itself to join learns the leader's API address
	// from gossip push-pull alone (30 s on the LAN profile) and answers 503
	// until then, though Raft already replicates to it (reported, cluster/).
	leader.args = append(leader.args, "--join", writer.gossipAddr())
	leader.start()
	restarted := time.Now()
	back := clientsetFor(t, leader)
	type podID struct{ name, uid, rv string }
	fromStore := func() []podID {
		var ids []podID
		for _, o := range inf.GetStore().List() {
			p := o.(*corev1.Pod)
			ids = append(ids, podID{p.Name, string(p.UID), p.ResourceVersion})
		}
		sort.Slice(ids, func(i, j int) bool { return ids[i].name < ids[j].name })
		return ids
	}
	for _, rv := range []string{"", "0"} {
		// "" is a linearizable read; "0" is the restarted master's own copy.
		waitFor(t, 30*time.Second, fmt.Sprintf("%s to serve the informer's pods (resourceVersion %q)", leader.name, rv), func() (bool, string) {
			l, err := back.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{ResourceVersion: rv})
			if err != nil {
				return false, err.Error()
			}
			var ids []podID
			for _, p := range l.Items {
				ids = append(ids, podID{p.Name, string(p.UID), p.ResourceVersion})
			}
			sort.Slice(ids, func(i, j int) bool { return ids[i].name < ids[j].name })
			want := fromStore()
			return fmt.Sprint(ids) == fmt.Sprint(want) && len(want) == len(remaining),
				fmt.Sprintf("%s lists %d pods, informer holds %d (want %d)", leader.name, len(ids), len(want), len(remaining))
		})
	}
	t.Logf("%s serves the same pods %s after its restart", leader.name, time.Since(restarted).Round(time.Millisecond))
	seen.mu.Lock()
	t.Logf("informer handlers: %d added, %d updates, %d deleted; %d bookmarks", len(seen.added), seen.updates, len(seen.deleted), rec.bookmarks.Load())
	seen.mu.Unlock()
}

func ptrTo[T any](v T) *T { return &v }
