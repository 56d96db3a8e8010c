package httprec

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestRecorder(t *testing.T) {
	for _, c := range []struct {
		name string
		h    http.HandlerFunc
		want int
	}{
		{"explicit status", func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusCreated)
			w.WriteHeader(http.StatusOK)
		}, http.StatusCreated},
		{"body only", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("x")) }, http.StatusOK},
		{"nothing", func(http.ResponseWriter, *http.Request) {}, 0},
	} {
		w := httptest.NewRecorder()
		rec := &Recorder{ResponseWriter: w}
		c.h(rec, httptest.NewRequest("GET", "/", nil))
		if rec.Code != c.want {
			t.Errorf("%s: Code %d, want %d", c.name, rec.Code, c.want)
		}
	}
	// Flush reaches the wrapped writer; ResponseController finds it too.
	w := httptest.NewRecorder()
	rec := &Recorder{ResponseWriter: w}
	if err := http.NewResponseController(rec).Flush(); err != nil || !w.Flushed {
		t.Fatalf("flush: %v, flushed %v", err, w.Flushed)
	}
	// httptest.ResponseRecorder cannot be hijacked: the error says so and
	// nothing is marked.
	if _, _, err := rec.Hijack(); err == nil || rec.Hijacked {
		t.Fatalf("hijack of a non-hijacker: %v, hijacked %v", err, rec.Hijacked)
	}
}
