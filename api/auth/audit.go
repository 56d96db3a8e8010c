package auth

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// auditLog writes one JSON object per line; a mutex keeps lines whole.
type auditLog struct {
	mu sync.Mutex
	w  io.Writer
}

// auditEvent is one audit line: who, what, when, result.
type auditEvent struct {
	TS          time.Time `json:"ts"`
	User        string    `json:"user"`
	Groups      []string  `json:"groups"`
	Verb        string    `json:"verb"`
	Method      string    `json:"method"`
	URI         string    `json:"uri"`
	Namespace   string    `json:"namespace"`
	Resource    string    `json:"resource"`
	Subresource string    `json:"subresource"`
	Name        string    `json:"name"`
	Code        int       `json:"code"`
	LatencyMs   float64   `json:"latencyMs"`
	SourceIP    string    `json:"sourceIP"`
}

func (a *Auth) writeAudit(r *http.Request, u *User, code int, start time.Time) {
	at := RequestAttributes(r)
	now := a.cfg.Now()
	ev := auditEvent{
		TS: start.UTC(), Verb: at.Verb, Method: r.Method, URI: r.RequestURI,
		Namespace: at.Namespace, Resource: at.Resource, Subresource: at.Subresource, Name: at.Name,
		Code: code, LatencyMs: float64(now.Sub(start).Microseconds()) / 1000,
	}
	if ev.URI == "" {
		ev.URI = r.URL.RequestURI()
	}
	if u != nil {
		ev.User, ev.Groups = u.Name, u.Groups
	}
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		ev.SourceIP = host
	} else {
		ev.SourceIP = r.RemoteAddr
	}
	line, err := json.Marshal(&ev)
	if err != nil {
		a.log.Error("audit: encode", "error", err)
		return
	}
	line = append(line, '\n')
	a.audit.mu.Lock()
	defer a.audit.mu.Unlock()
	if _, err := a.audit.w.Write(line); err != nil {
		a.log.Error("audit: write", "error", err)
	}
}
