package api_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"flotilla/api"
	"flotilla/api/apitest"
	"flotilla/fsm"
)

// teeWriter lets a test see what watch streams carry.
type teeWriter struct {
	http.ResponseWriter
	seen func([]byte)
}

func (w *teeWriter) Write(b []byte) (int, error) {
	w.seen(b)
	return w.ResponseWriter.Write(b)
}

func (w *teeWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// TestInformer runs a shared informer over pods: it lists, watches,
// receives bookmarks, and survives a 410 (forced by a tiny watch history and
// short watches) by listing again.
func TestInformer(t *testing.T) {
	var expired, bookmarks atomic.Int32
	s := apitest.NewServer(t, apitest.Options{
		Store: fsm.Config{HistoryMaxEvents: 5},
		API: func(c *api.Config) {
			c.MaxWatchTimeout = 2 * time.Second
			c.BookmarkInterval = 100 * time.Millisecond
		},
		Wrap: func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Query().Get("watch") == "" {
					h.ServeHTTP(w, r)
					return
				}
				h.ServeHTTP(&teeWriter{ResponseWriter: w, seen: func(b []byte) {
					if bytes.Contains(b, []byte(`"type":"ERROR"`)) && bytes.Contains(b, []byte(`"code":410`)) {
						expired.Add(1)
					}
					if bytes.Contains(b, []byte(`"type":"BOOKMARK"`)) {
						bookmarks.Add(1)
					}
				}}, r)
			})
		},
	})
	ctx := ctxT(t)
	pods := s.Client.CoreV1().Pods("default")
	if _, err := pods.Create(ctx, newPod("before", nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	factory := informers.NewSharedInformerFactory(s.Client, 0)
	inf := factory.Core().V1().Pods().Informer()
	var mu sync.Mutex
	events := map[string]int{}
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { mu.Lock(); events["add"]++; mu.Unlock() },
		UpdateFunc: func(any, any) { mu.Lock(); events["update"]++; mu.Unlock() },
		DeleteFunc: func(any) { mu.Lock(); events["delete"]++; mu.Unlock() },
	})
	stop := make(chan struct{})
	defer close(stop)
	factory.Start(stop)
	if !cache.WaitForCacheSync(stop, inf.HasSynced) {
		t.Fatal("cache did not sync")
	}
	store := inf.GetStore()
	has := func(name string) func() bool {
		return func() bool { _, ok, _ := store.GetByKey("default/" + name); return ok }
	}
	waitFor(t, 5*time.Second, "listed pod", has("before"))
	p, err := pods.Create(ctx, newPod("live", nil), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "watched add", has("live"))
	p.Labels = map[string]string{"x": "y"}
	if _, err := pods.Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "watched update", func() bool {
		o, ok, _ := store.GetByKey("default/live")
		return ok && o.(*corev1.Pod).Labels["x"] == "y"
	})
	if err := pods.Delete(ctx, "live", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "watched delete", func() bool { return !has("live")() })
	waitFor(t, 5*time.Second, "a bookmark", func() bool { return bookmarks.Load() > 0 })

	// Writes elsewhere push the pods watch's last revision out of the
	// history; the next watch gets 410 and the informer lists again.
	for i := 0; i < 20; i++ {
		if _, err := s.Client.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("cm%d", i)}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 15*time.Second, "a 410 Expired", func() bool { return expired.Load() > 0 })
	if _, err := pods.Create(ctx, newPod("after", nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "pod created after the 410", has("after"))
	mu.Lock()
	defer mu.Unlock()
	if events["add"] < 3 || events["update"] < 1 || events["delete"] < 1 {
		t.Fatalf("events %v", events)
	}
}

func nextEvent(t *testing.T, w watch.Interface) watch.Event {
	t.Helper()
	select {
	case ev, ok := <-w.ResultChan():
		if !ok {
			t.Fatal("watch closed")
		}
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no watch event")
	}
	return watch.Event{}
}

func expectEvent(t *testing.T, w watch.Interface, typ watch.EventType, name string) *corev1.Pod {
	t.Helper()
	for {
		ev := nextEvent(t, w)
		if ev.Type == watch.Bookmark {
			continue
		}
		if ev.Type != typ {
			t.Fatalf("got %s %+v, want %s %s", ev.Type, ev.Object, typ, name)
		}
		p := ev.Object.(*corev1.Pod)
		if p.Name != name {
			t.Fatalf("got %s %s, want %s", typ, p.Name, name)
		}
		return p
	}
}

func TestWatchSemantics(t *testing.T) {
	s := apitest.NewServer(t, apitest.Options{
		Store: fsm.Config{HistoryMaxEvents: 50},
		API:   func(c *api.Config) { c.FutureRevisionWait = 100 * time.Millisecond },
	})
	ctx := ctxT(t)
	pods := s.Client.CoreV1().Pods("default")
	list, err := pods.List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("selector transitions", func(t *testing.T) {
		w, err := pods.Watch(ctx, metav1.ListOptions{LabelSelector: "app=x", ResourceVersion: list.ResourceVersion})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		p, err := pods.Create(ctx, newPod("sel", map[string]string{"app": "x"}), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		got := expectEvent(t, w, watch.Added, "sel")
		if got.ResourceVersion != p.ResourceVersion {
			t.Fatalf("event rv %s, object rv %s", got.ResourceVersion, p.ResourceVersion)
		}
		p.Labels["app"] = "y"
		if p, err = pods.Update(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		expectEvent(t, w, watch.Deleted, "sel")
		p.Labels["app"] = "x"
		if p, err = pods.Update(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		expectEvent(t, w, watch.Added, "sel")
		p.Annotations = map[string]string{"a": "b"}
		if _, err = pods.Update(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		expectEvent(t, w, watch.Modified, "sel")
		if err := pods.Delete(ctx, "sel", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		expectEvent(t, w, watch.Deleted, "sel")
	})

	t.Run("initial state without resourceVersion", func(t *testing.T) {
		if _, err := pods.Create(ctx, newPod("init", nil), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		w, err := pods.Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=init"})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		expectEvent(t, w, watch.Added, "init")
	})

	t.Run("timeoutSeconds", func(t *testing.T) {
		w, err := pods.Watch(ctx, metav1.ListOptions{ResourceVersion: list.ResourceVersion, TimeoutSeconds: ptr(int64(1))})
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.After(5 * time.Second)
		for {
			select {
			case _, ok := <-w.ResultChan():
				if !ok {
					return
				}
			case <-deadline:
				t.Fatal("watch did not end")
			}
		}
	})

	t.Run("future resourceVersion", func(t *testing.T) {
		// Raw requests: client-go would honour Retry-After and retry.
		for _, path := range []string{
			"/api/v1/namespaces/default/pods?watch=1&resourceVersion=99999999",
			"/api/v1/namespaces/default/pods/init?resourceVersion=99999999",
			"/api/v1/namespaces/default/pods?resourceVersion=99999999",
		} {
			r := do(t, s, "GET", path, "", nil)
			if r.code != 504 || r.header.Get("Retry-After") == "" || r.status.Details == nil ||
				len(r.status.Details.Causes) != 1 || r.status.Details.Causes[0].Type != metav1.CauseTypeResourceVersionTooLarge {
				t.Fatalf("%s: want 504 ResourceVersionTooLarge, got %d %s", path, r.code, r.body)
			}
		}
	})

	t.Run("too old resourceVersion", func(t *testing.T) {
		for i := 0; i < 60; i++ {
			if _, err := s.Client.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("old%d", i)}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		w, err := pods.Watch(ctx, metav1.ListOptions{ResourceVersion: "2"})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		ev := nextEvent(t, w)
		st, ok := ev.Object.(*metav1.Status)
		if ev.Type != watch.Error || !ok || st.Code != 410 || st.Reason != metav1.StatusReasonExpired {
			t.Fatalf("want ERROR 410 Expired, got %s %+v", ev.Type, ev.Object)
		}
	})

	t.Run("sendInitialEvents", func(t *testing.T) {
		resp, err := http.Get(s.URL + "/api/v1/namespaces/default/pods?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=5")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		added := 0
		for sc.Scan() {
			var ev struct {
				Type   string
				Object struct {
					Metadata metav1.ObjectMeta
				}
			}
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				t.Fatal(err)
			}
			switch ev.Type {
			case "ADDED":
				added++
			case "BOOKMARK":
				if ev.Object.Metadata.Annotations[metav1.InitialEventsAnnotationKey] != "true" || ev.Object.Metadata.ResourceVersion == "" {
					t.Fatalf("bookmark %+v", ev.Object.Metadata)
				}
				if added != 1 {
					t.Fatalf("%d initial events before the bookmark, want 1", added)
				}
				return
			default:
				t.Fatalf("unexpected %s", sc.Text())
			}
		}
		t.Fatal("stream ended without the initial-events bookmark")
	})

	t.Run("legacy watch path", func(t *testing.T) {
		resp, err := http.Get(s.URL + "/api/v1/watch/namespaces/default/pods/init?timeoutSeconds=1")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		line, _ := bufio.NewReader(resp.Body).ReadString('\n')
		if !strings.Contains(line, `"ADDED"`) || !strings.Contains(line, `"name":"init"`) {
			t.Fatalf("legacy watch: %s", line)
		}
	})
}

// TestCloseWatches: with CloseWatches registered, http.Server.Shutdown ends
// an open watch at once instead of waiting out its 30m timeout; the stream
// ends cleanly, later watches get 503, and other requests still work.
func TestCloseWatches(t *testing.T) {
	s := apitest.NewServer(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: s.API.Handler()}
	hs.RegisterOnShutdown(s.API.CloseWatches)
	go func() { _ = hs.Serve(ln) }()
	t.Cleanup(func() { _ = hs.Close() })

	resp, err := http.Get("http://" + ln.Addr().String() + "/api/v1/namespaces?watch=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("watch: got %d", resp.StatusCode)
	}
	body := bufio.NewReader(resp.Body)
	if _, err := body.ReadBytes('\n'); err != nil {
		t.Fatalf("first event: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := hs.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown after %v: %v (the watch held it)", time.Since(start), err)
	}
	// A clean end (terminated chunked body), not a cut connection.
	if _, err := io.ReadAll(body); err != nil {
		t.Fatalf("watch stream did not end cleanly: %v", err)
	}

	r := do(t, s, "GET", "/api/v1/namespaces?watch=1", "", nil)
	if r.code != http.StatusServiceUnavailable || r.status.Reason != metav1.StatusReasonServiceUnavailable || r.header.Get("Retry-After") == "" {
		t.Fatalf("watch after close: want 503 with Retry-After, got %d %s", r.code, r.body)
	}
	if r := do(t, s, "GET", "/api/v1/namespaces", "", nil); r.code != http.StatusOK {
		t.Fatalf("list after close: want 200, got %d %s", r.code, r.body)
	}
}
