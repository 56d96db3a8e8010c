package api

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilrand "k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"flotilla/fsm"
)

// request is one resource request after routing.
type request struct {
	s     *Server
	w     http.ResponseWriter
	r     *http.Request
	ctx   context.Context
	res   *resource
	ns    string
	name  string
	sub   string
	query url.Values
	// watchPath: the legacy /watch/ path form.
	watchPath bool
	// subPath is what follows a proxy subresource ("/images" of
	// nodes/{name}/proxy/images), unescaped.
	subPath string
}

// serveResource routes /api/v1/<rest> and /apis/<group>/<version>/<rest>.
func (s *Server) serveResource(w http.ResponseWriter, r *http.Request, group, version, rest string) {
	q, err := s.parseRequest(w, r, group, version, rest)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := q.serve(); err != nil {
		s.writeError(w, r, err)
	}
}

func (s *Server) parseRequest(w http.ResponseWriter, r *http.Request, group, version, rest string) (*request, error) {
	raw := strings.Split(strings.TrimSuffix(rest, "/"), "/")
	segs := make([]string, 0, len(raw))
	for _, p := range raw {
		u, err := url.PathUnescape(p)
		if err != nil || u == "" {
			return nil, notFoundPath()
		}
		segs = append(segs, u)
	}
	q := &request{s: s, w: w, r: r, ctx: r.Context(), query: r.URL.Query()}
	if len(segs) > 0 && segs[0] == "watch" {
		q.watchPath = true
		segs = segs[1:]
	}
	if len(segs) == 0 {
		return nil, notFoundPath()
	}
	var plural string
	if segs[0] == "namespaces" && len(segs) >= 3 && !(len(segs) == 3 && (segs[2] == "status" || segs[2] == "finalize")) {
		q.ns, plural, segs = segs[1], segs[2], segs[3:]
	} else {
		plural, segs = segs[0], segs[1:]
	}
	if len(segs) > 2 && segs[1] == "proxy" {
		q.subPath, segs = "/"+strings.Join(segs[2:], "/"), segs[:2]
	}
	if len(segs) > 2 {
		return nil, notFoundPath()
	}
	if len(segs) > 0 {
		q.name = segs[0]
	}
	if len(segs) > 1 {
		q.sub = segs[1]
	}
	q.res = s.reg.lookup(group, version, plural)
	if q.res == nil {
		return nil, notFoundPath()
	}
	if !q.res.namespaced && q.ns != "" {
		return nil, notFoundPath()
	}
	if q.res.namespaced && q.ns == "" && q.name != "" {
		return nil, notFoundPath()
	}
	if q.sub != "" && !q.res.hasSub(q.sub) {
		return nil, notFoundPath()
	}
	if q.watchPath && q.sub != "" {
		return nil, notFoundPath()
	}
	return q, nil
}

// verb is the Kubernetes verb of the request.
func (q *request) verb() string {
	isWatch := q.watchPath || q.query.Get("watch") == "true" || q.query.Get("watch") == "1"
	switch q.r.Method {
	case http.MethodGet, http.MethodHead:
		if isWatch {
			return "watch"
		}
		if q.name == "" {
			return "list"
		}
		return "get"
	case http.MethodPost:
		if q.name == "" {
			return "create"
		}
		if q.sub != "" {
			return "create"
		}
	case http.MethodPut:
		if q.name != "" {
			return "update"
		}
	case http.MethodPatch:
		if q.name != "" {
			return "patch"
		}
	case http.MethodDelete:
		if q.name == "" {
			return "deletecollection"
		}
		if q.sub == "" {
			return "delete"
		}
	}
	return ""
}

func (q *request) serve() error {
	verb := q.verb()
	ri := infoFrom(q.ctx)
	ri.verb, ri.resource, ri.subresource = verb, q.res.plural, q.sub
	if verb == "" {
		return methodNotAllowed(q.res.groupResource(), q.r.Method)
	}
	if q.res.namespaced && q.ns == "" && verb != "list" && verb != "watch" {
		return methodNotAllowed(q.res.groupResource(), q.r.Method)
	}
	if q.res.review != nil {
		return q.serveReview(verb)
	}
	switch q.sub {
	case "":
	case "status", "finalize":
		return q.serveStatus(verb)
	case "scale":
		return q.serveScale(verb)
	case "binding":
		return q.serveBinding(verb)
	case "eviction":
		return q.serveEviction(verb)
	case "token":
		return q.serveToken(verb)
	case "log", "exec", "attach", "portforward", "proxy":
		return q.serveAgentProxy(verb)
	default:
		return notFoundPath()
	}
	switch verb {
	case "get":
		return q.get()
	case "list":
		return q.list()
	case "watch":
		return q.watch()
	case "create":
		return q.create()
	case "update":
		return q.update()
	case "patch":
		return q.patch()
	case "delete":
		return q.delete()
	case "deletecollection":
		return q.deleteCollection()
	}
	return methodNotAllowed(q.res.groupResource(), q.r.Method)
}

func (q *request) dryRun() (bool, error) {
	for _, v := range q.query["dryRun"] {
		if v != "All" {
			return false, apierrors.NewBadRequest(fmt.Sprintf("dryRun: Unsupported value: %q: supported values: \"All\"", v))
		}
		return true, nil
	}
	return false, nil
}

func (q *request) get() error {
	var opts metav1.GetOptions
	if err := paramCodec.DecodeParameters(q.query, coreV1, &opts); err != nil {
		return apierrors.NewBadRequest(err.Error())
	}
	if err := q.s.syncRead(q.ctx, opts.ResourceVersion); err != nil {
		return err
	}
	obj, _, err := q.s.getCurrent(q.res, q.ns, q.name)
	if err != nil {
		return err
	}
	if q.sub == "" && wantsTable(q.r) {
		t := q.s.table(q.res, []object{obj}, q.query.Get("includeObject"), true)
		t.ResourceVersion = obj.GetResourceVersion()
		q.s.writeTable(q.w, t)
		return nil
	}
	q.s.writeObject(q.w, q.r, http.StatusOK, obj)
	return nil
}

// decodeRequest decodes the body as kind gvk into into.
func (q *request) decodeRequest(into runtime.Object) (runtime.Object, error) {
	fv, err := parseFieldValidation(q.query.Get("fieldValidation"))
	if err != nil {
		return nil, err
	}
	data, err := readBody(q.r, q.s.cfg.MaxBodyBytes)
	if err != nil {
		return nil, err
	}
	gvk := into.GetObjectKind().GroupVersionKind()
	obj, warnings, err := decodeBody(data, q.r.Header.Get("Content-Type"), gvk, into, fv)
	if err != nil {
		return nil, err
	}
	addWarnings(q.w, warnings)
	return obj, nil
}

// newTyped returns an empty object of the resource with its kind set (the
// decoder's default when the body has no apiVersion/kind).
func newTyped(res *resource) object {
	o := res.newObj()
	o.GetObjectKind().SetGroupVersionKind(res.gvk)
	return o
}

func (q *request) create() error {
	dry, err := q.dryRun()
	if err != nil {
		return err
	}
	obj, err := q.decodeRequest(newTyped(q.res))
	if err != nil {
		return err
	}
	created, err := q.s.createObject(q.ctx, q.res, q.ns, obj.(object), dry)
	if err != nil {
		return err
	}
	q.s.writeObject(q.w, q.r, http.StatusCreated, created)
	return nil
}

// maxGeneratedNameLength leaves room for the 5 random characters.
const maxGeneratedNameLength = 63 - 5

// createObject stamps, defaults, validates and stores a new object.
func (s *Server) createObject(ctx context.Context, res *resource, ns string, obj object, dryRun bool) (object, error) {
	if res.namespaced {
		if obj.GetNamespace() == "" {
			obj.SetNamespace(ns)
		} else if ns != "" && obj.GetNamespace() != ns {
			return nil, apierrors.NewBadRequest("the namespace of the provided object does not match the namespace sent on the request")
		}
	} else {
		obj.SetNamespace("")
	}
	if obj.GetResourceVersion() != "" {
		return nil, apierrors.NewBadRequest("resourceVersion should not be set on objects to be created")
	}
	generated := obj.GetName() == "" && obj.GetGenerateName() != ""
	now := metav1.NewTime(s.cfg.Now().UTC().Truncate(1e9))
	obj.SetUID(uuid.NewUUID())
	obj.SetCreationTimestamp(now)
	obj.SetDeletionTimestamp(nil)
	obj.SetDeletionGracePeriodSeconds(nil)
	obj.SetSelfLink("")
	obj.SetManagedFields(nil)
	if res.generation {
		obj.SetGeneration(1)
	} else {
		obj.SetGeneration(0)
	}
	if res.prepareCreate != nil {
		res.prepareCreate(obj)
	}
	if pod, ok := obj.(*corev1.Pod); ok {
		if err := s.admitPod(ctx, pod); err != nil { // sa_admission.go
			return nil, err
		}
	}
	for attempt := 0; ; attempt++ {
		if generated {
			base := obj.GetGenerateName()
			if len(base) > maxGeneratedNameLength {
				base = base[:maxGeneratedNameLength]
			}
			obj.SetName(base + utilrand.String(5))
		}
		if res.defaults != nil {
			res.defaults(obj) // idempotent; after the name, which a default may use
		}
		if errs := s.validateCreate(res, obj); len(errs) > 0 {
			return nil, apierrors.NewInvalid(res.gvk.GroupKind(), obj.GetName(), errs)
		}
		out, err := s.tryCreate(ctx, res, obj, dryRun)
		if err == errRetry && attempt < maxRetries {
			continue
		}
		if apierrors.IsAlreadyExists(err) && generated && attempt < 3 {
			continue
		}
		return out, err
	}
}

func (s *Server) validateCreate(res *resource, obj object) field.ErrorList {
	errs := apivalidation.ValidateObjectMetaAccessor(obj, res.namespaced, res.nameFn, field.NewPath("metadata"))
	if res.validate != nil {
		errs = append(errs, res.validate(obj)...)
	}
	return errs
}

// tryCreate is one attempt: compares on the key's absence, the namespace's
// revision and the Service's allocations.
func (s *Server) tryCreate(ctx context.Context, res *resource, obj object, dryRun bool) (object, error) {
	key := res.key(obj.GetNamespace(), obj.GetName())
	txn := &fsm.Txn{Compares: []fsm.Compare{{Key: key, Target: fsm.CompareAbsent}}}
	if res.namespaced {
		nsKV, err := s.checkNamespace(ctx, res, obj.GetNamespace())
		if err != nil {
			return nil, err
		}
		txn.Compares = append(txn.Compares, fsm.Compare{Key: nsKV.Key, Target: fsm.CompareModRevision, ModRevision: nsKV.ModRevision})
	}
	var claims *allocation
	if svc, ok := obj.(*corev1.Service); ok {
		var err error
		claims, err = s.alloc.forCreate(s.store(), key, svc)
		if err != nil {
			return nil, err
		}
		claims.addTo(txn)
	}
	data, err := encodeForStore(res, obj)
	if err != nil {
		return nil, err
	}
	txn.Ops = append([]fsm.Op{{Type: fsm.OpPut, Key: key, Value: data}}, txn.Ops...)
	if dryRun {
		return obj, nil
	}
	result, err := s.commit(ctx, txn)
	if err != nil {
		return nil, err
	}
	if !result.Succeeded {
		switch {
		case result.FailedCompare == 0:
			return nil, apierrors.NewAlreadyExists(res.groupResource(), obj.GetName())
		case claims != nil && claims.isClaim(txn.Compares[result.FailedCompare].Key):
			if err := claims.conflict(txn.Compares[result.FailedCompare].Key); err != nil {
				return nil, err
			}
		}
		return nil, errRetry
	}
	obj.SetResourceVersion(formatRV(result.Revision))
	return obj, nil
}

// checkNamespace: new content needs an existing namespace that is not terminating.
func (s *Server) checkNamespace(ctx context.Context, res *resource, ns string) (*fsm.KeyValue, error) {
	nsRes := s.reg.lookup("", "v1", "namespaces")
	obj, kv, err := s.getFresh(ctx, nsRes, "", ns)
	if apierrors.IsNotFound(err) {
		return nil, apierrors.NewNotFound(nsRes.groupResource(), ns)
	}
	if err != nil {
		return nil, err
	}
	n := obj.(*corev1.Namespace)
	if n.DeletionTimestamp != nil || n.Status.Phase == corev1.NamespaceTerminating {
		e := apierrors.NewForbidden(res.groupResource(), "", fmt.Errorf("unable to create new content in namespace %s because it is being terminated", ns))
		e.ErrStatus.Details.Causes = append(e.ErrStatus.Details.Causes, metav1.StatusCause{
			Type: corev1.NamespaceTerminatingCause, Message: fmt.Sprintf("namespace %s is being terminated", ns), Field: "metadata.namespace",
		})
		return nil, e
	}
	return kv, nil
}

func (q *request) update() error {
	body, dry, err := q.decodePut()
	if err != nil {
		return err
	}
	updated, err := q.s.updateObject(q.ctx, q.res, q.ns, q.name, body.GetResourceVersion(), func(cur object) (object, string, error) {
		next := body.DeepCopyObject().(object)
		preserveServerFields(q.res, next, cur)
		return next, body.GetResourceVersion(), nil
	}, updateOptions{dryRun: dry})
	if apierrors.IsNotFound(err) && q.res.createOnUpdate {
		body.SetResourceVersion("")
		created, cerr := q.s.createObject(q.ctx, q.res, q.ns, body, dry)
		if cerr != nil {
			return cerr
		}
		q.s.writeObject(q.w, q.r, http.StatusCreated, created)
		return nil
	}
	if err != nil {
		return err
	}
	q.s.writeObject(q.w, q.r, http.StatusOK, updated)
	return nil
}

// decodePut reads the body of a PUT to the object or a subresource that
// speaks its kind: dryRun, the decoded object, its name and namespace
// checked against the URL.
func (q *request) decodePut() (object, bool, error) {
	dry, err := q.dryRun()
	if err != nil {
		return nil, false, err
	}
	decoded, err := q.decodeRequest(newTyped(q.res))
	if err != nil {
		return nil, false, err
	}
	body := decoded.(object)
	if err := q.checkBodyIdentity(body); err != nil {
		return nil, false, err
	}
	return body, dry, nil
}

// checkBodyIdentity: the name and namespace in a body must match the URL.
func (q *request) checkBodyIdentity(body metav1.Object) error {
	if body.GetName() == "" {
		body.SetName(q.name)
	}
	if body.GetName() != q.name {
		return apierrors.NewBadRequest(fmt.Sprintf("the name of the object (%s) does not match the name on the URL (%s)", body.GetName(), q.name))
	}
	if q.res.namespaced {
		if body.GetNamespace() == "" {
			body.SetNamespace(q.ns)
		}
		if body.GetNamespace() != q.ns {
			return apierrors.NewBadRequest("the namespace of the provided object does not match the namespace sent on the request")
		}
	} else {
		body.SetNamespace("")
	}
	return nil
}

// preserveServerFields keeps what a client may not change through the main
// resource: identity, timestamps, generation and (when split off) status.
func preserveServerFields(res *resource, next, cur object) {
	if next.GetUID() == "" {
		next.SetUID(cur.GetUID())
	}
	next.SetCreationTimestamp(cur.GetCreationTimestamp())
	next.SetDeletionTimestamp(cur.GetDeletionTimestamp())
	next.SetDeletionGracePeriodSeconds(cur.GetDeletionGracePeriodSeconds())
	next.SetGeneration(cur.GetGeneration())
	next.SetSelfLink("")
	next.SetManagedFields(nil)
	if res.hasStatus {
		copyField(next, cur, "Status")
	}
	if next.GetGenerateName() == "" {
		next.SetGenerateName(cur.GetGenerateName())
	}
}
