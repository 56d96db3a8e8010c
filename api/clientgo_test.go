package api_test

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"

	"flotilla/api/apitest"
)

// TestCRUDEveryResource creates, reads, lists, updates, patches and deletes
// one object of every served resource through client-go's dynamic client.
func TestCRUDEveryResource(t *testing.T) {
	s := apitest.NewServer(t)
	dyn, err := dynamic.NewForConfig(s.Config)
	if err != nil {
		t.Fatal(err)
	}
	podSpec := map[string]any{"containers": []any{map[string]any{"name": "c", "image": "busybox"}}}
	tmpl := map[string]any{"metadata": map[string]any{"labels": map[string]any{"app": "x"}}, "spec": podSpec}
	cases := []struct {
		name       string
		gvr        schema.GroupVersionResource
		namespaced bool
		obj        map[string]any
	}{
		{"namespaces", corev1.SchemeGroupVersion.WithResource("namespaces"), false, map[string]any{}},
		{"nodes", corev1.SchemeGroupVersion.WithResource("nodes"), false, map[string]any{"spec": map[string]any{"podCIDR": "10.244.1.0/24"}}},
		{"pods", corev1.SchemeGroupVersion.WithResource("pods"), true, map[string]any{"spec": podSpec}},
		{"services", corev1.SchemeGroupVersion.WithResource("services"), true, map[string]any{"spec": map[string]any{"ports": []any{map[string]any{"port": int64(80)}}}}},
		{"endpoints", corev1.SchemeGroupVersion.WithResource("endpoints"), true, map[string]any{"subsets": []any{map[string]any{
			"addresses": []any{map[string]any{"ip": "10.244.1.5"}}, "ports": []any{map[string]any{"port": int64(80)}}}}}},
		{"serviceaccounts", corev1.SchemeGroupVersion.WithResource("serviceaccounts"), true, map[string]any{}},
		{"configmaps", corev1.SchemeGroupVersion.WithResource("configmaps"), true, map[string]any{"data": map[string]any{"k": "v"}}},
		{"secrets", corev1.SchemeGroupVersion.WithResource("secrets"), true, map[string]any{"stringData": map[string]any{"k": "v"}}},
		{"events", corev1.SchemeGroupVersion.WithResource("events"), true, map[string]any{"reason": "Test", "message": "m",
			"involvedObject": map[string]any{"kind": "Pod", "name": "p", "namespace": "default"}}},
		{"deployments", appsv1.SchemeGroupVersion.WithResource("deployments"), true, map[string]any{"spec": map[string]any{
			"selector": map[string]any{"matchLabels": map[string]any{"app": "x"}}, "template": tmpl}}},
		{"replicasets", appsv1.SchemeGroupVersion.WithResource("replicasets"), true, map[string]any{"spec": map[string]any{
			"selector": map[string]any{"matchLabels": map[string]any{"app": "x"}}, "template": tmpl}}},
	}
	kinds := map[string]string{"namespaces": "Namespace", "nodes": "Node", "pods": "Pod", "services": "Service", "endpoints": "Endpoints",
		"serviceaccounts": "ServiceAccount", "configmaps": "ConfigMap", "secrets": "Secret", "events": "Event",
		"deployments": "Deployment", "replicasets": "ReplicaSet"}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxT(t)
			var ri dynamic.ResourceInterface = dyn.Resource(tc.gvr)
			if tc.namespaced {
				ri = dyn.Resource(tc.gvr).Namespace("default")
			}
			u := &unstructured.Unstructured{Object: map[string]any{}}
			for k, v := range tc.obj {
				u.Object[k] = v
			}
			u.SetAPIVersion(tc.gvr.GroupVersion().String())
			u.SetKind(kinds[tc.name])
			u.SetName("crud-" + tc.name)
			created, err := ri.Create(ctx, u, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("create: %v", err)
			}
			if created.GetUID() == "" || created.GetResourceVersion() == "" || created.GetCreationTimestamp().Time.IsZero() {
				t.Fatalf("create did not stamp uid/rv/creationTimestamp: %v", created.Object["metadata"])
			}
			if _, err := ri.Create(ctx, u, metav1.CreateOptions{}); !apierrors.IsAlreadyExists(err) {
				t.Fatalf("second create: want AlreadyExists, got %v", err)
			}
			got, err := ri.Get(ctx, u.GetName(), metav1.GetOptions{})
			if err != nil {
				t.Fatalf("get: %v", err)
			}
			if got.GetResourceVersion() != created.GetResourceVersion() {
				t.Fatalf("get: rv %s vs %s", got.GetResourceVersion(), created.GetResourceVersion())
			}
			list, err := ri.List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + u.GetName()})
			if err != nil {
				t.Fatalf("list: %v", err)
			}
			if len(list.Items) != 1 {
				t.Fatalf("list: %d items", len(list.Items))
			}
			got.SetLabels(map[string]string{"updated": "yes"})
			updated, err := ri.Update(ctx, got, metav1.UpdateOptions{})
			if err != nil || updated.GetLabels()["updated"] != "yes" {
				t.Fatalf("update: %v", err)
			}
			if _, err := ri.Update(ctx, got, metav1.UpdateOptions{}); !apierrors.IsConflict(err) {
				t.Fatalf("stale update: want Conflict, got %v", err)
			}
			patched, err := ri.Patch(ctx, u.GetName(), types.MergePatchType, []byte(`{"metadata":{"annotations":{"a":"b"}}}`), metav1.PatchOptions{})
			if err != nil || patched.GetAnnotations()["a"] != "b" || patched.GetLabels()["updated"] != "yes" {
				t.Fatalf("patch: %v", err)
			}
			if err := ri.Delete(ctx, u.GetName(), metav1.DeleteOptions{}); err != nil {
				t.Fatalf("delete: %v", err)
			}
			after, err := ri.Get(ctx, u.GetName(), metav1.GetOptions{})
			if tc.name == "namespaces" {
				if err != nil || after.GetDeletionTimestamp() == nil {
					t.Fatalf("namespace after delete: want Terminating, got %v", err)
				}
				if phase, _, _ := unstructured.NestedString(after.Object, "status", "phase"); phase != "Terminating" {
					t.Fatalf("namespace phase %q", phase)
				}
				return
			}
			if !apierrors.IsNotFound(err) {
				t.Fatalf("get after delete: want NotFound, got %v", err)
			}
		})
	}
}

func TestPatchTypes(t *testing.T) {
	s := apitest.NewServer(t)
	ctx := ctxT(t)
	d := newDeployment("web", 2)
	d.Spec.Template.Spec.Containers = append(d.Spec.Template.Spec.Containers, corev1.Container{Name: "side", Image: "busybox:1"})
	deps := s.Client.AppsV1().Deployments("default")
	if _, err := deps.Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Strategic merge: containers merge by name, so "side" stays.
	smp := `{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"nginx:1.28"}]}}}}`
	got, err := deps.Patch(ctx, "web", types.StrategicMergePatchType, []byte(smp), metav1.PatchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c := got.Spec.Template.Spec.Containers; len(c) != 2 || c[0].Image != "nginx:1.28" || c[1].Name != "side" {
		t.Fatalf("strategic merge: %+v", c)
	}
	// JSON merge: lists are replaced whole.
	mp := `{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"nginx:1.29"}]}}}}`
	got, err = deps.Patch(ctx, "web", types.MergePatchType, []byte(mp), metav1.PatchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c := got.Spec.Template.Spec.Containers; len(c) != 1 || c[0].Image != "nginx:1.29" || c[0].ImagePullPolicy != corev1.PullIfNotPresent {
		t.Fatalf("merge patch: %+v", c)
	}
	// JSON patch.
	jp := `[{"op":"replace","path":"/spec/replicas","value":5},{"op":"add","path":"/metadata/labels","value":{"x":"y"}}]`
	got, err = deps.Patch(ctx, "web", types.JSONPatchType, []byte(jp), metav1.PatchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if *got.Spec.Replicas != 5 || got.Labels["x"] != "y" {
		t.Fatalf("json patch: replicas %d labels %v", *got.Spec.Replicas, got.Labels)
	}
	// A failing JSON patch test operation is a 422.
	_, err = deps.Patch(ctx, "web", types.JSONPatchType, []byte(`[{"op":"test","path":"/spec/replicas","value":7}]`), metav1.PatchOptions{})
	if code := apierrors.ReasonForError(err); err == nil || (code != metav1.StatusReasonInvalid && code != metav1.StatusReasonUnknown) {
		t.Fatalf("failing test op: want 422, got %v", err)
	}
	// A patch with a stale resourceVersion conflicts.
	_, err = deps.Patch(ctx, "web", types.MergePatchType, []byte(`{"metadata":{"resourceVersion":"1"},"spec":{"replicas":1}}`), metav1.PatchOptions{})
	if !apierrors.IsConflict(err) {
		t.Fatalf("stale patch: want Conflict, got %v", err)
	}
	// Selector is immutable in apps/v1.
	_, err = deps.Patch(ctx, "web", types.MergePatchType, []byte(`{"spec":{"selector":{"matchLabels":{"app":"other"}},"template":{"metadata":{"labels":{"app":"other"}}}}}`), metav1.PatchOptions{})
	if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "spec.selector") {
		t.Fatalf("selector change: want Invalid on spec.selector, got %v", err)
	}
}

func TestStatusSplitAndGeneration(t *testing.T) {
	s := apitest.NewServer(t)
	ctx := ctxT(t)
	deps := s.Client.AppsV1().Deployments("default")
	d, err := deps.Create(ctx, newDeployment("gen", 1), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Generation != 1 {
		t.Fatalf("generation on create = %d", d.Generation)
	}
	// Status in a create is dropped.
	// Status update changes only status and not generation.
	d.Status.Replicas = 3
	d.Status.ObservedGeneration = 1
	d.Spec.Replicas = ptr(int32(9))
	d, err = deps.UpdateStatus(ctx, d, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Status.Replicas != 3 || *d.Spec.Replicas != 1 || d.Generation != 1 {
		t.Fatalf("status update: status %d spec %d gen %d", d.Status.Replicas, *d.Spec.Replicas, d.Generation)
	}
	// Main update leaves status alone; a metadata-only change keeps generation.
	d.Status.Replicas = 0
	d.Labels = map[string]string{"a": "b"}
	d, err = deps.Update(ctx, d, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Status.Replicas != 3 || d.Generation != 1 {
		t.Fatalf("metadata update: status %d gen %d", d.Status.Replicas, d.Generation)
	}
	// A spec change bumps generation.
	d.Spec.Replicas = ptr(int32(4))
	d, err = deps.Update(ctx, d, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Generation != 2 {
		t.Fatalf("spec update: gen %d", d.Generation)
	}
	// A no-op update writes nothing.
	same, err := deps.Update(ctx, d, metav1.UpdateOptions{})
	if err != nil || same.ResourceVersion != d.ResourceVersion {
		t.Fatalf("no-op update: %v, rv %s -> %s", err, d.ResourceVersion, same.ResourceVersion)
	}
	// Scale subresource.
	sc, err := deps.GetScale(ctx, "gen", metav1.GetOptions{})
	if err != nil || sc.Spec.Replicas != 4 || sc.Status.Selector != "app=gen" {
		t.Fatalf("get scale: %v %+v", err, sc)
	}
	sc.Spec.Replicas = 7
	if _, err := deps.UpdateScale(ctx, "gen", sc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	d, _ = deps.Get(ctx, "gen", metav1.GetOptions{})
	if *d.Spec.Replicas != 7 || d.Generation != 3 {
		t.Fatalf("after scale: replicas %d gen %d", *d.Spec.Replicas, d.Generation)
	}
	if _, err := deps.UpdateScale(ctx, "gen", sc, metav1.UpdateOptions{}); !apierrors.IsConflict(err) {
		t.Fatalf("stale scale: want Conflict, got %v", err)
	}
	rs := s.Client.AppsV1().ReplicaSets("default")
	if _, err := rs.Create(ctx, &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: "rs"}, Spec: appsv1.ReplicaSetSpec{
		Selector: d.Spec.Selector, Template: d.Spec.Template}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := rs.ApplyScale(ctx, "rs", nil, metav1.ApplyOptions{}); err == nil {
		t.Fatal("apply patch should be refused")
	}
	if _, err := rs.Patch(ctx, "rs", types.MergePatchType, []byte(`{"spec":{"replicas":3}}`), metav1.PatchOptions{}, "scale"); err != nil {
		t.Fatal(err)
	}
	got, _ := rs.Get(ctx, "rs", metav1.GetOptions{})
	if *got.Spec.Replicas != 3 || got.Generation != 2 {
		t.Fatalf("rs after scale patch: %d gen %d", *got.Spec.Replicas, got.Generation)
	}

	// Pods: status updates by the agent, spec immutability.
	pods := s.Client.CoreV1().Pods("default")
	p, err := pods.Create(ctx, newPod("p", nil), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Status.Phase != corev1.PodPending || p.Status.QOSClass != corev1.PodQOSBestEffort {
		t.Fatalf("new pod status %+v", p.Status)
	}
	p.Status.Phase = corev1.PodRunning
	if p, err = pods.UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil || p.Status.Phase != corev1.PodRunning {
		t.Fatalf("pod status: %v", err)
	}
	p.Spec.Containers[0].Image = "nginx:2"
	if p, err = pods.Update(ctx, p, metav1.UpdateOptions{}); err != nil || p.Generation != 2 {
		t.Fatalf("image update: %v", err)
	}
	p.Spec.RestartPolicy = corev1.RestartPolicyNever
	if _, err = pods.Update(ctx, p, metav1.UpdateOptions{}); !apierrors.IsInvalid(err) {
		t.Fatalf("restartPolicy update: want Invalid, got %v", err)
	}
}

func ptr[T any](v T) *T { return &v }

func TestListSelectorsAndPagination(t *testing.T) {
	s := apitest.NewServer(t)
	ctx := ctxT(t)
	pods := s.Client.CoreV1().Pods("default")
	for i := 0; i < 25; i++ {
		p := newPod(fmt.Sprintf("p%02d", i), map[string]string{"tier": []string{"web", "db", "cache"}[i%3], "idx": fmt.Sprint(i)})
		if i%5 == 0 {
			p.Spec.NodeName = "node-a"
		}
		if _, err := pods.Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	count := func(opts metav1.ListOptions) int {
		t.Helper()
		l, err := pods.List(ctx, opts)
		if err != nil {
			t.Fatalf("list %+v: %v", opts, err)
		}
		return len(l.Items)
	}
	for _, tc := range []struct {
		name string
		opts metav1.ListOptions
		want int
	}{
		{"all", metav1.ListOptions{}, 25},
		{"equality", metav1.ListOptions{LabelSelector: "tier=web"}, 9},
		{"inequality", metav1.ListOptions{LabelSelector: "tier!=web"}, 16},
		{"set", metav1.ListOptions{LabelSelector: "tier in (db,cache)"}, 16},
		{"notin+exists", metav1.ListOptions{LabelSelector: "idx,tier notin (web)"}, 16},
		{"name", metav1.ListOptions{FieldSelector: "metadata.name=p03"}, 1},
		{"nodeName", metav1.ListOptions{FieldSelector: "spec.nodeName=node-a"}, 5},
		{"unbound", metav1.ListOptions{FieldSelector: "spec.nodeName="}, 20},
		{"phase", metav1.ListOptions{FieldSelector: "status.phase=Pending"}, 25},
		{"both", metav1.ListOptions{LabelSelector: "tier=web", FieldSelector: "spec.nodeName=node-a"}, 2},
		{"local rv=0", metav1.ListOptions{ResourceVersion: "0"}, 25},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if n := count(tc.opts); n != tc.want {
				t.Fatalf("got %d, want %d", n, tc.want)
			}
		})
	}
	if _, err := pods.List(ctx, metav1.ListOptions{FieldSelector: "spec.bogus=x"}); !apierrors.IsBadRequest(err) {
		t.Fatalf("unsupported field: want BadRequest, got %v", err)
	}
	if _, err := pods.List(ctx, metav1.ListOptions{LabelSelector: "a in (b"}); !apierrors.IsBadRequest(err) {
		t.Fatalf("bad label selector: want BadRequest, got %v", err)
	}
	all, _ := s.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if len(all.Items) != 25 {
		t.Fatalf("all namespaces: %d", len(all.Items))
	}

	// Pages see one revision even while writes go on between them.
	var names []string
	var rv string
	opts := metav1.ListOptions{Limit: 10}
	for page := 0; ; page++ {
		l, err := pods.List(ctx, opts)
		if err != nil {
			t.Fatalf("page %d: %v", page, err)
		}
		if rv == "" {
			rv = l.ResourceVersion
			if l.RemainingItemCount == nil || *l.RemainingItemCount != 15 {
				t.Fatalf("remainingItemCount %v", l.RemainingItemCount)
			}
		} else if l.ResourceVersion != rv {
			t.Fatalf("page %d at rv %s, first at %s", page, l.ResourceVersion, rv)
		}
		for _, p := range l.Items {
			names = append(names, p.Name)
		}
		if _, err := pods.Create(ctx, newPod(fmt.Sprintf("late%d", page), nil), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := pods.Delete(ctx, fmt.Sprintf("p%02d", 20+page), metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if l.Continue == "" {
			break
		}
		opts.Continue = l.Continue
	}
	if len(names) != 25 || !sort.StringsAreSorted(names) || names[0] != "p00" || names[24] != "p24" {
		t.Fatalf("paged names %v", names)
	}
	// Paging with a selector fills pages with matches.
	l, err := pods.List(ctx, metav1.ListOptions{Limit: 2, LabelSelector: "tier=db"})
	if err != nil || len(l.Items) != 2 || l.Continue == "" {
		t.Fatalf("selector page: %v %d %q", err, len(l.Items), l.Continue)
	}
	// A token for a revision no longer retained is 410 Expired.
	old := base64Token(t, 1, "/core/pods/default/p01")
	if _, err := pods.List(ctx, metav1.ListOptions{Limit: 5, Continue: old}); !apierrors.IsResourceExpired(err) {
		t.Fatalf("old continue: want Expired, got %v", err)
	}
	if _, err := pods.List(ctx, metav1.ListOptions{Limit: 5, Continue: "garbage!"}); !apierrors.IsBadRequest(err) {
		t.Fatalf("bad continue: want BadRequest, got %v", err)
	}
	// Exact resourceVersion of a past revision is gone.
	if _, err := pods.List(ctx, metav1.ListOptions{ResourceVersion: "2", ResourceVersionMatch: metav1.ResourceVersionMatchExact}); !apierrors.IsResourceExpired(err) {
		t.Fatalf("old exact rv: want Expired, got %v", err)
	}
	// deletecollection with a selector.
	if err := pods.DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}, metav1.ListOptions{LabelSelector: "tier=cache"}); err != nil {
		t.Fatal(err)
	}
	if n := count(metav1.ListOptions{LabelSelector: "tier=cache"}); n != 0 {
		t.Fatalf("after deletecollection: %d cache pods", n)
	}
}

func base64Token(t *testing.T, rv uint64, start string) string {
	b, _ := json.Marshal(map[string]any{"v": "meta.k8s.io/v1", "rv": rv, "start": start})
	return strings.TrimRight(base64URL(b), "=")
}

func TestServiceAllocation(t *testing.T) {
	s := apitest.NewServer(t)
	ctx := ctxT(t)
	svcs := s.Client.CoreV1().Services("default")
	const n = 40
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("s%d", i)},
				Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Ports: []corev1.ServicePort{{Port: 80}}}}
			_, err := svcs.Create(ctx, svc, metav1.CreateOptions{})
			errs <- err
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	list, err := svcs.List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ips, ports := map[string]bool{}, map[int32]bool{}
	for _, svc := range list.Items {
		ip := svc.Spec.ClusterIP
		if ips[ip] {
			t.Fatalf("duplicate ClusterIP %s", ip)
		}
		ips[ip] = true
		if svc.Name != "kubernetes" {
			np := svc.Spec.Ports[0].NodePort
			if np < 30000 || np > 32767 || ports[np] {
				t.Fatalf("bad or duplicate nodePort %d", np)
			}
			ports[np] = true
			if !strings.HasPrefix(ip, "10.") || ip == "10.96.0.1" || svc.Spec.Ports[0].TargetPort != intstr.FromInt32(80) {
				t.Fatalf("service %s: ip %s targetPort %v", svc.Name, ip, svc.Spec.Ports[0].TargetPort)
			}
		}
	}
	if len(ips) != n+1 {
		t.Fatalf("%d distinct IPs", len(ips))
	}
	s0, _ := svcs.Get(ctx, "s0", metav1.GetOptions{})
	mk := func(name, ip string, nodePort int32) *corev1.Service {
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.ServiceSpec{ClusterIP: ip, Ports: []corev1.ServicePort{{Port: 80, NodePort: nodePort}}}}
		if nodePort != 0 {
			svc.Spec.Type = corev1.ServiceTypeNodePort
		}
		return svc
	}
	for _, tc := range []struct {
		name string
		svc  *corev1.Service
	}{
		{"taken ip", mk("x1", s0.Spec.ClusterIP, 0)},
		{"reserved ip", mk("x2", "10.96.0.1", 0)},
		{"out of range", mk("x3", "192.168.1.1", 0)},
		{"taken port", mk("x4", "", s0.Spec.Ports[0].NodePort)},
		{"port out of range", mk("x5", "", 80)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := svcs.Create(ctx, tc.svc, metav1.CreateOptions{}); !apierrors.IsInvalid(err) {
				t.Fatalf("want Invalid, got %v", err)
			}
		})
	}
	// Delete releases; the same IP and port can then be requested.
	if err := svcs.Delete(ctx, "s0", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	again, err := svcs.Create(ctx, mk("reuse", s0.Spec.ClusterIP, s0.Spec.Ports[0].NodePort), metav1.CreateOptions{})
	if err != nil || again.Spec.ClusterIP != s0.Spec.ClusterIP {
		t.Fatalf("reuse: %v", err)
	}
	// clusterIP is immutable; an update without it keeps it.
	again.Spec.ClusterIP, again.Spec.ClusterIPs = "", nil
	kept, err := svcs.Update(ctx, again, metav1.UpdateOptions{})
	if err != nil || kept.Spec.ClusterIP != s0.Spec.ClusterIP {
		t.Fatalf("update without clusterIP: %v", err)
	}
	kept.Spec.ClusterIP, kept.Spec.ClusterIPs = "10.96.5.5", []string{"10.96.5.5"}
	if _, err := svcs.Update(ctx, kept, metav1.UpdateOptions{}); !apierrors.IsInvalid(err) {
		t.Fatalf("clusterIP change: want Invalid, got %v", err)
	}
	// Switching to ClusterIP releases the node port.
	kept, _ = svcs.Get(ctx, "reuse", metav1.GetOptions{})
	kept.Spec.Type = corev1.ServiceTypeClusterIP
	if kept, err = svcs.Update(ctx, kept, metav1.UpdateOptions{}); err != nil || kept.Spec.Ports[0].NodePort != 0 {
		t.Fatalf("to ClusterIP: %v", err)
	}
	if _, err := svcs.Create(ctx, mk("takeport", "", s0.Spec.Ports[0].NodePort), metav1.CreateOptions{}); err != nil {
		t.Fatalf("released port: %v", err)
	}
	headless, err := svcs.Create(ctx, mk("headless", "None", 0), metav1.CreateOptions{})
	if err != nil || headless.Spec.ClusterIP != "None" {
		t.Fatalf("headless: %v", err)
	}
}

func TestDeletionSemantics(t *testing.T) {
	s := apitest.NewServer(t)
	ctx := ctxT(t)
	cms := s.Client.CoreV1().ConfigMaps("default")
	cm, err := cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "f", Finalizers: []string{"example.com/keep"}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Preconditions.
	bad := types.UID("nope")
	if err := cms.Delete(ctx, "f", metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &bad}}); !apierrors.IsConflict(err) {
		t.Fatalf("uid precondition: want Conflict, got %v", err)
	}
	oldRV := "1"
	if err := cms.Delete(ctx, "f", metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &oldRV}}); !apierrors.IsConflict(err) {
		t.Fatalf("rv precondition: want Conflict, got %v", err)
	}
	// Finalizers keep the object with a deletionTimestamp.
	if err := cms.Delete(ctx, "f", metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &cm.UID}}); err != nil {
		t.Fatal(err)
	}
	cm, err = cms.Get(ctx, "f", metav1.GetOptions{})
	if err != nil || cm.DeletionTimestamp == nil {
		t.Fatalf("finalized delete: %v", err)
	}
	// Removing the last finalizer deletes it.
	cm.Finalizers = nil
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cms.Get(ctx, "f", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("after last finalizer: want NotFound, got %v", err)
	}
	// Propagation policies set the GC finalizers.
	deps := s.Client.AppsV1().Deployments("default")
	for _, tc := range []struct {
		policy metav1.DeletionPropagation
		want   string
	}{{metav1.DeletePropagationOrphan, "orphan"}, {metav1.DeletePropagationForeground, "foregroundDeletion"}} {
		name := strings.ToLower(string(tc.policy))
		if _, err := deps.Create(ctx, newDeployment(name, 1), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := deps.Delete(ctx, name, metav1.DeleteOptions{PropagationPolicy: &tc.policy}); err != nil {
			t.Fatal(err)
		}
		d, err := deps.Get(ctx, name, metav1.GetOptions{})
		if err != nil || d.DeletionTimestamp == nil || len(d.Finalizers) != 1 || d.Finalizers[0] != tc.want {
			t.Fatalf("%s: %v %v", tc.policy, err, d.Finalizers)
		}
	}
	bg := metav1.DeletePropagationBackground
	if err := deps.Delete(ctx, "orphan", metav1.DeleteOptions{PropagationPolicy: &bg}); err != nil {
		t.Fatal(err)
	}
	if _, err := deps.Get(ctx, "orphan", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("background after orphan: want NotFound, got %v", err)
	}

	// Pods: bound ones wait out their grace period; unbound ones go at once.
	pods := s.Client.CoreV1().Pods("default")
	bound := newPod("bound", nil)
	bound.Spec.NodeName = "n1"
	if _, err := pods.Create(ctx, bound, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := pods.Delete(ctx, "bound", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	p, err := pods.Get(ctx, "bound", metav1.GetOptions{})
	if err != nil || p.DeletionTimestamp == nil || p.DeletionGracePeriodSeconds == nil || *p.DeletionGracePeriodSeconds != 30 {
		t.Fatalf("graceful delete: %v %+v", err, p.ObjectMeta)
	}
	p.Status.Phase = corev1.PodRunning
	if _, err := pods.UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("status of a terminating pod: %v", err)
	}
	if err := pods.Delete(ctx, "bound", metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}); err != nil {
		t.Fatal(err)
	}
	if _, err := pods.Get(ctx, "bound", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("grace 0: want NotFound, got %v", err)
	}
	if _, err := pods.Create(ctx, newPod("unbound", nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := pods.Delete(ctx, "unbound", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := pods.Get(ctx, "unbound", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("unbound: want NotFound, got %v", err)
	}

	// Namespaces: missing → 404, terminating → 403, protected → 403.
	nss := s.Client.CoreV1().Namespaces()
	if _, err := s.Client.CoreV1().Pods("missing").Create(ctx, newPod("p", nil), metav1.CreateOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("missing namespace: want NotFound, got %v", err)
	}
	ns, err := nss.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "doomed"}}, metav1.CreateOptions{})
	if err != nil || ns.Status.Phase != corev1.NamespaceActive || len(ns.Spec.Finalizers) != 1 {
		t.Fatalf("namespace create: %v %+v", err, ns)
	}
	if err := nss.Delete(ctx, "doomed", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Client.CoreV1().Pods("doomed").Create(ctx, newPod("p", nil), metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("terminating namespace: want Forbidden, got %v", err)
	}
	if err := nss.Delete(ctx, "kube-system", metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("kube-system: want Forbidden, got %v", err)
	}
	// The namespace controller's finalize removes spec.finalizers; the namespace goes.
	ns, _ = nss.Get(ctx, "doomed", metav1.GetOptions{})
	ns.Spec.Finalizers = nil
	if _, err := nss.Finalize(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := nss.Get(ctx, "doomed", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("finalized namespace: want NotFound, got %v", err)
	}
}

func TestPodSubresources(t *testing.T) {
	s := apitest.NewServer(t)
	ctx := ctxT(t)
	pods := s.Client.CoreV1().Pods("default")
	if _, err := pods.Create(ctx, newPod("b", nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	bind := &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Name: "b"}, Target: corev1.ObjectReference{Kind: "Node", Name: "node-1"}}
	if err := pods.Bind(ctx, bind, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p, _ := pods.Get(ctx, "b", metav1.GetOptions{})
	if p.Spec.NodeName != "node-1" || len(p.Status.Conditions) != 1 || p.Status.Conditions[0].Type != corev1.PodScheduled {
		t.Fatalf("after bind: %q %+v", p.Spec.NodeName, p.Status.Conditions)
	}
	if err := pods.Bind(ctx, bind, metav1.CreateOptions{}); !apierrors.IsConflict(err) {
		t.Fatalf("second bind: want Conflict, got %v", err)
	}
	// Logs and exec: 503 naming the node until the agent exists.
	_, err := pods.GetLogs("b", &corev1.PodLogOptions{}).DoRaw(ctx)
	if !apierrors.IsServiceUnavailable(err) {
		t.Fatalf("logs: want 503, got %v", err)
	}
	r0 := do(t, s, "GET", "/api/v1/namespaces/default/pods/b/log", "", nil)
	if r0.code != 503 || r0.status.Message != "no agent endpoint for node node-1" {
		t.Fatalf("logs: %d %s", r0.code, r0.body)
	}
	r := do(t, s, "POST", "/api/v1/namespaces/default/pods/b/exec?command=ls", "", nil)
	if r.code != 503 {
		t.Fatalf("exec: %d %s", r.code, r.body)
	}
	// Eviction deletes (gracefully, it is bound).
	ev := &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: "b"}, DeleteOptions: &metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))}}
	if err := pods.EvictV1(ctx, ev); err != nil {
		t.Fatal(err)
	}
	if _, err := pods.Get(ctx, "b", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("after eviction: want NotFound, got %v", err)
	}
	_ = autoscalingv1.Scale{}
}
