package httprec

import (
	"bufio"
	"errors"
	"net"
	"net/http"
)

// Recorder wraps a ResponseWriter. Code is the first status written (200
// for a body written without one; 0 when nothing was written); Hijacked
// says the connection was taken over (an upgrade), which writes no status
// through the wrapper.
type Recorder struct {
	http.ResponseWriter
	Code     int
	Hijacked bool
}

func (r *Recorder) WriteHeader(code int) {
	if r.Code == 0 {
		r.Code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *Recorder) Write(b []byte) (int, error) {
	if r.Code == 0 {
		r.Code = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

func (r *Recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (r *Recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h, ok := r.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("hijack not supported")
	}
	r.Hijacked = true
	return h.Hijack()
}

func (r *Recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
