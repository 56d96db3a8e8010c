package controllers

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"flotilla/api/apitest"
)

// env is an API test server with a Manager running against it.
type env struct {
	t      *testing.T
	srv    *apitest.Server
	client kubernetes.Interface
	ctx    context.Context
	// stop stops the Manager newEnv started (the test's end does too).
	stop func()
}

// testLogger writes warnings and errors to the test log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// newEnv starts an API server and a Manager running the named controllers
// (cfg.Controllers) and stops both when the test ends.
func newEnv(t *testing.T, cfg Config, opts ...apitest.Options) *env {
	t.Helper()
	srv := apitest.NewServer(t, opts...)
	e := &env{t: t, srv: srv, client: srv.Client, ctx: context.Background()}
	e.stop = e.startManager(cfg)
	return e
}

// startManager runs a Manager until the test ends (or stop is called) and
// checks that Run returns once its context is cancelled.
func (e *env) startManager(cfg Config) (stop func()) {
	e.t.Helper()
	cfg.Client = e.client
	if cfg.Logger == nil {
		cfg.Logger = testLogger(e.t)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- NewManager(cfg).Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					e.t.Errorf("Manager.Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				e.t.Errorf("Manager.Run did not return after its context was cancelled")
			}
		})
	}
	e.t.Cleanup(stop)
	return stop
}

// waitFor polls cond until it is true, failing the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	var lastErr error
	err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		ok, err := cond()
		if err != nil {
			lastErr = err
			return false, nil
		}
		return ok, nil
	})
	if err != nil {
		t.Fatalf("timed out after %v waiting for %s (last error: %v)", timeout, what, lastErr)
	}
}

func (e *env) createNamespace(name string) {
	e.t.Helper()
	_, err := e.client.CoreV1().Namespaces().Create(e.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatalf("create namespace %s: %v", name, err)
	}
}

// pods lists the pods of ns matching selector ("" = all).
func (e *env) pods(ns, selector string) []corev1.Pod {
	e.t.Helper()
	list, err := e.client.CoreV1().Pods(ns).List(e.ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		e.t.Fatalf("list pods: %v", err)
	}
	return list.Items
}

// activePods lists the pods of ns matching selector that are not being deleted.
func (e *env) activePods(ns, selector string) []corev1.Pod {
	var out []corev1.Pod
	for _, p := range e.pods(ns, selector) {
		if p.DeletionTimestamp == nil {
			out = append(out, p)
		}
	}
	return out
}

func (e *env) events(ns, reason string) []corev1.Event {
	e.t.Helper()
	list, err := e.client.CoreV1().Events(ns).List(e.ctx, metav1.ListOptions{})
	if err != nil {
		e.t.Fatalf("list events: %v", err)
	}
	var out []corev1.Event
	for _, ev := range list.Items {
		if ev.Reason == reason {
			out = append(out, ev)
		}
	}
	return out
}

// waitEvent waits for an event with reason in ns.
func (e *env) waitEvent(ns, reason string) corev1.Event {
	e.t.Helper()
	var ev corev1.Event
	waitFor(e.t, 10*time.Second, "event "+reason, func() (bool, error) {
		evs := e.events(ns, reason)
		if len(evs) == 0 {
			return false, nil
		}
		ev = evs[0]
		return true, nil
	})
	return ev
}

func podTemplate(labels map[string]string, image string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: labels},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "c", Image: image,
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
		}}},
	}
}

// kubelet simulates the scheduler and the agents: it binds unscheduled pods
// to a node, takes bound pods to Running with an IP and, when ready says so,
// Ready; and it finishes the deletion of terminating pods (grace 0), as an
// agent does once the containers stopped.
type kubelet struct {
	t      *testing.T
	client kubernetes.Interface
	node   string
	ready  func(*corev1.Pod) bool
	bind   bool
	lister cache.Indexer
	queue  workqueue.TypedRateLimitingInterface[string]
	ips    atomic.Uint32
}

type kubeletOpts struct {
	// node the pods are bound to (default "node-1"); created if missing.
	node string
	// ready decides whether a pod becomes Ready when it starts (nil = all).
	ready func(*corev1.Pod) bool
	// noBind leaves unscheduled pods alone.
	noBind bool
}

func startKubelet(t *testing.T, client kubernetes.Interface, o kubeletOpts) *kubelet {
	t.Helper()
	if o.node == "" {
		o.node = "node-1"
	}
	k := &kubelet{t: t, client: client, node: o.node, ready: o.ready, bind: !o.noBind,
		queue: workqueue.NewTypedRateLimitingQueue(workqueue.NewTypedItemExponentialFailureRateLimiter[string](5*time.Millisecond, 200*time.Millisecond))}
	ctx, cancel := context.WithCancel(context.Background())
	ensureNode(t, client, o.node)
	f := informers.NewSharedInformerFactory(client, 0)
	inf := f.Core().V1().Pods().Informer()
	k.lister = inf.GetIndexer()
	add := func(obj any) {
		if key, ok := keyOf(obj); ok {
			k.queue.Add(key)
		}
	}
	inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: add, UpdateFunc: func(_, o any) { add(o) }})
	f.Start(ctx.Done())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			key, quit := k.queue.Get()
			if quit {
				return
			}
			if err := k.sync(ctx, key); err != nil && ctx.Err() == nil {
				k.queue.AddRateLimited(key)
			} else {
				k.queue.Forget(key)
			}
			k.queue.Done(key)
		}
	}()
	t.Cleanup(func() {
		cancel()
		k.queue.ShutDown()
		wg.Wait()
		f.Shutdown()
	})
	return k
}

func ensureNode(t *testing.T, client kubernetes.Interface, name string) {
	t.Helper()
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now(),
		}}},
	}
	_, err := client.CoreV1().Nodes().Create(context.Background(), node, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create node %s: %v", name, err)
	}
}

func (k *kubelet) sync(ctx context.Context, key string) error {
	obj, ok, _ := k.lister.GetByKey(key)
	if !ok {
		return nil
	}
	pod := obj.(*corev1.Pod)
	switch {
	case pod.DeletionTimestamp != nil:
		if pod.Spec.NodeName != k.node {
			return nil
		}
		zero := int64(0)
		err := k.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
			GracePeriodSeconds: &zero, Preconditions: metav1.NewUIDPreconditions(string(pod.UID))})
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return nil
		}
		return err
	case pod.Spec.NodeName == "":
		if !k.bind {
			return nil
		}
		err := k.client.CoreV1().Pods(pod.Namespace).Bind(ctx, &corev1.Binding{
			ObjectMeta: metav1.ObjectMeta{Name: pod.Name, UID: pod.UID},
			Target:     corev1.ObjectReference{Kind: "Node", Name: k.node},
		}, metav1.CreateOptions{})
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return nil
		}
		return err
	case pod.Spec.NodeName == k.node && pod.Status.Phase == corev1.PodPending:
		ready := k.ready == nil || k.ready(pod)
		cp := pod.DeepCopy()
		now := metav1.Now()
		cp.Status.Phase = corev1.PodRunning
		cp.Status.StartTime = &now
		cp.Status.HostIP = "192.168.0.1"
		n := k.ips.Add(1)
		cp.Status.PodIP = fmt.Sprintf("10.244.%d.%d", n/250, 1+n%250)
		setCond(&cp.Status, corev1.PodReady, ready)
		setCond(&cp.Status, corev1.ContainersReady, ready)
		_, err := k.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, cp, metav1.UpdateOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	}
	return nil
}

func setCond(st *corev1.PodStatus, t corev1.PodConditionType, v bool) {
	status := corev1.ConditionFalse
	if v {
		status = corev1.ConditionTrue
	}
	for i := range st.Conditions {
		if st.Conditions[i].Type == t {
			if st.Conditions[i].Status != status {
				st.Conditions[i].Status = status
				st.Conditions[i].LastTransitionTime = metav1.Now()
			}
			return
		}
	}
	st.Conditions = append(st.Conditions, corev1.PodCondition{Type: t, Status: status, LastTransitionTime: metav1.Now()})
}

// setPodReady flips a pod's Ready condition, as an agent's probe would.
func setPodReady(t *testing.T, client kubernetes.Interface, ns, name string, ready bool) {
	t.Helper()
	for i := 0; ; i++ {
		pod, err := client.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("get pod %s: %v", name, err)
		}
		setCond(&pod.Status, corev1.PodReady, ready)
		setCond(&pod.Status, corev1.ContainersReady, ready)
		_, err = client.CoreV1().Pods(ns).UpdateStatus(context.Background(), pod, metav1.UpdateOptions{})
		if err == nil {
			return
		}
		if !apierrors.IsConflict(err) || i > 10 {
			t.Fatalf("update pod %s status: %v", name, err)
		}
	}
}

// requestCounter wraps the API handler to count (and optionally fail)
// requests matching a method and a path suffix.
type requestCounter struct {
	method, fragment string
	count            atomic.Int64
	inFlight         atomic.Int64
	maxInFlight      atomic.Int64
	// fail, when it returns true for the request's number (1-based), answers
	// 500 instead of serving it.
	fail atomic.Pointer[func(n int64) bool]
}

func (rc *requestCounter) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != rc.method || !strings.HasSuffix(r.URL.Path, rc.fragment) {
			next.ServeHTTP(w, r)
			return
		}
		n := rc.count.Add(1)
		cur := rc.inFlight.Add(1)
		defer rc.inFlight.Add(-1)
		for {
			m := rc.maxInFlight.Load()
			if cur <= m || rc.maxInFlight.CompareAndSwap(m, cur) {
				break
			}
		}
		if f := rc.fail.Load(); f != nil && (*f)(n) {
			// Hold the request a little so that concurrent ones overlap.
			time.Sleep(20 * time.Millisecond)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprintf(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","message":"injected failure %d","reason":"InternalError","code":500}`, n)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (rc *requestCounter) setFail(f func(n int64) bool) {
	if f == nil {
		rc.fail.Store(nil)
		return
	}
	rc.fail.Store(&f)
}
