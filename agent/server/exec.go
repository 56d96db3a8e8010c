package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	"k8s.io/streaming/pkg/httpstream"
	"k8s.io/streaming/pkg/httpstream/wsstream"
	utilexec "k8s.io/utils/exec"

	"flotilla/agent/runtime"
)

// execOptions reads which streams an exec wants. The kubelet's names are
// input, output, error and tty ("1"); the pod's PodExecOptions names
// (stdin, stdout, stderr, "true") are accepted too, for direct callers.
func execOptions(q url.Values) (*remotecommand.Options, error) {
	flag := func(names ...string) (bool, error) {
		for _, n := range names {
			v := q.Get(n)
			if v == "" {
				continue
			}
			b, err := strconv.ParseBool(v)
			if err != nil {
				return false, badRequest("%s: invalid boolean %q", n, v)
			}
			if b {
				return true, nil
			}
		}
		return false, nil
	}
	var o remotecommand.Options
	var err error
	if o.Stdin, err = flag(remotecommand.ExecStdinParam, "stdin"); err != nil {
		return nil, err
	}
	if o.Stdout, err = flag(remotecommand.ExecStdoutParam, "stdout"); err != nil {
		return nil, err
	}
	if o.Stderr, err = flag(remotecommand.ExecStderrParam, "stderr"); err != nil {
		return nil, err
	}
	if o.TTY, err = flag(remotecommand.ExecTTYParam); err != nil {
		return nil, err
	}
	if o.TTY {
		// With a terminal, stderr is stdout (as the kubelet does).
		o.Stderr = false
	}
	if !o.Stdin && !o.Stdout && !o.Stderr {
		return nil, badRequest("you must specify at least 1 of stdin, stdout, stderr")
	}
	return &o, nil
}

// serveExec runs a command in a running container over the protocol the
// client asked for: WebSocket (v5/v4 channels) or SPDY.
func (s *server) serveExec(w http.ResponseWriter, r *http.Request) error {
	ns, pod, uid, name := r.PathValue("namespace"), r.PathValue("pod"), r.PathValue("uid"), r.PathValue("container")
	q := r.URL.Query()
	cmd := q["command"]
	if len(cmd) == 0 {
		return badRequest("you must specify at least one command for the container")
	}
	opts, err := execOptions(q)
	if err != nil {
		return err
	}
	attempts, err := s.containerAttempts(r.Context(), ns, pod, uid, name)
	if err != nil {
		return err
	}
	if len(attempts) == 0 {
		return notFound("container %q not found in pod %q", name, pod)
	}
	c := attempts[0]
	if c.State != runtime.StateRunning {
		return badRequest("container %q in pod %q is not running (%s)", name, pod, c.State)
	}
	s.log.Debug("exec", "pod", ns+"/"+pod, "container", name, "cmd", cmd, "websocket", wsstream.IsWebSocketRequest(r))
	ex := &executor{s: s, id: c.ID}
	if !httpstream.IsUpgradeRequest(r) {
		return badRequest("unable to upgrade: exec needs a WebSocket or SPDY upgrade request")
	}
	if wsstream.IsWebSocketRequest(r) {
		s.execWebSocket(w, r, ex, cmd, opts)
		return nil
	}
	remotecommand.ServeExec(w, r, ex, pod, c.PodUID, name, cmd, opts, s.idle, s.creation, remotecommand.SupportedStreamingProtocols)
	return nil
}

// executor runs exec sessions in one container; it satisfies cri-streaming's
// remotecommand.Executor.
type executor struct {
	s  *server
	id string
}

// ExecInContainer runs cmd. A non-zero exit becomes a utilexec.ExitError,
// which the protocol turns into kube's NonZeroExitCode status, so kubectl
// exits with the command's code.
func (e *executor) ExecInContainer(ctx context.Context, _, _, _ string, cmd []string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize, _ time.Duration) error {
	opts := runtime.ExecOptions{Cmd: cmd, TTY: tty}
	// Assign only non-nil streams: a nil io.WriteCloser in an io.Writer
	// field would be a non-nil interface holding nil.
	if in != nil {
		opts.Stdin = in
	}
	if out != nil {
		opts.Stdout = out
	}
	if errw != nil {
		opts.Stderr = errw
	}
	done := make(chan struct{})
	defer close(done)
	if resize != nil {
		sizes := make(chan runtime.TermSize)
		opts.Resize = sizes
		go func() {
			for sz := range resize {
				select {
				case sizes <- runtime.TermSize{Width: sz.Width, Height: sz.Height}:
				case <-done:
					return
				}
			}
		}()
	}
	code, err := e.s.rt.Exec(ctx, e.id, opts)
	if err != nil {
		return err
	}
	if code != 0 {
		return utilexec.CodeExitError{Err: fmt.Errorf("command terminated with exit code %d", code), Code: code}
	}
	return nil
}

// WebSocket channel numbers of the remotecommand protocols.
const (
	wsStdin = iota
	wsStdout
	wsStderr
	wsError
	wsResize
)

// execWebSocket serves exec over the v5.channel.k8s.io protocol kubectl
// speaks first (v5 adds the half-close kubectl uses to end stdin), and the
// v4 channels. cri-streaming's WebSocket path stops at v4, which is why
// this one is ours; its SPDY path serves everyone else.
func (s *server) execWebSocket(w http.ResponseWriter, r *http.Request, ex *executor, cmd []string, opts *remotecommand.Options) {
	channel := func(want bool, t wsstream.ChannelType) wsstream.ChannelType {
		if want {
			return t
		}
		return wsstream.IgnoreChannel
	}
	channels := []wsstream.ChannelType{
		wsStdin:  channel(opts.Stdin, wsstream.ReadChannel),
		wsStdout: channel(opts.Stdout, wsstream.WriteChannel),
		wsStderr: channel(opts.Stderr, wsstream.WriteChannel),
		wsError:  wsstream.WriteChannel,
		wsResize: channel(opts.TTY, wsstream.ReadChannel),
	}
	conn := wsstream.NewConn(map[string]wsstream.ChannelProtocolConfig{
		remotecommand.StreamProtocolV5Name:              {Binary: true, Channels: channels},
		remotecommand.StreamProtocolV4Name:              {Binary: true, Channels: channels},
		"v4." + wsstream.Base64ChannelWebSocketProtocol: {Binary: false, Channels: channels},
	})
	conn.SetIdleTimeout(s.idle)
	_, streams, err := conn.Open(w, r)
	if err != nil {
		// The handshake has answered the client (e.g. 403 for a protocol
		// we do not speak, which makes kubectl fall back to SPDY).
		s.log.Debug("exec websocket not opened", "err", err)
		return
	}
	defer conn.Close()
	// An empty frame on the first channel the client reads tells it the
	// session is up (as the kubelet does).
	switch {
	case opts.Stdout:
		_, _ = streams[wsStdout].Write(nil)
	case opts.Stderr:
		_, _ = streams[wsStderr].Write(nil)
	default:
		_, _ = streams[wsError].Write(nil)
	}
	var (
		in   io.Reader
		out  io.WriteCloser
		errw io.WriteCloser
	)
	if opts.Stdin {
		in = streams[wsStdin]
	}
	if opts.Stdout {
		out = streams[wsStdout]
	}
	if opts.Stderr {
		errw = streams[wsStderr]
	}
	var resize chan remotecommand.TerminalSize
	if opts.TTY {
		resize = make(chan remotecommand.TerminalSize)
		go readResizes(r.Context(), streams[wsResize], resize)
	}
	err = ex.ExecInContainer(r.Context(), "", "", "", cmd, in, out, errw, opts.TTY, resize, 0)
	body, _ := json.Marshal(execStatus(err))
	_, _ = streams[wsError].Write(body)
}

// readResizes decodes the resize channel's JSON sizes until it ends.
func readResizes(ctx context.Context, r io.Reader, ch chan<- remotecommand.TerminalSize) {
	defer close(ch)
	dec := json.NewDecoder(r)
	for {
		var sz remotecommand.TerminalSize
		if err := dec.Decode(&sz); err != nil {
			return
		}
		select {
		case ch <- sz:
		case <-ctx.Done():
			return
		}
	}
}

// execStatus is the v4/v5 error-channel message for an exec's outcome,
// as client-go's remotecommand reads it.
func execStatus(err error) *metav1.Status {
	st := &metav1.Status{Status: metav1.StatusSuccess}
	if err == nil {
		return st
	}
	st.Status = metav1.StatusFailure
	if ee, ok := err.(utilexec.ExitError); ok && ee.Exited() {
		st.Reason = remotecommand.NonZeroExitCodeReason
		st.Message = fmt.Sprintf("command terminated with non-zero exit code: %v", ee)
		st.Details = &metav1.StatusDetails{Causes: []metav1.StatusCause{{
			Type:    remotecommand.ExitCodeCauseType,
			Message: strconv.Itoa(ee.ExitStatus()),
		}}}
		return st
	}
	st.Reason = metav1.StatusReasonInternalError
	st.Code = http.StatusInternalServerError
	st.Message = fmt.Sprintf("Internal error occurred: error executing command in container: %v", err)
	return st
}
