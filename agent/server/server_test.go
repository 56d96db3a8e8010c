package server_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/client-go/util/exec"

	"flotilla/agent/containerdproc"
	"flotilla/agent/runtime"
	"flotilla/agent/runtime/containerd"
	"flotilla/agent/server"
	"flotilla/testimages"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testimages.Cleanup()
	os.Exit(code)
}

// env is a private containerd, the containerd runtime on it with the
// toolbox imported, and the agent endpoint on loopback.
type env struct {
	t   *testing.T
	rt  runtime.Runtime
	url string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	proc := containerdproc.StartForTest(t) // skips without root or containerd
	archive := testimages.ForTest(t)
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	rt, err := containerd.New(ctx, containerd.Config{Address: proc.Address(), Namespace: "t" + randHex(6), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := rt.ImportImage(ctx, f); err != nil {
		t.Fatalf("import toolbox: %v", err)
	}
	srv := httptest.NewServer(server.New(server.Config{Runtime: rt, Logger: log}))
	t.Cleanup(srv.Close)
	return &env{t: t, rt: rt, url: srv.URL}
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// run starts a toolbox container of pod default/<pod> (host network) and
// removes it when the test ends.
func (e *env) run(pod, uid, name string, attempt int, args ...string) runtime.Container {
	e.t.Helper()
	return containerd.RunForTest(e.t, e.rt, runtime.ContainerSpec{
		PodUID: uid, PodNamespace: "default", PodName: pod, Name: name, Attempt: attempt,
		Image: testimages.ToolboxRef, Args: args,
	})
}

// waitState polls until container id is in state want.
func (e *env) waitState(id string, want runtime.State) {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := e.rt.ContainerStatus(context.Background(), id)
		if err == nil && c.State == want {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("container %s: want %s, have %+v (%v)", id, want, c, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type answer struct {
	code   int
	body   string
	status metav1.Status
}

func (e *env) do(method, path string, body io.Reader, header ...string) answer {
	e.t.Helper()
	req, err := http.NewRequest(method, e.url+path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	a := answer{code: resp.StatusCode, body: string(b)}
	if resp.StatusCode >= 300 {
		if err := json.Unmarshal(b, &a.status); err != nil || a.status.Kind != "Status" {
			e.t.Fatalf("%s %s: %d answer is not a Status: %s", method, path, resp.StatusCode, b)
		}
	}
	return a
}

// TestBadInput: every malformed or impossible request is a Status with a
// 4xx code and the kubelet's wording, never a panic or a hang.
func TestBadInput(t *testing.T) {
	e := newEnv(t)
	c := e.run("p", "uid-p", "c", 0, "log", "1")
	e.waitState(c.ID, runtime.StateExited)
	r := e.run("q", "uid-q", "r", 0, "sleep", "infinity")
	e.waitState(r.ID, runtime.StateRunning)
	cases := []struct {
		name, method, path string
		code               int
		msg                string
	}{
		{"unknown path", "GET", "/nope", 404, "not served"},
		{"wrong method", "DELETE", "/images", 405, "not allowed"},
		{"logs of an unknown pod", "GET", "/containerLogs/default/ghost/c", 404, `pod "default/ghost" does not exist`},
		{"logs of an unknown container", "GET", "/containerLogs/default/p/zz", 400, `container "zz" in pod "p" is waiting to start`},
		{"no previous", "GET", "/containerLogs/default/p/c?previous=true", 400, `previous terminated container "c" in pod "p" not found`},
		{"bad tailLines", "GET", "/containerLogs/default/p/c?tailLines=-2", 400, "tailLines"},
		{"bad limitBytes", "GET", "/containerLogs/default/p/c?limitBytes=0", 400, "limitBytes"},
		{"bad follow", "GET", "/containerLogs/default/p/c?follow=sometimes", 400, "follow"},
		{"bad sinceTime", "GET", "/containerLogs/default/p/c?sinceTime=noon", 400, "sinceTime"},
		{"both since", "GET", "/containerLogs/default/p/c?sinceSeconds=1&sinceTime=2024-01-01T00:00:00Z", 400, "at most one"},
		{"exec without command", "POST", "/exec/default/p/c?output=1", 400, "at least one command"},
		{"exec without streams", "POST", "/exec/default/p/c?command=ls", 400, "at least 1 of stdin, stdout, stderr"},
		{"exec bad flag", "POST", "/exec/default/p/c?command=ls&output=often", 400, "output"},
		{"exec unknown container", "POST", "/exec/default/p/zz?command=ls&output=1", 404, `container "zz" not found in pod "p"`},
		{"exec wrong uid", "POST", "/exec/default/p/other-uid/c?command=ls&output=1", 404, "does not exist"},
		{"exec in an exited container", "POST", "/exec/default/p/c?command=ls&output=1", 400, "is not running"},
		{"port-forward unknown pod", "POST", "/portForward/default/ghost", 404, "does not exist"},
		{"port-forward without upgrade", "GET", "/portForward/default/p", 400, "unable to upgrade"},
		{"exec without upgrade", "POST", "/exec/default/q/r?command=ls&output=1", 400, "unable to upgrade"},
		{"port-forward websocket without a port", "GET", "/portForward/default/q", 400, "query parameter \"port\" is required"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var h []string
			if strings.Contains(tc.name, "websocket") {
				h = []string{"Connection", "Upgrade", "Upgrade", "websocket"}
			}
			a := e.do(tc.method, tc.path, nil, h...)
			if a.code != tc.code || !strings.Contains(a.status.Message, tc.msg) || a.status.Code != int32(tc.code) {
				t.Fatalf("got %d %q, want %d containing %q", a.code, a.status.Message, tc.code, tc.msg)
			}
		})
	}
	t.Run("import garbage", func(t *testing.T) {
		a := e.do("POST", "/images", strings.NewReader("not a tar archive"))
		if a.code != 400 || !strings.Contains(a.status.Message, "import image") {
			t.Fatalf("got %d %s", a.code, a.body)
		}
	})
	t.Run("healthz", func(t *testing.T) {
		if a := e.do("GET", "/healthz", nil); a.code != 200 || a.body != "ok" {
			t.Fatalf("got %d %q", a.code, a.body)
		}
	})
}

// TestImagesAndLogs: the image list, and a log read with each option.
func TestImagesAndLogs(t *testing.T) {
	e := newEnv(t)
	a := e.do("GET", "/images", nil)
	var list server.ImageList
	if err := json.Unmarshal([]byte(a.body), &list); err != nil || a.code != 200 {
		t.Fatalf("images: %d %s", a.code, a.body)
	}
	found := false
	for _, i := range list.Images {
		found = found || (i.Ref == testimages.ToolboxRef && strings.HasPrefix(i.ID, "sha256:") && i.Size > 0)
	}
	if !found {
		t.Fatalf("images lack the toolbox: %s", a.body)
	}
	// Importing again (as `flotilla image import` would) answers what it
	// imported.
	f, err := os.Open(testimages.ForTest(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	a = e.do("POST", "/images", f)
	if a.code != 200 || !strings.Contains(a.body, testimages.ToolboxRef) {
		t.Fatalf("import: %d %s", a.code, a.body)
	}

	// An interval keeps stdout's and stderr's lines in order in the file.
	old := e.run("p", "uid-p", "c", 0, "log", "3", "--interval", "20ms")
	e.waitState(old.ID, runtime.StateExited)
	cur := e.run("p", "uid-p", "c", 1, "log", "2", "--interval", "20ms")
	e.waitState(cur.ID, runtime.StateExited)
	for _, tc := range []struct{ query, want string }{
		{"", "line 0\nline 1\n"},
		{"previous=true", "line 0\nline 1\nline 2\n"},
		{"previous=true&tailLines=1", "line 2\n"},
		{"limitBytes=3", "lin"},
		{"tailLines=0", ""},
		{"follow=true", "line 0\nline 1\n"}, // exited: the follow ends at once
	} {
		if a := e.do("GET", "/containerLogs/default/p/c?"+tc.query, nil); a.code != 200 || a.body != tc.want {
			t.Errorf("?%s: %d %q, want %q", tc.query, a.code, a.body, tc.want)
		}
	}
	a = e.do("GET", "/containerLogs/default/p/c?timestamps=true", nil)
	for _, line := range strings.Split(strings.TrimSuffix(a.body, "\n"), "\n") {
		ts, rest, _ := strings.Cut(line, " ")
		if _, err := time.Parse(time.RFC3339Nano, ts); err != nil || !strings.HasPrefix(rest, "line ") {
			t.Errorf("timestamps: bad line %q", line)
		}
	}
}

// TestExecProtocols: exec through every protocol family client-go
// speaks — WebSocket v5 (kubectl's first choice), WebSocket v4 and SPDY —
// with stdin, stdout, stderr, a terminal and exit codes.
func TestExecProtocols(t *testing.T) {
	e := newEnv(t)
	c := e.run("p", "uid-p", "c", 0, "sleep", "infinity")
	e.waitState(c.ID, runtime.StateRunning)
	cfg := &rest.Config{Host: e.url}
	executors := map[string]func(*url.URL) (remotecommand.Executor, error){
		"websocket-v5": func(u *url.URL) (remotecommand.Executor, error) {
			return remotecommand.NewWebSocketExecutor(cfg, "GET", u.String())
		},
		"websocket-v4": func(u *url.URL) (remotecommand.Executor, error) {
			return remotecommand.NewWebSocketExecutorForProtocols(cfg, "GET", u.String(), "v4.channel.k8s.io")
		},
		"spdy": func(u *url.URL) (remotecommand.Executor, error) {
			return remotecommand.NewSPDYExecutor(cfg, "POST", u)
		},
	}
	for proto, newExec := range executors {
		t.Run(proto, func(t *testing.T) {
			exec := func(stdin string, tty bool, cmd ...string) (string, string, error) {
				q := url.Values{"command": append([]string{"/toolbox"}, cmd...), "output": {"1"}}
				if tty {
					q.Set("tty", "1")
				} else {
					q.Set("error", "1")
				}
				if stdin != "" {
					q.Set("input", "1")
				}
				u, _ := url.Parse(e.url + "/exec/default/p/c?" + q.Encode())
				ex, err := newExec(u)
				if err != nil {
					t.Fatal(err)
				}
				var out, errOut bytes.Buffer
				opts := remotecommand.StreamOptions{Stdout: &out, Tty: tty}
				if !tty {
					opts.Stderr = &errOut
				}
				if stdin != "" {
					opts.Stdin = strings.NewReader(stdin)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				err = ex.StreamWithContext(ctx, opts)
				return out.String(), errOut.String(), err
			}
			if out, _, err := exec("", false, "echo", "hello", "world"); err != nil || out != "hello world\n" {
				t.Errorf("echo: %q %v", out, err)
			}
			if out, errOut, err := exec("", false, "log", "2", "--interval", "20ms"); err != nil || out != "line 0\n" || errOut != "line 1\n" {
				t.Errorf("stdout and stderr: %q %q %v", out, errOut, err)
			}
			// v4 has no way to say stdin ended (v5's half-close is why v5
			// exists), so cat would never see EOF there.
			if proto != "websocket-v4" {
				if out, _, err := exec("ping\npong\n", false, "cat"); err != nil || out != "ping\npong\n" {
					t.Errorf("stdin: %q %v", out, err)
				}
			}
			_, _, err := exec("", false, "exit", "3")
			if ee, ok := err.(utilexec.ExitError); !ok || ee.ExitStatus() != 3 {
				t.Errorf("exit 3: got %T %v", err, err)
			}
			if out, _, err := exec("", true, "echo", "tty"); err != nil || out != "tty\r\n" {
				t.Errorf("tty: %q %v", out, err)
			}
		})
	}
}
