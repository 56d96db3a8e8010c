package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	gwebsocket "github.com/gorilla/websocket"
	clientportforward "k8s.io/client-go/tools/portforward"
	"k8s.io/cri-streaming/pkg/streaming/portforward"
	"k8s.io/streaming/pkg/httpstream"
	"k8s.io/streaming/pkg/httpstream/wsstream"
)

// tunnelProtocol is SPDY port-forward tunnelled in WebSocket binary
// messages, what kubectl port-forward dials first.
const tunnelProtocol = portforward.WebsocketsSPDYTunnelingPrefix + portforward.ProtocolV1Name

// halfCloseGrace is how long a forwarded connection stays up, after one
// side has finished, for the other side to finish too (socat's habit): long
// enough for a server to answer a request whose client half-closed, short
// enough that a silent peer does not pin the connection.
const halfCloseGrace = time.Second

// servePortForward forwards the client's streams to ports of the pod.
func (s *server) servePortForward(w http.ResponseWriter, r *http.Request) error {
	ns, pod, uid := r.PathValue("namespace"), r.PathValue("pod"), r.PathValue("uid")
	cs, err := s.podContainers(r.Context(), ns, pod, uid)
	if err != nil {
		return err
	}
	uid = cs[0].PodUID
	f := &forwarder{s: s, uid: uid}
	if !httpstream.IsUpgradeRequest(r) {
		return badRequest("unable to upgrade: port-forward needs a WebSocket or SPDY upgrade request")
	}
	if wsstream.IsWebSocketRequestWithTunnelingProtocol(r) {
		return s.portForwardTunnel(w, r, f, pod, uid)
	}
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		return badRequest("%v", err)
	}
	s.log.Debug("port-forward", "pod", ns+"/"+pod, "websocket", wsstream.IsWebSocketRequest(r))
	portforward.ServePortForward(w, r, f, pod, uid, opts, s.idle, s.creation, portforward.SupportedProtocols)
	return nil
}

// portForwardTunnel serves SPDY port-forward inside a WebSocket: the
// WebSocket is upgraded here, then cri-streaming's SPDY server runs over it
// as if over a hijacked connection. That is what kube-apiserver does before
// it talks SPDY to a kubelet; doing it here lets the API stay a plain
// upgrade-aware proxy.
func (s *server) portForwardTunnel(w http.ResponseWriter, r *http.Request, f *forwarder, pod, uid string) error {
	if !offersProtocol(r, tunnelProtocol) {
		return badRequest("unable to upgrade: port-forward over WebSocket speaks %s only", tunnelProtocol)
	}
	up := gwebsocket.Upgrader{
		Subprotocols: []string{tunnelProtocol},
		// Browsers are not clients of this endpoint; the API in front of it
		// decides who gets here.
		CheckOrigin: func(*http.Request) bool { return true },
	}
	ws, err := up.Upgrade(w, r, nil)
	if err != nil {
		// Upgrade has answered the client.
		s.log.Debug("port-forward websocket not opened", "err", err)
		return nil
	}
	tconn := clientportforward.NewTunnelingConnection("agent", ws)
	defer tconn.Close()
	inner := r.Clone(r.Context())
	inner.Header = http.Header{}
	inner.Header.Set(httpstream.HeaderConnection, httpstream.HeaderUpgrade)
	inner.Header.Set(httpstream.HeaderUpgrade, "SPDY/3.1")
	inner.Header.Set(httpstream.HeaderProtocolVersion, portforward.ProtocolV1Name)
	hw := &tunnelWriter{conn: tconn, header: http.Header{}}
	portforward.ServePortForward(hw, inner, f, pod, uid, &portforward.V4Options{}, s.idle, s.creation, portforward.SupportedProtocols)
	return nil
}

func offersProtocol(r *http.Request, want string) bool {
	for _, h := range r.Header.Values("Sec-WebSocket-Protocol") {
		for _, p := range strings.Split(h, ",") {
			if strings.TrimSpace(p) == want {
				return true
			}
		}
	}
	return false
}

// tunnelWriter is the ResponseWriter the SPDY upgrader sees inside the
// tunnel: the WebSocket is already established, so the 101 it writes goes
// nowhere and Hijack hands over the tunnel itself.
type tunnelWriter struct {
	conn   net.Conn
	header http.Header
}

func (t *tunnelWriter) Header() http.Header { return t.header }
func (t *tunnelWriter) WriteHeader(int)     {}

// Write is reached only by an upgrade that failed; the text goes nowhere a
// client would read it, so it ends the tunnel instead.
func (t *tunnelWriter) Write(p []byte) (int, error) {
	_ = t.conn.Close()
	return 0, errors.New("port-forward tunnel: no HTTP response inside the tunnel")
}

func (t *tunnelWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return t.conn, bufio.NewReadWriter(bufio.NewReader(t.conn), bufio.NewWriter(t.conn)), nil
}

// forwarder connects port-forward streams to one pod; it satisfies
// cri-streaming's portforward.PortForwarder.
type forwarder struct {
	s   *server
	uid string
}

// PortForward copies between stream and the pod's port until both sides
// finish (or one finishes and the other does not within halfCloseGrace).
func (f *forwarder) PortForward(ctx context.Context, _ string, _ string, port int32, stream io.ReadWriteCloser) error {
	if port <= 0 || port > 65535 {
		return fmt.Errorf("invalid port %d", port)
	}
	conn, err := f.dial(ctx, port)
	if err != nil {
		return err
	}
	defer conn.Close()
	toPod := make(chan error, 1)
	fromPod := make(chan error, 1)
	go func() {
		_, err := io.Copy(conn, stream)
		if cw, ok := conn.(interface{ CloseWrite() error }); ok && err == nil {
			_ = cw.CloseWrite()
		}
		toPod <- err
	}()
	go func() {
		_, err := io.Copy(stream, conn)
		fromPod <- err
	}()
	var first error
	var other chan error
	select {
	case first = <-toPod:
		other = fromPod
	case first = <-fromPod:
		other = toPod
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-other:
		if first == nil {
			first = err
		}
	case <-time.After(halfCloseGrace):
	case <-ctx.Done():
	}
	// Closing conn (deferred) ends a copy still running; the caller closes
	// the stream.
	return first
}

// dial reaches localhost:port of the pod: inside its network namespace
// when it has one, on the node's loopback when it shares the node's
// (hostNetwork). IPv4 first, then IPv6, as a server may listen on either.
func (f *forwarder) dial(ctx context.Context, port int32) (net.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	dial := (&net.Dialer{}).DialContext
	if f.s.net != nil {
		if _, ok := f.s.net.Lookup(f.uid); ok {
			dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
				return f.s.net.DialContext(ctx, f.uid, network, addr)
			}
		}
	}
	p := strconv.Itoa(int(port))
	conn, err := dial(dctx, "tcp", net.JoinHostPort("127.0.0.1", p))
	if err == nil {
		return conn, nil
	}
	if conn6, err6 := dial(dctx, "tcp", net.JoinHostPort("::1", p)); err6 == nil {
		return conn6, nil
	}
	return nil, err
}
