package api_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	utilexec "k8s.io/client-go/util/exec"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	cmdutil "k8s.io/kubectl/pkg/cmd/util"

	"flotilla/agent/containerdproc"
	"flotilla/agent/runtime"
	"flotilla/agent/runtime/containerd"
	"flotilla/agent/server"
	"flotilla/api"
	"flotilla/api/apitest"
	"flotilla/testimages"
)

// newAgentNode registers a Node whose agent endpoint is 127.0.0.1:port
// (port 0: no endpoint yet).
func newAgentNode(t *testing.T, s *apitest.Server, name string, port int) {
	t.Helper()
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Status: corev1.NodeStatus{
			Addresses:       []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: "localhost"}, {Type: corev1.NodeInternalIP, Address: "127.0.0.1"}},
			DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: int32(port)}},
			Conditions:      []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}},
		},
	}
	if _, err := s.Client.CoreV1().Nodes().Create(ctxT(t), n, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create node %s: %v", name, err)
	}
}

// newBoundPod creates a pod bound to node with the named containers.
func newBoundPod(t *testing.T, s *apitest.Server, name, node string, containers ...string) *corev1.Pod {
	t.Helper()
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.PodSpec{NodeName: node}}
	for _, c := range containers {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: c, Image: "flotilla.test/toolbox:v1"})
	}
	out, err := s.Client.CoreV1().Pods("default").Create(ctxT(t), p, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s: %v", name, err)
	}
	return out
}

// closedPort is a loopback port nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}

// TestAgentProxyBadInput: everything the API answers before reaching an
// agent is a Status with kube's code and wording, never a hang.
func TestAgentProxyBadInput(t *testing.T) {
	s := apitest.NewServer(t)
	newAgentNode(t, s, "noport", 0)
	newAgentNode(t, s, "down", closedPort(t))
	newBoundPod(t, s, "unbound", "", "c")
	newBoundPod(t, s, "ghost", "nosuchnode", "c")
	newBoundPod(t, s, "noport", "noport", "c")
	newBoundPod(t, s, "two", "down", "a", "b")
	newBoundPod(t, s, "down", "down", "c")
	waiting := newBoundPod(t, s, "waiting", "down", "c")
	waiting.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "c", State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ErrImagePull"}}}}
	if _, err := s.Client.CoreV1().Pods("default").UpdateStatus(ctxT(t), waiting, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	const pods = "/api/v1/namespaces/default/pods/"
	cases := []struct {
		name, method, path string
		code               int
		reason             metav1.StatusReason
		msg                string
		field              string // a cause's field, for 422
	}{
		{"log of an unbound pod", "GET", pods + "unbound/log", 400, metav1.StatusReasonBadRequest, "pod unbound does not have a host assigned", ""},
		{"log of a missing pod", "GET", pods + "nope/log", 404, metav1.StatusReasonNotFound, `pods "nope" not found`, ""},
		{"node not registered", "GET", pods + "ghost/log", 503, metav1.StatusReasonServiceUnavailable, "no agent endpoint for node nosuchnode", ""},
		{"node without an agent port", "GET", pods + "noport/log", 503, metav1.StatusReasonServiceUnavailable, "no agent endpoint for node noport", ""},
		{"agent down", "GET", pods + "down/log", 503, metav1.StatusReasonServiceUnavailable, "error trying to reach the agent of node down", ""},
		{"exec with agent down", "POST", pods + "down/exec?command=true&stdout=true", 503, metav1.StatusReasonServiceUnavailable, "error trying to reach the agent of node down", ""},
		{"no container named, two in the pod", "GET", pods + "two/log", 400, metav1.StatusReasonBadRequest, "a container name must be specified for pod two, choose one of: [a b]", ""},
		{"unknown container", "GET", pods + "down/log?container=zz", 400, metav1.StatusReasonBadRequest, "container zz is not valid for pod down", ""},
		{"negative tailLines", "GET", pods + "down/log?tailLines=-1", 422, metav1.StatusReasonInvalid, "must be greater than or equal to 0", "tailLines"},
		{"zero limitBytes", "GET", pods + "down/log?limitBytes=0", 422, metav1.StatusReasonInvalid, "must be greater than 0", "limitBytes"},
		{"zero sinceSeconds", "GET", pods + "down/log?sinceSeconds=0", 422, metav1.StatusReasonInvalid, "must be greater than 0", "sinceSeconds"},
		{"both since", "GET", pods + "down/log?sinceSeconds=5&sinceTime=2024-01-01T00:00:00Z", 422, metav1.StatusReasonInvalid, "at most one of `sinceTime` or `sinceSeconds` may be specified", ""},
		{"one stream", "GET", pods + "down/log?stream=Stderr", 422, metav1.StatusReasonInvalid, "not supported by Flotilla", "stream"},
		{"tailLines not a number", "GET", pods + "down/log?tailLines=ten", 400, metav1.StatusReasonBadRequest, `tailLines: invalid value "ten"`, ""},
		{"follow not a boolean", "GET", pods + "down/log?follow=maybe", 400, metav1.StatusReasonBadRequest, `follow: invalid value "maybe"`, ""},
		{"bad sinceTime", "GET", pods + "down/log?sinceTime=yesterday", 400, metav1.StatusReasonBadRequest, "must be an RFC 3339 time", ""},
		{"container waiting", "GET", pods + "waiting/log", 400, metav1.StatusReasonBadRequest, `container "c" in pod "waiting" is waiting to start: ErrImagePull`, ""},
		{"log is read-only", "POST", pods + "down/log", 405, metav1.StatusReasonMethodNotAllowed, "", ""},
		{"exec without a command", "POST", pods + "down/exec?stdout=true", 400, metav1.StatusReasonBadRequest, "you must specify at least one command for the container", ""},
		{"exec without streams", "POST", pods + "down/exec?command=ls", 400, metav1.StatusReasonBadRequest, "you must specify at least 1 of stdin, stdout, stderr", ""},
		{"exec tty only", "POST", pods + "down/exec?command=ls&tty=true", 400, metav1.StatusReasonBadRequest, "you must specify at least 1 of stdin, stdout, stderr", ""},
		{"exec in two containers, none named", "POST", pods + "two/exec?command=ls&stdout=true", 400, metav1.StatusReasonBadRequest, "choose one of: [a b]", ""},
		{"exec bad boolean", "POST", pods + "down/exec?command=ls&stdin=yes%3F", 400, metav1.StatusReasonBadRequest, "stdin: invalid value", ""},
		{"exec by PUT", "PUT", pods + "down/exec?command=ls&stdout=true", 405, metav1.StatusReasonMethodNotAllowed, "", ""},
		{"exec of an unbound pod", "POST", pods + "unbound/exec?command=ls&stdout=true", 400, metav1.StatusReasonBadRequest, "does not have a host assigned", ""},
		{"attach", "POST", pods + "down/attach?stdout=true", 400, metav1.StatusReasonBadRequest, "pods/attach is not supported by Flotilla", ""},
		{"attach to a missing pod", "POST", pods + "nope/attach?stdout=true", 404, metav1.StatusReasonNotFound, "", ""},
		{"port-forward bad port", "POST", pods + "down/portforward?ports=0", 400, metav1.StatusReasonBadRequest, `invalid port "0"`, ""},
		{"port-forward port too large", "POST", pods + "down/portforward?ports=70000", 400, metav1.StatusReasonBadRequest, `invalid port "70000"`, ""},
		{"port-forward agent down", "POST", pods + "down/portforward?ports=80", 503, metav1.StatusReasonServiceUnavailable, "error trying to reach the agent of node down", ""},
		{"node proxy, no such node", "GET", "/api/v1/nodes/nope/proxy/images", 404, metav1.StatusReasonNotFound, `nodes "nope" not found`, ""},
		{"node proxy, no agent port", "GET", "/api/v1/nodes/noport/proxy/images", 503, metav1.StatusReasonServiceUnavailable, "no agent endpoint for node noport", ""},
		{"node proxy, agent down", "POST", "/api/v1/nodes/down/proxy/images", 503, metav1.StatusReasonServiceUnavailable, "error trying to reach the agent of node down", ""},
		{"node proxy by DELETE", "DELETE", "/api/v1/nodes/down/proxy/images", 405, metav1.StatusReasonMethodNotAllowed, "", ""},
		{"proxy is not a pod subresource", "GET", pods + "down/proxy/x", 404, metav1.StatusReasonNotFound, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := do(t, s, c.method, c.path, "", nil)
			if r.code != c.code || r.status.Reason != c.reason || !strings.Contains(r.status.Message, c.msg) {
				t.Fatalf("%s %s: got %d %s %q, want %d %s containing %q", c.method, c.path, r.code, r.status.Reason, r.status.Message, c.code, c.reason, c.msg)
			}
			if r.status.Kind != "Status" || r.status.Code != int32(c.code) {
				t.Fatalf("not a Status with the code: %s", r.body)
			}
			if c.field != "" {
				found := false
				for _, cause := range r.status.Details.Causes {
					found = found || cause.Field == c.field
				}
				if !found {
					t.Fatalf("no cause names %s: %s", c.field, r.body)
				}
			}
		})
	}
}

// TestAgentSubresourceDiscovery: kubectl finds the streaming subresources
// and nodes/proxy the way kube-apiserver lists them.
func TestAgentSubresourceDiscovery(t *testing.T) {
	s := apitest.NewServer(t)
	dc, err := discovery.NewDiscoveryClientForConfig(s.Config)
	if err != nil {
		t.Fatal(err)
	}
	list, err := dc.ServerResourcesForGroupVersion("v1")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		kind  string
		verbs string
	}{
		"pods/log":         {"Pod", "get"},
		"pods/exec":        {"PodExecOptions", "create,get"},
		"pods/attach":      {"PodAttachOptions", "create,get"},
		"pods/portforward": {"PodPortForwardOptions", "create,get"},
		"nodes/proxy":      {"NodeProxyOptions", "create,get,patch,update"},
	}
	for _, r := range list.APIResources {
		w, ok := want[r.Name]
		if !ok {
			continue
		}
		if r.Kind != w.kind || strings.Join(r.Verbs, ",") != w.verbs {
			t.Errorf("%s: kind %s verbs %v, want %s %s", r.Name, r.Kind, r.Verbs, w.kind, w.verbs)
		}
		delete(want, r.Name)
	}
	for name := range want {
		t.Errorf("%s not in discovery", name)
	}
}

// TestUnsupportedPodFeatures: a pod using something the agent does not run
// is refused with 422 and a cause naming the field, never half-run.
func TestUnsupportedPodFeatures(t *testing.T) {
	s := apitest.NewServer(t)
	yes, no := true, false
	bidi := corev1.MountPropagationBidirectional
	sig := corev1.SIGUSR1
	cases := []struct {
		name  string
		edit  func(*corev1.PodSpec)
		field string
	}{
		{"persistentVolumeClaim", func(p *corev1.PodSpec) {
			p.Volumes = []corev1.Volume{{Name: "v", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "x"}}}}
		}, "spec.volumes[0].persistentVolumeClaim"},
		{"nfs", func(p *corev1.PodSpec) {
			p.Volumes = []corev1.Volume{{Name: "v", VolumeSource: corev1.VolumeSource{NFS: &corev1.NFSVolumeSource{Server: "s", Path: "/"}}}}
		}, "spec.volumes[0].nfs"},
		{"ephemeral containers", func(p *corev1.PodSpec) {
			p.EphemeralContainers = []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "e", Image: "x"}}}
		}, "spec.ephemeralContainers"},
		{"grpc probe", func(p *corev1.PodSpec) {
			p.Containers[0].LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 9000}}}
		}, "spec.containers[0].livenessProbe.grpc"},
		{"httpGet hook", func(p *corev1.PodSpec) {
			p.Containers[0].Lifecycle = &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/"}}}
		}, "spec.containers[0].lifecycle.preStop.httpGet"},
		{"sleep hook", func(p *corev1.PodSpec) {
			p.Containers[0].Lifecycle = &corev1.Lifecycle{PostStart: &corev1.LifecycleHandler{Sleep: &corev1.SleepAction{Seconds: 1}}}
		}, "spec.containers[0].lifecycle.postStart.sleep"},
		{"hook without a handler", func(p *corev1.PodSpec) {
			p.Containers[0].Lifecycle = &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{}}
		}, "spec.containers[0].lifecycle.preStop"},
		{"stop signal", func(p *corev1.PodSpec) {
			p.Containers[0].Lifecycle = &corev1.Lifecycle{StopSignal: &sig}
		}, "spec.containers[0].lifecycle.stopSignal"},
		{"windows options", func(p *corev1.PodSpec) {
			p.SecurityContext = &corev1.PodSecurityContext{WindowsOptions: &corev1.WindowsSecurityContextOptions{}}
		}, "spec.securityContext.windowsOptions"},
		{"container windows options", func(p *corev1.PodSpec) {
			p.Containers[0].SecurityContext = &corev1.SecurityContext{WindowsOptions: &corev1.WindowsSecurityContextOptions{}}
		}, "spec.containers[0].securityContext.windowsOptions"},
		{"windows os", func(p *corev1.PodSpec) { p.OS = &corev1.PodOS{Name: corev1.Windows} }, "spec.os.name"},
		{"hostPID", func(p *corev1.PodSpec) { p.HostPID = true }, "spec.hostPID"},
		{"hostIPC", func(p *corev1.PodSpec) { p.HostIPC = true }, "spec.hostIPC"},
		{"shareProcessNamespace", func(p *corev1.PodSpec) { p.ShareProcessNamespace = &yes }, "spec.shareProcessNamespace"},
		{"user namespace", func(p *corev1.PodSpec) { p.HostUsers = &no }, "spec.hostUsers"},
		{"sysctls", func(p *corev1.PodSpec) {
			p.SecurityContext = &corev1.PodSecurityContext{Sysctls: []corev1.Sysctl{{Name: "net.core.somaxconn", Value: "1024"}}}
		}, "spec.securityContext.sysctls"},
		{"mount propagation", func(p *corev1.PodSpec) {
			p.Volumes = []corev1.Volume{{Name: "v", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
			p.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "v", MountPath: "/v", MountPropagation: &bidi}}
		}, "spec.containers[0].volumeMounts[0].mountPropagation"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := newPod("unsupported-"+strconv.Itoa(i), nil)
			c.edit(&p.Spec)
			r := do(t, s, "POST", "/api/v1/namespaces/default/pods", "application/json", p)
			if r.code != 422 {
				t.Fatalf("got %d, want 422: %s", r.code, r.body)
			}
			for _, cause := range r.status.Details.Causes {
				if cause.Field == c.field {
					return
				}
			}
			t.Fatalf("no cause names %s: %s", c.field, r.body)
		})
	}
	// What the agent does run is still accepted.
	ok := newPod("supported", nil)
	ok.Spec.Volumes = []corev1.Volume{
		{Name: "e", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		{Name: "p", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
			{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "cm"}}},
			{DownwardAPI: &corev1.DownwardAPIProjection{}},
		}}}},
	}
	ok.Spec.Containers[0].Lifecycle = &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}}
	ok.Spec.Containers[0].ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{}}}
	ok.Spec.OS = &corev1.PodOS{Name: corev1.Linux}
	if r := do(t, s, "POST", "/api/v1/namespaces/default/pods", "application/json", ok); r.code != 201 {
		t.Fatalf("supported pod: %d %s", r.code, r.body)
	}
}

// ---- End to end: the API, the real agent endpoint, a private containerd.

func TestMain(m *testing.M) {
	code := m.Run()
	testimages.Cleanup()
	os.Exit(code)
}

// agentEnv is an API with one Node, n1, whose agent endpoint is the real
// agent/server handler on loopback over the containerd runtime on a
// private containerd, with the toolbox image imported through the API's
// nodes/proxy as `flotilla image import` does. No pod workers run: tests
// start the containers of their pods on the runtime themselves, labelled
// as the agent would.
type agentEnv struct {
	t   *testing.T
	api *apitest.Server
	rt  runtime.Runtime
}

func newAgentEnv(t *testing.T) *agentEnv {
	t.Helper()
	proc := containerdproc.StartForTest(t) // skips without root or containerd
	archive := testimages.ForTest(t)
	ctx := ctxT(t)
	log := slog.New(slog.DiscardHandler)
	rt, err := containerd.New(ctx, containerd.Config{Address: proc.Address(), Namespace: "api" + strconv.Itoa(os.Getpid()), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	agent := httptest.NewServer(server.New(server.Config{Runtime: rt, Logger: log}))
	t.Cleanup(agent.Close)
	// A body limit below the archive's size: nodes/proxy must not apply it.
	s := apitest.NewServer(t, apitest.Options{API: func(c *api.Config) { c.MaxBodyBytes = 256 << 10 }})
	newAgentNode(t, s, "n1", agent.Listener.Addr().(*net.TCPAddr).Port)

	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	raw, err := s.Client.CoreV1().RESTClient().Post().AbsPath("/api/v1/nodes/n1/proxy/images").
		SetHeader("Content-Type", "application/x-tar").Body(io.Reader(f)).Do(ctx).Raw()
	if err != nil {
		t.Fatalf("import through nodes/proxy: %v", err)
	}
	var imported server.ImageList
	if err := json.Unmarshal(raw, &imported); err != nil || len(imported.Images) != 1 || imported.Images[0].Ref != testimages.ToolboxRef {
		t.Fatalf("import answered %s (%v)", raw, err)
	}
	return &agentEnv{t: t, api: s, rt: rt}
}

// run starts container name (attempt) of pod with the toolbox's args,
// sharing the node's network, and removes it when the test ends.
func (e *agentEnv) run(pod *corev1.Pod, name string, attempt int, args ...string) runtime.Container {
	e.t.Helper()
	return containerd.RunForTest(e.t, e.rt, runtime.ContainerSpec{
		PodUID: string(pod.UID), PodNamespace: pod.Namespace, PodName: pod.Name, Name: name, Attempt: attempt,
		Image: testimages.ToolboxRef, Args: args,
	})
}

func (e *agentEnv) state(id string) runtime.State {
	c, err := e.rt.ContainerStatus(context.Background(), id)
	if err != nil {
		return runtime.StateUnknown
	}
	return c.State
}

func (e *agentEnv) waitState(id string, want runtime.State) {
	e.t.Helper()
	waitFor(e.t, 30*time.Second, "container "+id+" "+string(want), func() bool { return e.state(id) == want })
}

// TestProxyLogs: pods/log through client-go and the embedded kubectl:
// current and previous attempts, tail, limit, timestamps, and a follow
// that streams while the container runs and ends when it exits.
func TestProxyLogs(t *testing.T) {
	e := newAgentEnv(t)
	ctx := ctxT(t)
	pods := e.api.Client.CoreV1().Pods("default")
	pod := newBoundPod(t, e.api, "logs", "n1", "c")
	// An interval keeps stdout's and stderr's lines in file order.
	old := e.run(pod, "c", 0, "log", "4", "--interval", "20ms")
	e.waitState(old.ID, runtime.StateExited)

	// Stream, as kubectl does: DoRaw would not decode the Status.
	_, err := pods.GetLogs("logs", &corev1.PodLogOptions{Previous: true}).Stream(ctx)
	if !apierrors.IsBadRequest(err) || !strings.Contains(err.Error(), `previous terminated container "c" in pod "logs" not found`) {
		t.Fatalf("previous of the first attempt: %v", err)
	}
	cur := e.run(pod, "c", 1, "log", "2", "--interval", "20ms")
	e.waitState(cur.ID, runtime.StateExited)

	i64 := func(n int64) *int64 { return &n }
	for _, tc := range []struct {
		name string
		opts corev1.PodLogOptions
		want string
	}{
		{"current", corev1.PodLogOptions{}, "line 0\nline 1\n"},
		{"named container", corev1.PodLogOptions{Container: "c"}, "line 0\nline 1\n"},
		{"previous", corev1.PodLogOptions{Previous: true}, "line 0\nline 1\nline 2\nline 3\n"},
		{"tail", corev1.PodLogOptions{Previous: true, TailLines: i64(2)}, "line 2\nline 3\n"},
		{"limit", corev1.PodLogOptions{LimitBytes: i64(8)}, "line 0\nl"},
		{"since an hour", corev1.PodLogOptions{SinceSeconds: i64(3600)}, "line 0\nline 1\n"},
		{"follow of an exited container", corev1.PodLogOptions{Follow: true}, "line 0\nline 1\n"},
	} {
		got, err := pods.GetLogs("logs", &tc.opts).DoRaw(ctx)
		if err != nil || string(got) != tc.want {
			t.Errorf("%s: %q %v, want %q", tc.name, got, err, tc.want)
		}
	}
	got, err := pods.GetLogs("logs", &corev1.PodLogOptions{Timestamps: true}).DoRaw(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSuffix(string(got), "\n"), "\n") {
		ts, rest, _ := strings.Cut(line, " ")
		if _, err := time.Parse(time.RFC3339Nano, ts); err != nil || !strings.HasPrefix(rest, "line ") {
			t.Errorf("timestamps: bad line %q", line)
		}
	}

	// A follow streams lines while the container runs and ends at its exit.
	fpod := newBoundPod(t, e.api, "follow", "n1", "c")
	fc := e.run(fpod, "c", 0, "log", "20", "--interval", "100ms")
	stream, err := pods.GetLogs("follow", &corev1.PodLogOptions{Follow: true}).Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	sc := bufio.NewScanner(stream)
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) == 1 && e.state(fc.ID) != runtime.StateRunning {
			t.Errorf("the first line came only after the container exited: not streamed")
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("follow: %v", err)
	}
	if len(lines) != 20 || lines[19] != "line 19" {
		t.Fatalf("follow read %d lines: %q", len(lines), lines)
	}
	if st := e.state(fc.ID); st != runtime.StateExited {
		t.Fatalf("follow ended while the container is %s", st)
	}

	out, errOut, code := kubectl(t, e.api, "logs", "logs", "--tail=1")
	if code != 0 || out != "line 1\n" {
		t.Fatalf("kubectl logs: %d %q %q", code, out, errOut)
	}
	_, errOut, code = kubectl(t, e.api, "logs", "logs", "-c", "nope")
	if code == 0 || !strings.Contains(errOut, "container nope is not valid for pod logs") {
		t.Fatalf("kubectl logs -c nope: %d %q", code, errOut)
	}
}

// execURL is the pods/exec URL client-go and kubectl build.
func execURL(s *apitest.Server, pod string, o *corev1.PodExecOptions) *url.URL {
	return s.Client.CoreV1().RESTClient().Post().Resource("pods").Namespace("default").Name(pod).
		SubResource("exec").VersionedParams(o, scheme.ParameterCodec).URL()
}

// TestProxyExec: pods/exec through the API's upgrade proxy with client-go's
// WebSocket (v5) and SPDY executors, and the embedded kubectl's exit code.
func TestProxyExec(t *testing.T) {
	e := newAgentEnv(t)
	pod := newBoundPod(t, e.api, "shell", "n1", "c", "later")
	c := e.run(pod, "c", 0, "sleep", "infinity")
	e.waitState(c.ID, runtime.StateRunning)

	executors := map[string]func(*url.URL) (remotecommand.Executor, error){
		"websocket": func(u *url.URL) (remotecommand.Executor, error) {
			return remotecommand.NewWebSocketExecutor(e.api.Config, "GET", u.String())
		},
		"spdy": func(u *url.URL) (remotecommand.Executor, error) {
			return remotecommand.NewSPDYExecutor(e.api.Config, "POST", u)
		},
	}
	for proto, newExec := range executors {
		t.Run(proto, func(t *testing.T) {
			exec := func(container, stdin string, cmd ...string) (string, string, error) {
				o := &corev1.PodExecOptions{Container: container, Command: append([]string{"/toolbox"}, cmd...), Stdout: true, Stderr: true, Stdin: stdin != ""}
				ex, err := newExec(execURL(e.api, "shell", o))
				if err != nil {
					t.Fatal(err)
				}
				var out, errOut bytes.Buffer
				opts := remotecommand.StreamOptions{Stdout: &out, Stderr: &errOut}
				if stdin != "" {
					opts.Stdin = strings.NewReader(stdin)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				err = ex.StreamWithContext(ctx, opts)
				return out.String(), errOut.String(), err
			}
			if out, _, err := exec("c", "", "echo", "hello"); err != nil || out != "hello\n" {
				t.Errorf("echo: %q %v", out, err)
			}
			if out, errOut, err := exec("c", "", "log", "2", "--interval", "20ms"); err != nil || out != "line 0\n" || errOut != "line 1\n" {
				t.Errorf("stdout and stderr: %q %q %v", out, errOut, err)
			}
			if out, _, err := exec("c", "from stdin\n", "cat"); err != nil || out != "from stdin\n" {
				t.Errorf("stdin: %q %v", out, err)
			}
			_, _, err := exec("c", "", "exit", "3")
			if ee, ok := err.(utilexec.ExitError); !ok || ee.ExitStatus() != 3 {
				t.Errorf("exit 3: got %T %v", err, err)
			}
			if _, _, err := exec("c", "", "no-such-subcommand"); err == nil {
				t.Errorf("a failing command: no error")
			}
			// "later" is in the spec but was never started.
			if _, _, err := exec("later", "", "echo"); err == nil || !strings.Contains(err.Error(), `container "later" not found in pod "shell"`) {
				t.Errorf("exec in a container not created: %v", err)
			}
		})
	}

	out, errOut, code := kubectl(t, e.api, "exec", "shell", "-c", "c", "--", "/toolbox", "echo", "from kubectl")
	if code != 0 || out != "from kubectl\n" {
		t.Fatalf("kubectl exec: %d %q %q", code, out, errOut)
	}
	_, errOut, code = kubectl(t, e.api, "exec", "shell", "-c", "c", "--", "/toolbox", "exit", "7")
	if code != 7 {
		t.Fatalf("kubectl exec of exit 7: code %d, stderr %q", code, errOut)
	}
}

// freePort is a loopback port free a moment ago.
func freePort(t *testing.T) int { return closedPort(t) }

// TestProxyPortForward: pods/portforward through client-go's dialers:
// SPDY tunnelled in a WebSocket (kubectl's first choice), plain SPDY, and
// kubectl's fallback between them, each carrying several connections.
func TestProxyPortForward(t *testing.T) {
	e := newAgentEnv(t)
	pod := newBoundPod(t, e.api, "web", "n1", "c")
	port := freePort(t)
	c := e.run(pod, "c", 0, "serve", "--port", strconv.Itoa(port))
	e.waitState(c.ID, runtime.StateRunning)
	direct := &http.Client{Timeout: 2 * time.Second}
	waitFor(t, 30*time.Second, "the server in the container", func() bool {
		resp, err := direct.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})

	u := e.api.Client.CoreV1().RESTClient().Post().Resource("pods").Namespace("default").Name("web").SubResource("portforward").URL()
	spdyDialer := func() httpstream.Dialer {
		rt, up, err := spdy.RoundTripperFor(e.api.Config)
		if err != nil {
			t.Fatal(err)
		}
		return spdy.NewDialer(up, &http.Client{Transport: rt}, "POST", u)
	}
	tunnelDialer := func() httpstream.Dialer {
		d, err := portforward.NewSPDYOverWebsocketDialer(u, e.api.Config)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	dialers := map[string]func() httpstream.Dialer{
		"websocket-tunnel": tunnelDialer,
		"spdy":             spdyDialer,
		"fallback": func() httpstream.Dialer {
			return portforward.NewFallbackDialer(tunnelDialer(), spdyDialer(), func(err error) bool {
				return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
			})
		},
	}
	for name, dialer := range dialers {
		t.Run(name, func(t *testing.T) {
			closed := closedPort(t)
			local := forwardPorts(t, dialer(), port, closed)
			client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			for i := 0; i < 3; i++ { // a new connection, so a new stream pair, each time
				resp, err := client.Get("http://127.0.0.1:" + strconv.Itoa(local[0]) + "/healthz")
				if err != nil {
					t.Fatalf("GET %d through the forward: %v", i, err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(body) != "ok" {
					t.Fatalf("GET %d: %q", i, body)
				}
			}
			// Nothing listens on the second port in the pod: the connection
			// fails, promptly.
			if resp, err := client.Get("http://127.0.0.1:" + strconv.Itoa(local[1]) + "/"); err == nil {
				resp.Body.Close()
				t.Fatalf("forward to a closed port answered %s", resp.Status)
			}
		})
	}

	// A port-forward to a pod whose node has no agent is a clear error.
	newBoundPod(t, e.api, "orphan", "nosuchnode", "c")
	ou := e.api.Client.CoreV1().RESTClient().Post().Resource("pods").Namespace("default").Name("orphan").SubResource("portforward").URL()
	rt, up, err := spdy.RoundTripperFor(e.api.Config)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := spdy.NewDialer(up, &http.Client{Transport: rt}, "POST", ou).Dial(portforward.PortForwardProtocolV1Name); err == nil || !strings.Contains(err.Error(), "no agent endpoint for node nosuchnode") {
		t.Fatalf("port-forward to an orphan: %v", err)
	}
}

// forwardPorts forwards local ports on 127.0.0.1 to the pod's ports until
// the test ends, and returns the local ports in order.
func forwardPorts(t *testing.T, d httpstream.Dialer, ports ...int) []int {
	t.Helper()
	var specs []string
	for _, p := range ports {
		specs = append(specs, "0:"+strconv.Itoa(p))
	}
	stop, ready := make(chan struct{}), make(chan struct{})
	fw, err := portforward.NewOnAddresses(d, []string{"127.0.0.1"}, specs, stop, ready, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- fw.ForwardPorts() }()
	t.Cleanup(func() {
		close(stop)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Errorf("port-forward did not stop")
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("port-forward: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("port-forward not ready after 30s")
	}
	fps, err := fw.GetPorts()
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, fp := range fps {
		out = append(out, int(fp.Local))
	}
	return out
}

// TestProxyImages: nodes/proxy lists the node's images, and a bad archive
// is the agent's 400, passed on.
func TestProxyImages(t *testing.T) {
	e := newAgentEnv(t)
	ctx := ctxT(t)
	rc := e.api.Client.CoreV1().RESTClient()
	raw, err := rc.Get().AbsPath("/api/v1/nodes/n1/proxy/images").Do(ctx).Raw()
	if err != nil {
		t.Fatal(err)
	}
	var list server.ImageList
	if err := json.Unmarshal(raw, &list); err != nil || len(list.Images) != 1 || list.Images[0].Ref != testimages.ToolboxRef || list.Images[0].Size <= 0 {
		t.Fatalf("images: %s (%v)", raw, err)
	}
	err = rc.Post().AbsPath("/api/v1/nodes/n1/proxy/images").Body([]byte("not an archive")).Do(ctx).Error()
	if !apierrors.IsBadRequest(err) || !strings.Contains(err.Error(), "import image") {
		t.Fatalf("bad archive: %v", err)
	}
	if err := rc.Get().AbsPath("/api/v1/nodes/n1/proxy/nope").Do(ctx).Error(); !apierrors.IsNotFound(err) {
		t.Fatalf("unknown agent path: %v", err)
	}
}

// kubectl runs the embedded kubectl in this process against s and returns
// its stdout, stderr and exit code (kubectl's fatal exits are caught).
func kubectl(t *testing.T, s *apitest.Server, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	dir := t.TempDir()
	kc := filepath.Join(dir, "kubeconfig")
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["t"] = &clientcmdapi.Cluster{Server: s.URL}
	cfg.AuthInfos["t"] = &clientcmdapi.AuthInfo{}
	cfg.Contexts["t"] = &clientcmdapi.Context{Cluster: "t", AuthInfo: "t", Namespace: "default"}
	cfg.CurrentContext = "t"
	if err := clientcmd.WriteToFile(*cfg, kc); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	streams := genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}
	full := append([]string{"--kubeconfig", kc, "--cache-dir", filepath.Join(dir, "cache")}, args...)
	cmd := kubectlcmd.NewKubectlCommand(kubectlcmd.KubectlOptions{
		Arguments:   append([]string{"kubectl"}, full...),
		ConfigFlags: genericclioptions.NewConfigFlags(true),
		IOStreams:   streams,
	})
	cmd.SetArgs(full)
	type fatal struct{ code int }
	cmdutil.BehaviorOnFatal(func(msg string, c int) {
		if msg != "" {
			errOut.WriteString(msg)
		}
		panic(fatal{c})
	})
	defer cmdutil.DefaultBehaviorOnFatal()
	func() {
		defer func() {
			if v := recover(); v != nil {
				f, ok := v.(fatal)
				if !ok {
					panic(v)
				}
				code = f.code
			}
		}()
		if err := cmd.Execute(); err != nil {
			errOut.WriteString(err.Error())
			code = 1
		}
	}()
	return out.String(), errOut.String(), code
}
