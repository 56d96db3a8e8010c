package api

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// The far end of pods/log, pods/exec, pods/portforward and nodes/proxy is
// the agent endpoint of the pod's node (package agent/server), on the
// kubelet's paths. The API validates and defaults the options as
// kube-apiserver does, then proxies: logs as a flushed stream, the rest
// through an upgrade-aware reverse proxy (the agent itself speaks
// WebSocket v5 and SPDY-over-WebSocket, so nothing is translated here).

// newAgentTransport carries API → agent traffic, never through an HTTP
// proxy from the environment (agents are on the cluster network). With
// tlsConfig (the server's client certificate, the cluster CA) it speaks
// HTTPS, as the agent endpoint requires; HTTP/2 stays off because exec and
// port-forward upgrade the connection.
func newAgentTransport(tlsConfig *tls.Config) *http.Transport {
	return &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     tlsConfig,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 8,
		IdleConnTimeout:     90 * time.Second,
		// No ResponseHeaderTimeout: a log follow of a quiet container and an
		// image import legitimately take long before answering.
	}
}

// nodeProxyPath matches /api/v1/nodes/{name}/proxy[/...].
var nodeProxyPath = regexp.MustCompile(`^/api/v1/nodes/[^/]+/proxy(/|$)`)

// isAgentProxy: nodes/proxy requests stream bodies of any size (image
// archives) for as long as they take, so neither the body limit nor the
// request timeout applies, as in kube-apiserver.
func isAgentProxy(r *http.Request) bool { return nodeProxyPath.MatchString(r.URL.Path) }

// agentURL is the base URL of a node's agent endpoint: its first address
// of InternalIP, ExternalIP, Hostname (kube-apiserver's preference) and
// status.daemonEndpoints.kubeletEndpoint.port. A node that is not
// registered or has no endpoint yet is a 503 that names it.
func (s *Server) agentURL(node string) (*url.URL, error) {
	obj, _, err := s.getCurrent(s.reg.lookup("", "v1", "nodes"), "", node)
	if apierrors.IsNotFound(err) {
		return nil, statusError503(fmt.Sprintf("no agent endpoint for node %s", node))
	}
	if err != nil {
		return nil, err
	}
	n := obj.(*corev1.Node)
	port := n.Status.DaemonEndpoints.KubeletEndpoint.Port
	if port <= 0 || port > 65535 {
		return nil, statusError503(fmt.Sprintf("no agent endpoint for node %s", node))
	}
	for _, t := range []corev1.NodeAddressType{corev1.NodeInternalIP, corev1.NodeExternalIP, corev1.NodeHostName} {
		for _, a := range n.Status.Addresses {
			if a.Type == t && a.Address != "" {
				return &url.URL{Scheme: s.agentScheme, Host: net.JoinHostPort(a.Address, strconv.Itoa(int(port))), Path: "/"}, nil
			}
		}
	}
	return nil, statusError503(fmt.Sprintf("no agent endpoint for node %s: the node reports no address", node))
}

// agentUnreachable is the answer when the agent cannot be reached.
func agentUnreachable(node string, err error) error {
	return statusError503(fmt.Sprintf("error trying to reach the agent of node %s: %v", node, err))
}

// containerFor resolves the container option as kube-apiserver does: the
// only container when there is one, else the caller must choose.
func containerFor(pod *corev1.Pod, container string) (string, error) {
	if container == "" {
		switch len(pod.Spec.Containers) {
		case 1:
			return pod.Spec.Containers[0].Name, nil
		case 0:
			return "", badRequest("pod %s does not have a container", pod.Name)
		}
		var names []string
		for _, c := range pod.Spec.InitContainers {
			names = append(names, c.Name)
		}
		for _, c := range pod.Spec.Containers {
			names = append(names, c.Name)
		}
		return "", badRequest("a container name must be specified for pod %s, choose one of: %s", pod.Name, names)
	}
	for _, c := range pod.Spec.InitContainers {
		if c.Name == container {
			return container, nil
		}
	}
	for _, c := range pod.Spec.Containers {
		if c.Name == container {
			return container, nil
		}
	}
	return "", badRequest("container %s is not valid for pod %s", container, pod.Name)
}

// queryBool reads a boolean query parameter; absent is false.
func queryBool(q url.Values, name string) (bool, error) {
	v := q.Get(name)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, badRequest("%s: invalid value %q: must be a boolean", name, v)
	}
	return b, nil
}

// queryInt reads an integer query parameter; absent is nil.
func queryInt(q url.Values, name string) (*int64, error) {
	v := q.Get(name)
	if v == "" {
		return nil, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return nil, badRequest("%s: invalid value %q: must be an integer", name, v)
	}
	return &n, nil
}

// podLogOptions decodes and validates the pods/log query as
// kube-apiserver's PodLogOptions (a bad value 400, an invalid one 422).
func podLogOptions(q url.Values, pod string) (*corev1.PodLogOptions, error) {
	o := &corev1.PodLogOptions{Container: q.Get("container")}
	var err error
	if o.Follow, err = queryBool(q, "follow"); err != nil {
		return nil, err
	}
	if o.Previous, err = queryBool(q, "previous"); err != nil {
		return nil, err
	}
	if o.Timestamps, err = queryBool(q, "timestamps"); err != nil {
		return nil, err
	}
	if o.InsecureSkipTLSVerifyBackend, err = queryBool(q, "insecureSkipTLSVerifyBackend"); err != nil {
		return nil, err
	}
	if o.TailLines, err = queryInt(q, "tailLines"); err != nil {
		return nil, err
	}
	if o.LimitBytes, err = queryInt(q, "limitBytes"); err != nil {
		return nil, err
	}
	if o.SinceSeconds, err = queryInt(q, "sinceSeconds"); err != nil {
		return nil, err
	}
	if v := q.Get("sinceTime"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return nil, badRequest("sinceTime: invalid value %q: must be an RFC 3339 time", v)
		}
		mt := metav1.NewTime(t)
		o.SinceTime = &mt
	}
	if v := q.Get("stream"); v != "" {
		o.Stream = &v
	}
	var errs field.ErrorList
	if o.TailLines != nil && *o.TailLines < 0 {
		errs = append(errs, field.Invalid(field.NewPath("tailLines"), *o.TailLines, "must be greater than or equal to 0"))
	}
	if o.LimitBytes != nil && *o.LimitBytes < 1 {
		errs = append(errs, field.Invalid(field.NewPath("limitBytes"), *o.LimitBytes, "must be greater than 0"))
	}
	switch {
	case o.SinceSeconds != nil && o.SinceTime != nil:
		errs = append(errs, field.Forbidden(field.NewPath(""), "at most one of `sinceTime` or `sinceSeconds` may be specified"))
	case o.SinceSeconds != nil && *o.SinceSeconds < 1:
		errs = append(errs, field.Invalid(field.NewPath("sinceSeconds"), *o.SinceSeconds, "must be greater than 0"))
	}
	if o.Stream != nil {
		switch *o.Stream {
		case corev1.LogStreamAll:
		case corev1.LogStreamStdout, corev1.LogStreamStderr:
			// The log files interleave both streams and the reader does not
			// split them yet.
			errs = append(errs, unsupported(field.NewPath("stream"), "selecting one log stream"))
		default:
			errs = append(errs, field.NotSupported(field.NewPath("stream"), *o.Stream, []string{corev1.LogStreamStdout, corev1.LogStreamStderr, corev1.LogStreamAll}))
		}
	}
	if len(errs) > 0 {
		return nil, apierrors.NewInvalid(schema.GroupKind{Kind: "PodLogOptions"}, pod, errs)
	}
	return o, nil
}

// agentLogQuery is the kubelet's query for the options.
func agentLogQuery(o *corev1.PodLogOptions) url.Values {
	v := url.Values{}
	if o.Follow {
		v.Set("follow", "true")
	}
	if o.Previous {
		v.Set("previous", "true")
	}
	if o.Timestamps {
		v.Set("timestamps", "true")
	}
	if o.TailLines != nil {
		v.Set("tailLines", strconv.FormatInt(*o.TailLines, 10))
	}
	if o.LimitBytes != nil {
		v.Set("limitBytes", strconv.FormatInt(*o.LimitBytes, 10))
	}
	if o.SinceSeconds != nil {
		v.Set("sinceSeconds", strconv.FormatInt(*o.SinceSeconds, 10))
	}
	if o.SinceTime != nil {
		v.Set("sinceTime", o.SinceTime.UTC().Format(time.RFC3339))
	}
	return v
}

// waitingToStart is the kubelet's answer for the logs of a container that
// has not run yet, read from the pod's status so its reason
// (ContainerCreating, ErrImagePull, ...) shows.
func waitingToStart(pod *corev1.Pod, container string) error {
	for _, list := range [][]corev1.ContainerStatus{pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses} {
		for _, cs := range list {
			if cs.Name != container {
				continue
			}
			if w := cs.State.Waiting; w != nil && cs.LastTerminationState.Terminated == nil && cs.RestartCount == 0 {
				return badRequest("container %q in pod %q is waiting to start: %s", container, pod.Name, w.Reason)
			}
			return nil
		}
	}
	return nil
}

// proxyLog streams a container's log from the agent, flushing as it comes
// so `kubectl logs -f` sees lines at once.
func (q *request) proxyLog(pod *corev1.Pod) error {
	opts, err := podLogOptions(q.query, q.name)
	if err != nil {
		return err
	}
	container, err := containerFor(pod, opts.Container)
	if err != nil {
		return err
	}
	if !opts.Previous {
		if err := waitingToStart(pod, container); err != nil {
			return err
		}
	}
	base, err := q.s.agentURL(pod.Spec.NodeName)
	if err != nil {
		return err
	}
	u := base.JoinPath("containerLogs", pod.Namespace, pod.Name, container)
	u.RawQuery = agentLogQuery(opts).Encode()
	req, err := http.NewRequestWithContext(q.ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}
	resp, err := q.s.agentTransport.RoundTrip(req)
	if err != nil {
		return agentUnreachable(pod.Spec.NodeName, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return agentError(resp, "pods/log")
	}
	q.w.Header().Set("Content-Type", "text/plain")
	q.w.Header().Set("X-Content-Type-Options", "nosniff")
	q.w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(q.w)
	_ = rc.Flush()
	buf := make([]byte, 32<<10)
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if _, err := q.w.Write(buf[:n]); err != nil {
				return nil // the client went away
			}
			_ = rc.Flush()
		}
		if rerr != nil {
			// EOF, or the agent went away mid-stream: the status line is
			// sent, so the client sees the body end.
			return nil
		}
	}
}

// agentError turns an agent's error answer into the Status the client
// sees: the agent's own Status when it sent one, else one made from its
// code and text (as kube-apiserver's response checker does).
func agentError(resp *http.Response, what string) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var st metav1.Status
	if json.Unmarshal(body, &st) == nil && st.Kind == "Status" && st.Code != 0 {
		st.Status = metav1.StatusFailure
		return errStatus(&st)
	}
	msg := strings.TrimSpace(string(body))
	if msg == "" {
		msg = resp.Status
	}
	return apierrors.NewGenericServerResponse(resp.StatusCode, "get", schema.GroupResource{Resource: what}, "", msg, 0, false)
}

// proxyExec validates an exec as kube-apiserver does and proxies it to the
// agent's /exec/{namespace}/{pod}/{uid}/{container}.
func (q *request) proxyExec(pod *corev1.Pod) error {
	container, err := containerFor(pod, q.query.Get("container"))
	if err != nil {
		return err
	}
	// kube-apiserver resolves the node before the kubelet looks at the
	// command and streams; the same order gives the same answers.
	base, err := q.s.agentURL(pod.Spec.NodeName)
	if err != nil {
		return err
	}
	cmd := q.query["command"]
	if len(cmd) == 0 {
		return badRequest("you must specify at least one command for the container")
	}
	params := url.Values{"command": cmd}
	streams := false
	for _, p := range []struct{ name, agent string }{{"stdin", "input"}, {"stdout", "output"}, {"stderr", "error"}, {"tty", "tty"}} {
		b, err := queryBool(q.query, p.name)
		if err != nil {
			return err
		}
		if b {
			params.Set(p.agent, "1")
			streams = streams || p.name != "tty"
		}
	}
	if !streams {
		return badRequest("you must specify at least 1 of stdin, stdout, stderr")
	}
	u := base.JoinPath("exec", pod.Namespace, pod.Name, string(pod.UID), container)
	u.RawQuery = params.Encode()
	q.s.proxyTo(q.w, q.r, u, pod.Spec.NodeName)
	return nil
}

// proxyPortForward proxies to the agent's /portForward/{namespace}/{pod}/{uid};
// the ports travel as kube-apiserver sends them ("port", for the
// WebSocket v4 channels; SPDY names them per stream).
func (q *request) proxyPortForward(pod *corev1.Pod) error {
	params := url.Values{}
	for _, name := range []string{"ports", "port"} {
		for _, v := range q.query[name] {
			for _, p := range strings.Split(v, ",") {
				n, err := strconv.ParseUint(strings.TrimSpace(p), 10, 16)
				if err != nil || n == 0 {
					return badRequest("%s: invalid port %q: must be between 1 and 65535", name, p)
				}
				params.Add("port", strconv.FormatUint(n, 10))
			}
		}
	}
	base, err := q.s.agentURL(pod.Spec.NodeName)
	if err != nil {
		return err
	}
	u := base.JoinPath("portForward", pod.Namespace, pod.Name, string(pod.UID))
	u.RawQuery = params.Encode()
	q.s.proxyTo(q.w, q.r, u, pod.Spec.NodeName)
	return nil
}

// serveNodeProxy proxies /api/v1/nodes/{name}/proxy/{path} to {path} on
// the node's agent, query and body included (`flotilla image` uses it).
func (q *request) serveNodeProxy() error {
	// A node that does not exist is a 404 here (the resource is named in
	// the path); agentURL's 503 is for a pod's node.
	if _, _, err := q.s.getFresh(q.ctx, q.res, "", q.name); err != nil {
		return err
	}
	base, err := q.s.agentURL(q.name)
	if err != nil {
		return err
	}
	u := base.JoinPath(q.subPath)
	u.RawQuery = q.r.URL.RawQuery
	q.s.proxyTo(q.w, q.r, u, q.name)
	return nil
}

// proxyTo forwards the request to target, upgrades (WebSocket, SPDY)
// included, flushing the answer as it comes.
func (s *Server) proxyTo(w http.ResponseWriter, r *http.Request, target *url.URL, node string) {
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL = target
			pr.Out.Host = target.Host
			// The client's credentials are for the API, not for the agent.
			pr.Out.Header.Del("Authorization")
			pr.Out.Header.Del("Cookie")
		},
		Transport:     s.agentTransport,
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if r.Context().Err() != nil || errors.Is(err, http.ErrAbortHandler) {
				return // the client is gone; nobody to answer
			}
			s.writeError(w, r, agentUnreachable(node, err))
		},
	}
	rp.ServeHTTP(w, r)
}

// attachNotSupported: the runtime keeps no container's stdin open for a
// later client, so there is nothing to attach to.
func attachNotSupported() error {
	return apierrors.NewBadRequest("pods/attach is not supported by Flotilla: containers' stdin and tty are not kept open for a later client; use exec")
}
