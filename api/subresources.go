package api

import (
	"encoding/json"
	"fmt"
	"net/http"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// serveStatus serves /status (get, update, patch) and namespaces' /finalize (update).
func (q *request) serveStatus(verb string) error {
	if q.sub == "finalize" && verb != "update" {
		return methodNotAllowed(q.res.groupResource(), q.r.Method)
	}
	switch verb {
	case "get":
		return q.get()
	case "patch":
		return q.patch()
	case "update":
	default:
		return methodNotAllowed(q.res.groupResource(), q.r.Method)
	}
	body, dry, err := q.decodePut()
	if err != nil {
		return err
	}
	updated, err := q.s.updateObject(q.ctx, q.res, q.ns, q.name, body.GetResourceVersion(), func(cur object) (object, string, error) {
		if q.sub == "finalize" {
			cur.(*corev1.Namespace).Spec.Finalizers = body.(*corev1.Namespace).Spec.Finalizers
		} else {
			copyField(cur, body.DeepCopyObject(), "Status")
		}
		return cur, body.GetResourceVersion(), nil
	}, updateOptions{dryRun: dry})
	if err != nil {
		return err
	}
	q.s.writeObject(q.w, q.r, http.StatusOK, updated)
	return nil
}

// scaleOf is the autoscaling/v1 Scale view of a Deployment or ReplicaSet.
func scaleOf(obj object) *autoscalingv1.Scale {
	sc := &autoscalingv1.Scale{
		TypeMeta: metav1.TypeMeta{APIVersion: "autoscaling/v1", Kind: "Scale"},
		ObjectMeta: metav1.ObjectMeta{
			Name: obj.GetName(), Namespace: obj.GetNamespace(), UID: obj.GetUID(),
			ResourceVersion: obj.GetResourceVersion(), CreationTimestamp: obj.GetCreationTimestamp(),
		},
	}
	var sel *metav1.LabelSelector
	switch o := obj.(type) {
	case *appsv1.Deployment:
		sc.Spec.Replicas = derefInt32(o.Spec.Replicas, 1)
		sc.Status.Replicas = o.Status.Replicas
		sel = o.Spec.Selector
	case *appsv1.ReplicaSet:
		sc.Spec.Replicas = derefInt32(o.Spec.Replicas, 1)
		sc.Status.Replicas = o.Status.Replicas
		sel = o.Spec.Selector
	}
	if sel != nil {
		if s, err := metav1.LabelSelectorAsSelector(sel); err == nil {
			sc.Status.Selector = s.String()
		}
	}
	return sc
}

func setReplicas(obj object, n int32) {
	switch o := obj.(type) {
	case *appsv1.Deployment:
		o.Spec.Replicas = &n
	case *appsv1.ReplicaSet:
		o.Spec.Replicas = &n
	}
}

func derefInt32(p *int32, def int32) int32 {
	if p == nil {
		return def
	}
	return *p
}

var scaleGVK = autoscalingv1.SchemeGroupVersion.WithKind("Scale")

// serveScale serves /scale: get, update and patch of spec.replicas.
func (q *request) serveScale(verb string) error {
	switch verb {
	case "get":
		if err := q.s.syncRead(q.ctx, q.query.Get("resourceVersion")); err != nil {
			return err
		}
		obj, _, err := q.s.getCurrent(q.res, q.ns, q.name)
		if err != nil {
			return err
		}
		q.s.writeObject(q.w, q.r, http.StatusOK, scaleOf(obj))
		return nil
	case "update", "patch":
	default:
		return methodNotAllowed(q.res.groupResource(), q.r.Method)
	}
	dry, err := q.dryRun()
	if err != nil {
		return err
	}
	var body *autoscalingv1.Scale
	var p *patchRequest
	if verb == "update" {
		into := &autoscalingv1.Scale{}
		into.GetObjectKind().SetGroupVersionKind(scaleGVK)
		decoded, err := q.decodeRequest(into)
		if err != nil {
			return err
		}
		body = decoded.(*autoscalingv1.Scale)
		if body.Name != "" && body.Name != q.name {
			return apierrors.NewBadRequest(fmt.Sprintf("the name of the object (%s) does not match the name on the URL (%s)", body.Name, q.name))
		}
	} else if p, err = q.readPatch(); err != nil {
		return err
	}
	waitRV := ""
	if body != nil {
		waitRV = body.ResourceVersion
	}
	updated, err := q.s.updateObject(q.ctx, q.res, q.ns, q.name, waitRV, func(cur object) (object, string, error) {
		sc := body
		precond := ""
		if p != nil {
			curScale, err := json.Marshal(scaleOf(cur))
			if err != nil {
				return nil, "", err
			}
			patched, err := p.apply(curScale, &autoscalingv1.Scale{}, q.s.cfg.MaxBodyBytes)
			if err != nil {
				return nil, "", err
			}
			into := &autoscalingv1.Scale{}
			into.GetObjectKind().SetGroupVersionKind(scaleGVK)
			obj, _, err := decodeBody(patched, mediaJSON, scaleGVK, into, p.fv)
			if err != nil {
				return nil, "", err
			}
			sc = obj.(*autoscalingv1.Scale)
			if sc.ResourceVersion != cur.GetResourceVersion() {
				precond = sc.ResourceVersion
			}
		} else {
			precond = sc.ResourceVersion
		}
		if sc.Spec.Replicas < 0 {
			return nil, "", apierrors.NewInvalid(scaleGVK.GroupKind(), q.name, field.ErrorList{
				field.Invalid(field.NewPath("spec", "replicas"), sc.Spec.Replicas, "must be greater than or equal to 0")})
		}
		setReplicas(cur, sc.Spec.Replicas)
		return cur, precond, nil
	}, updateOptions{dryRun: dry})
	if err != nil {
		return err
	}
	q.s.writeObject(q.w, q.r, http.StatusOK, scaleOf(updated))
	return nil
}

func successStatus(code int32, gr schema.GroupResource, kind, name string, uid string) *metav1.Status {
	return &metav1.Status{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Status"},
		Status:   metav1.StatusSuccess,
		Code:     code,
		Details:  &metav1.StatusDetails{Name: name, Group: gr.Group, Kind: kind, UID: typesUID(uid)},
	}
}

// serveBinding binds a pod to a node (the scheduler's write).
func (q *request) serveBinding(verb string) error {
	if verb != "create" {
		return methodNotAllowed(q.res.groupResource(), q.r.Method)
	}
	dry, err := q.dryRun()
	if err != nil {
		return err
	}
	into := &corev1.Binding{}
	into.GetObjectKind().SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Binding"))
	decoded, err := q.decodeRequest(into)
	if err != nil {
		return err
	}
	b := decoded.(*corev1.Binding)
	if b.Name != "" && b.Name != q.name {
		return apierrors.NewBadRequest(fmt.Sprintf("the name of the object (%s) does not match the name on the URL (%s)", b.Name, q.name))
	}
	var errs field.ErrorList
	if b.Target.Kind != "" && b.Target.Kind != "Node" {
		errs = append(errs, field.NotSupported(field.NewPath("target", "kind"), b.Target.Kind, []string{"Node", "<empty>"}))
	}
	if b.Target.Name == "" {
		errs = append(errs, field.Required(field.NewPath("target", "name"), ""))
	}
	if len(errs) > 0 {
		return apierrors.NewInvalid(corev1.SchemeGroupVersion.WithKind("Binding").GroupKind(), q.name, errs)
	}
	_, err = q.s.updateObject(q.ctx, q.res, q.ns, q.name, "", func(cur object) (object, string, error) {
		pod := cur.(*corev1.Pod)
		if b.UID != "" && pod.UID != b.UID {
			return nil, "", apierrors.NewConflict(q.res.groupResource(), q.name, fmt.Errorf("Precondition failed: UID in precondition: %v, UID in object meta: %v", b.UID, pod.UID))
		}
		if pod.DeletionTimestamp != nil {
			return nil, "", apierrors.NewConflict(q.res.groupResource(), q.name, fmt.Errorf("pod %s is being deleted, cannot be assigned to a host", q.name))
		}
		if pod.Spec.NodeName != "" {
			return nil, "", apierrors.NewConflict(q.res.groupResource(), q.name, fmt.Errorf("pod %s is already assigned to node %q", q.name, pod.Spec.NodeName))
		}
		pod.Spec.NodeName = b.Target.Name
		for k, v := range b.Annotations {
			if pod.Annotations == nil {
				pod.Annotations = map[string]string{}
			}
			pod.Annotations[k] = v
		}
		setPodCondition(&pod.Status, corev1.PodCondition{Type: corev1.PodScheduled, Status: corev1.ConditionTrue}, q.s.cfg.Now())
		return pod, b.ResourceVersion, nil
	}, updateOptions{dryRun: dry, internal: true})
	if err != nil {
		return err
	}
	q.s.writeObject(q.w, q.r, http.StatusCreated, successStatus(http.StatusCreated, q.res.groupResource(), "", "", ""))
	return nil
}

func setPodCondition(st *corev1.PodStatus, c corev1.PodCondition, now interface{ Unix() int64 }) {
	for i := range st.Conditions {
		if st.Conditions[i].Type == c.Type {
			if st.Conditions[i].Status != c.Status {
				st.Conditions[i].Status = c.Status
				st.Conditions[i].LastTransitionTime = metav1.Unix(now.Unix(), 0)
			}
			return
		}
	}
	c.LastTransitionTime = metav1.Unix(now.Unix(), 0)
	st.Conditions = append(st.Conditions, c)
}

// serveEviction deletes a pod through the eviction subresource. Flotilla
// has no PodDisruptionBudgets, so every eviction is allowed.
func (q *request) serveEviction(verb string) error {
	if verb != "create" {
		return methodNotAllowed(q.res.groupResource(), q.r.Method)
	}
	dry, err := q.dryRun()
	if err != nil {
		return err
	}
	into := &policyv1.Eviction{}
	into.GetObjectKind().SetGroupVersionKind(policyv1.SchemeGroupVersion.WithKind("Eviction"))
	decoded, err := q.decodeRequest(into)
	if err != nil {
		return err
	}
	ev := decoded.(*policyv1.Eviction)
	if ev.Name != "" && ev.Name != q.name {
		return apierrors.NewBadRequest(fmt.Sprintf("name in URL does not match name in Eviction object"))
	}
	opts := ev.DeleteOptions
	if opts == nil {
		opts = &metav1.DeleteOptions{}
	}
	if dry {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	if _, _, err := q.s.deleteObject(q.ctx, q.res, q.ns, q.name, opts); err != nil {
		return err
	}
	q.s.writeObject(q.w, q.r, http.StatusCreated, successStatus(http.StatusCreated, q.res.groupResource(), "", "", ""))
	return nil
}

// serveAgentProxy answers the subresources served by the pod's (or the
// node's) agent: pods/log, pods/exec, pods/portforward, pods/attach and
// nodes/proxy. The proxying itself is in proxy.go.
func (q *request) serveAgentProxy(verb string) error {
	switch q.sub {
	case "log":
		if verb != "get" {
			return methodNotAllowed(q.res.groupResource(), q.r.Method)
		}
	case "proxy":
		if verb != "get" && verb != "create" && verb != "update" && verb != "patch" {
			return methodNotAllowed(q.res.groupResource(), q.r.Method)
		}
		return q.serveNodeProxy()
	default: // exec, attach, portforward: a GET or POST that upgrades
		if verb != "get" && verb != "create" {
			return methodNotAllowed(q.res.groupResource(), q.r.Method)
		}
	}
	obj, _, err := q.s.getFresh(q.ctx, q.res, q.ns, q.name)
	if err != nil {
		return err
	}
	pod := obj.(*corev1.Pod)
	if q.sub == "attach" {
		return attachNotSupported()
	}
	if pod.Spec.NodeName == "" {
		return apierrors.NewBadRequest(fmt.Sprintf("pod %s does not have a host assigned", q.name))
	}
	switch q.sub {
	case "log":
		return q.proxyLog(pod)
	case "exec":
		return q.proxyExec(pod)
	default:
		return q.proxyPortForward(pod)
	}
}

func statusError503(msg string) error {
	// No Retry-After: waiting will not make an agent appear, and client-go
	// would silently retry.
	return apierrors.NewServiceUnavailable(msg)
}
