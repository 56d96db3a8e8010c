package api

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"

	"flotilla/fsm"
)

// watchStream writes newline-delimited JSON watch events, flushing each.
type watchStream struct {
	w   http.ResponseWriter
	fl  http.Flusher
	res *resource
	buf bytes.Buffer
	// table: objects go out as one-row Tables (kubectl get -w); headers
	// only in the first.
	table         *Server
	includeObject string
	sentHeaders   bool
}

func (ws *watchStream) send(typ watch.EventType, obj runtime.Object) error {
	var body []byte
	var err error
	if o, ok := obj.(object); ok && ws.table != nil && typ != watch.Bookmark {
		t := ws.table.table(ws.res, []object{o}, ws.includeObject, !ws.sentHeaders)
		ws.sentHeaders = true
		body, err = encodeTable(t)
	} else {
		body, err = encode(obj, mediaJSON, obj.GetObjectKind().GroupVersionKind().GroupVersion())
	}
	if err != nil {
		return err
	}
	ws.buf.Reset()
	ws.buf.WriteString(`{"type":"`)
	ws.buf.WriteString(string(typ))
	ws.buf.WriteString(`","object":`)
	ws.buf.Write(bytes.TrimRight(body, "\n"))
	ws.buf.WriteString("}\n")
	if _, err := ws.w.Write(ws.buf.Bytes()); err != nil {
		return err
	}
	if ws.fl != nil {
		ws.fl.Flush()
	}
	return nil
}

func (ws *watchStream) sendError(err error) error {
	st := toStatus(err)
	st.APIVersion, st.Kind = "v1", "Status"
	return ws.send(watch.Error, st)
}

// bookmark is an empty object of the resource carrying only a resourceVersion.
func (ws *watchStream) bookmark(rev uint64, initialEnd bool) error {
	obj := newTyped(ws.res)
	obj.SetResourceVersion(formatRV(rev))
	if initialEnd {
		obj.SetAnnotations(map[string]string{metav1.InitialEventsAnnotationKey: "true"})
	}
	return ws.send(watch.Bookmark, obj)
}

// acceptsJSON: watch streams are JSON only.
func acceptsJSON(r *http.Request) bool {
	accept := r.Header.Get("Accept")
	if accept == "" {
		return true
	}
	for _, part := range strings.Split(accept, ",") {
		mt := strings.TrimSpace(strings.SplitN(part, ";", 2)[0])
		if (mt == mediaJSON || mt == "*/*" || mt == "application/*") && !strings.Contains(part, "as=") {
			return true
		}
	}
	return false
}

// watch streams changes: from resourceVersion N (events after N), or, with
// no resourceVersion, "0", or sendInitialEvents=true, the current state as
// ADDED events first (then, for sendInitialEvents, a BOOKMARK marking their
// end). Selectors apply to old and new state, so an object that stops
// matching is sent as DELETED and one that starts matching as ADDED.
func (q *request) watch() error {
	select {
	case <-q.s.watchesClosed:
		return errStatus(statusOf(apierrors.NewServiceUnavailable("the server is shutting down"), retryAfterSeconds))
	default:
	}
	opts, err := q.listOptions()
	if err != nil {
		return err
	}
	sel, err := q.selection(opts)
	if err != nil {
		return err
	}
	if !acceptsJSON(q.r) {
		return notAcceptable()
	}
	prefix := q.listPrefix(sel)
	timeout := q.s.cfg.MaxWatchTimeout
	if opts.TimeoutSeconds != nil && *opts.TimeoutSeconds > 0 && time.Duration(*opts.TimeoutSeconds)*time.Second < timeout {
		timeout = time.Duration(*opts.TimeoutSeconds) * time.Second
	}
	initial := opts.SendInitialEvents != nil && *opts.SendInitialEvents
	st := q.s.store()
	var start uint64
	var items []object
	if initial || opts.ResourceVersion == "" || opts.ResourceVersion == "0" {
		if opts.ResourceVersion != "" && opts.ResourceVersion != "0" {
			n, err := parseRV(opts.ResourceVersion)
			if err != nil {
				return err
			}
			if err := q.s.waitRevision(q.ctx, n); err != nil {
				return err
			}
		} else if err := q.s.syncRead(q.ctx, opts.ResourceVersion); err != nil {
			return err
		}
		r, err := st.List(prefix, fsm.ListOptions{})
		if err != nil {
			return err
		}
		start = r.Revision
		for _, kv := range r.KVs {
			obj, err := q.s.decodeKV(q.res, kv)
			if err != nil {
				return err
			}
			if sel.matches(q.res, obj) {
				items = append(items, obj)
			}
		}
	} else {
		n, err := parseRV(opts.ResourceVersion)
		if err != nil {
			return err
		}
		if err := q.s.waitRevision(q.ctx, n); err != nil {
			return err
		}
		start = n
	}

	ws := &watchStream{w: q.w, res: q.res}
	ws.fl, _ = q.w.(http.Flusher)
	contentType := mediaJSON
	if wantsTable(q.r) {
		ws.table, ws.includeObject, contentType = q.s, q.query.Get("includeObject"), tableMedia
	}
	watcher, werr := st.Watch(prefix, start)
	q.w.Header().Set("Content-Type", contentType)
	q.w.Header().Set("X-Content-Type-Options", "nosniff")
	q.w.Header().Set("Cache-Control", "no-cache, private")
	q.w.WriteHeader(http.StatusOK)
	if ws.fl != nil {
		ws.fl.Flush()
	}
	if werr != nil {
		// Too old (or otherwise unwatchable): the client re-lists.
		if errors.Is(werr, fsm.ErrCompacted) {
			werr = apierrors.NewResourceExpired(fmt.Sprintf("too old resource version: %d", start))
		}
		_ = ws.sendError(werr)
		return nil
	}
	defer watcher.Stop()
	gauge := q.s.metrics.watches.WithLabelValues(q.res.plural)
	gauge.Inc()
	defer gauge.Dec()

	for _, obj := range items {
		if err := ws.send(watch.Added, obj); err != nil {
			return nil
		}
	}
	last := start
	if initial && opts.AllowWatchBookmarks {
		if err := ws.bookmark(start, true); err != nil {
			return nil
		}
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var tick <-chan time.Time
	if opts.AllowWatchBookmarks {
		t := time.NewTicker(q.s.cfg.BookmarkInterval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-q.ctx.Done():
			return nil
		case <-q.s.watchesClosed:
			return nil
		case <-timer.C:
			return nil
		case <-tick:
			if err := ws.bookmark(last, false); err != nil {
				return nil
			}
		case ev, ok := <-watcher.Events():
			if !ok {
				err := watcher.Err()
				if err == nil || errors.Is(err, fsm.ErrWatcherStopped) {
					return nil
				}
				_ = ws.sendError(err)
				return nil
			}
			if ev.Revision > last {
				last = ev.Revision
			}
			typ, obj, err := q.convertEvent(ev, sel)
			if err != nil {
				_ = ws.sendError(err)
				return nil
			}
			if obj == nil {
				continue
			}
			if err := ws.send(typ, obj); err != nil {
				return nil
			}
		}
	}
}

// convertEvent turns a store event into a watch event as seen through the
// selectors (nil when the watcher should not see it).
func (q *request) convertEvent(ev fsm.Event, sel *selection) (watch.EventType, object, error) {
	var prev object
	if ev.PrevKV != nil && !sel.empty() {
		p, err := q.s.decodeKV(q.res, ev.PrevKV)
		if err != nil {
			return "", nil, err
		}
		prev = p
	}
	obj, err := q.s.decodeKV(q.res, ev.KV)
	if err != nil {
		return "", nil, err
	}
	obj.SetResourceVersion(formatRV(ev.Revision))
	if ev.Type == fsm.EventDelete {
		if sel.matches(q.res, obj) {
			return watch.Deleted, obj, nil
		}
		return "", nil, nil
	}
	now := sel.matches(q.res, obj)
	was := ev.PrevKV != nil && (sel.empty() || sel.matches(q.res, prev))
	switch {
	case now && was:
		return watch.Modified, obj, nil
	case now:
		return watch.Added, obj, nil
	case was:
		return watch.Deleted, obj, nil
	}
	return "", nil, nil
}
