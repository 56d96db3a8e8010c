package api

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"

	"flotilla/fsm"
)

// selection is a request's label and field selectors.
type selection struct {
	labels labels.Selector
	fields fields.Selector
}

func (s *selection) matches(res *resource, obj object) bool {
	if !s.labels.Empty() && !s.labels.Matches(labels.Set(obj.GetLabels())) {
		return false
	}
	if !s.fields.Empty() && !s.fields.Matches(res.selectableFields(obj)) {
		return false
	}
	return true
}

func (s *selection) empty() bool { return s.labels.Empty() && s.fields.Empty() }

// listOptions decodes ListOptions from the query.
func (q *request) listOptions() (metav1.ListOptions, error) {
	var opts metav1.ListOptions
	if err := paramCodec.DecodeParameters(q.query, coreV1, &opts); err != nil {
		return opts, apierrors.NewBadRequest(err.Error())
	}
	if q.watchPath {
		opts.Watch = true
	}
	if opts.Limit < 0 {
		opts.Limit = 0
	}
	return opts, nil
}

// selection parses the selectors; a field no selector of this resource
// supports is a 400, as in kube-apiserver.
func (q *request) selection(opts metav1.ListOptions) (*selection, error) {
	ls, err := labels.Parse(opts.LabelSelector)
	if err != nil {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("unable to parse requirement: %v", err))
	}
	fs, err := fields.ParseSelector(opts.FieldSelector)
	if err != nil {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("invalid field selector: %v", err))
	}
	for _, r := range fs.Requirements() {
		if !q.res.supportsField(r.Field) {
			return nil, apierrors.NewBadRequest(fmt.Sprintf("field label not supported: %s", r.Field))
		}
	}
	if q.watchPath && q.name != "" {
		fs = fields.AndSelectors(fs, fields.OneTermEqualSelector("metadata.name", q.name))
	}
	return &selection{labels: ls, fields: fs}, nil
}

// listPrefix narrows an all-namespace list to one namespace when the field
// selector pins metadata.namespace.
func (q *request) listPrefix(sel *selection) string {
	ns := q.ns
	if q.res.namespaced && ns == "" {
		if v, ok := sel.fields.RequiresExactMatch("metadata.namespace"); ok && v != "" {
			ns = v
		}
	}
	return q.res.prefix(ns)
}

// continueToken is kube's format: base64 of {"v","rv","start"}; start is
// the last key returned (the next page lists keys after it).
type continueToken struct {
	APIVersion string `json:"v"`
	RV         uint64 `json:"rv"`
	Start      string `json:"start"`
}

func encodeContinue(rev uint64, after string) string {
	b, _ := json.Marshal(continueToken{APIVersion: "meta.k8s.io/v1", RV: rev, Start: after})
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeContinue(s, prefix string) (*continueToken, error) {
	bad := apierrors.NewBadRequest("continue key is not valid")
	data, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, bad
	}
	var t continueToken
	if err := json.Unmarshal(data, &t); err != nil || t.APIVersion != "meta.k8s.io/v1" || t.RV == 0 {
		return nil, bad
	}
	if len(t.Start) < len(prefix) || t.Start[:len(prefix)] != prefix {
		return nil, bad
	}
	return &t, nil
}

func expiredContinue() error {
	return apierrors.NewResourceExpired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.")
}

type listPage struct {
	items     []object
	rev       uint64
	cont      string
	remaining *int64
}

// listItems reads one page (or everything when opts.Limit is 0) at one
// revision. Selectors filter server-side; a page keeps reading until it has
// Limit matches or the list ends.
func (q *request) listItems(opts metav1.ListOptions) (*listPage, error) {
	sel, err := q.selection(opts)
	if err != nil {
		return nil, err
	}
	prefix := q.listPrefix(sel)
	lo := fsm.ListOptions{Limit: int(opts.Limit)}
	if opts.Continue != "" {
		if opts.ResourceVersion != "" && opts.ResourceVersion != "0" {
			return nil, apierrors.NewBadRequest("specifying resource version is not allowed when using continue")
		}
		tok, err := decodeContinue(opts.Continue, prefix)
		if err != nil {
			return nil, err
		}
		lo.Revision, lo.After = tok.RV, tok.Start
	} else {
		exact := opts.ResourceVersionMatch == metav1.ResourceVersionMatchExact ||
			(opts.ResourceVersionMatch == "" && opts.Limit > 0 && opts.ResourceVersion != "" && opts.ResourceVersion != "0")
		switch opts.ResourceVersionMatch {
		case "", metav1.ResourceVersionMatchExact, metav1.ResourceVersionMatchNotOlderThan:
		default:
			return nil, apierrors.NewBadRequest(fmt.Sprintf("resourceVersionMatch: Unsupported value: %q", opts.ResourceVersionMatch))
		}
		if opts.ResourceVersionMatch != "" && opts.ResourceVersion == "" {
			return nil, apierrors.NewBadRequest("resourceVersionMatch is forbidden unless resourceVersion is provided")
		}
		if exact && opts.ResourceVersion == "0" && opts.ResourceVersionMatch == metav1.ResourceVersionMatchExact {
			return nil, apierrors.NewBadRequest("resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"")
		}
		if exact {
			n, err := parseRV(opts.ResourceVersion)
			if err != nil {
				return nil, err
			}
			if err := q.s.waitRevision(q.ctx, n); err != nil {
				return nil, err
			}
			lo.Revision = n
		} else if err := q.s.syncRead(q.ctx, opts.ResourceVersion); err != nil {
			return nil, err
		}
	}
	page := &listPage{}
	limit := int(opts.Limit)
	st := q.s.store()
	for {
		r, err := st.List(prefix, lo)
		if err != nil {
			if errors.Is(err, fsm.ErrCompacted) {
				if opts.Continue != "" {
					return nil, expiredContinue()
				}
				return nil, apierrors.NewResourceExpired(fmt.Sprintf("too old resource version: %d", lo.Revision))
			}
			return nil, err
		}
		if page.rev == 0 {
			page.rev = r.Revision
		}
		last := ""
		for _, kv := range r.KVs {
			obj, err := q.s.decodeKV(q.res, kv)
			if err != nil {
				return nil, err
			}
			last = kv.Key
			if sel.matches(q.res, obj) {
				page.items = append(page.items, obj)
			}
		}
		if !r.More {
			return page, nil
		}
		if limit > 0 && len(page.items) >= limit {
			page.cont = encodeContinue(page.rev, last)
			if sel.empty() {
				n := int64(r.Remaining)
				page.remaining = &n
			}
			return page, nil
		}
		lo.Revision, lo.After, lo.Limit = r.Revision, last, limit-len(page.items)
	}
}

func (q *request) list() error {
	opts, err := q.listOptions()
	if err != nil {
		return err
	}
	if opts.Watch {
		return q.watch()
	}
	page, err := q.listItems(opts)
	if err != nil {
		return err
	}
	if wantsTable(q.r) {
		t := q.s.table(q.res, page.items, q.query.Get("includeObject"), true)
		t.ResourceVersion, t.Continue, t.RemainingItemCount = formatRV(page.rev), page.cont, page.remaining
		q.s.writeTable(q.w, t)
		return nil
	}
	list, err := q.res.listOf(page.items)
	if err != nil {
		return err
	}
	lm, _ := meta.ListAccessor(list)
	lm.SetResourceVersion(formatRV(page.rev))
	lm.SetContinue(page.cont)
	lm.SetRemainingItemCount(page.remaining)
	q.s.writeObject(q.w, q.r, http.StatusOK, list)
	return nil
}

// listOf builds the typed list of items.
func (r *resource) listOf(items []object) (runtime.Object, error) {
	objs := make([]runtime.Object, len(items))
	for i, o := range items {
		o.GetObjectKind().SetGroupVersionKind(r.gvk)
		objs[i] = o
	}
	list := r.newList()
	if err := meta.SetList(list, objs); err != nil {
		return nil, err
	}
	list.GetObjectKind().SetGroupVersionKind(r.gvk.GroupVersion().WithKind(r.listKind))
	return list, nil
}
