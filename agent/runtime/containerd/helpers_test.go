package containerd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd"

	"flotilla/agent/containerdproc"
	"flotilla/agent/runtime"
	"flotilla/testimages"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testimages.Cleanup()
	os.Exit(code)
}

type env struct {
	t    testing.TB
	proc *containerdproc.Process
	rt   *Runtime
	ns   string
	log  *slog.Logger
	// fifoDir is every Runtime's Config.FIFODir, as an agent's data dir.
	fifoDir string
	// client is a plain containerd client in the test's namespace, to
	// check what the runtime left behind.
	client *containerd.Client
}

// newEnv starts a private containerd, a Runtime in a fresh namespace, and
// imports the toolbox image.
func newEnv(t testing.TB) *env {
	t.Helper()
	w := containerdproc.TestLogWriter(t) // registered first, its cleanup runs last
	archive := testimages.ForTest(t)
	proc := containerdproc.StartForTest(t)
	e := &env{
		t:       t,
		proc:    proc,
		ns:      "t" + randHex(6),
		log:     slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})),
		fifoDir: t.TempDir(),
	}
	e.rt = e.newRuntime()
	c, err := containerd.New(proc.Address(), containerd.WithDefaultNamespace(e.ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	e.client = c

	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := e.rt.ImportImage(context.Background(), f); err != nil {
		t.Fatalf("import toolbox: %v", err)
	}
	return e
}

// newRuntime makes another Runtime on the same containerd and namespace,
// as a restarted agent would.
func (e *env) newRuntime() *Runtime {
	e.t.Helper()
	rt, err := New(context.Background(), Config{Address: e.proc.Address(), Namespace: e.ns, FIFODir: e.fifoDir, Logger: e.log})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { rt.Close() })
	return rt
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// spec is a toolbox container in its own pod, host network, logging to a
// temp file.
func (e *env) spec(name string, args ...string) runtime.ContainerSpec {
	return runtime.ContainerSpec{
		PodUID:       "uid-" + randHex(8),
		PodNamespace: "default",
		PodName:      "pod-" + name,
		Name:         name,
		Image:        testimages.ToolboxRef,
		Args:         args,
		LogPath:      filepath.Join(e.t.TempDir(), name+".log"),
		Hostname:     "pod-" + name,
	}
}

func (e *env) create(s runtime.ContainerSpec) runtime.Container {
	e.t.Helper()
	c, err := e.rt.CreateContainer(context.Background(), s)
	if err != nil {
		e.t.Fatalf("create %s: %v", s.Name, err)
	}
	return c
}

// run creates and starts a container and returns its ID.
func (e *env) run(s runtime.ContainerSpec) string {
	e.t.Helper()
	c := e.create(s)
	if err := e.rt.StartContainer(context.Background(), c.ID); err != nil {
		e.t.Fatalf("start %s: %v", s.Name, err)
	}
	return c.ID
}

// waitState polls ContainerStatus until the container is in state.
func (e *env) waitState(rt *Runtime, id string, state runtime.State, timeout time.Duration) runtime.Container {
	e.t.Helper()
	var last runtime.Container
	var lastErr error
	err := poll(timeout, func() bool {
		last, lastErr = rt.ContainerStatus(context.Background(), id)
		return lastErr == nil && last.State == state
	})
	if err != nil {
		e.t.Fatalf("container %s not %s after %s: last %+v, err %v", id, state, timeout, last, lastErr)
	}
	return last
}

// poll calls cond until it is true or timeout passes.
func poll(timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// logContent reads a container's log file and returns the CRI records'
// stream and content, one "stream content" string per line.
func logContent(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read log: %v", err)
	}
	var out []string
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if line == "" {
			continue
		}
		// TIMESTAMP STREAM TAG CONTENT
		f := strings.SplitN(line, " ", 4)
		if len(f) != 4 {
			t.Fatalf("log line %q is not CRI format", line)
		}
		if _, err := time.Parse(time.RFC3339Nano, f[0]); err != nil {
			t.Fatalf("log line %q: bad time: %v", line, err)
		}
		out = append(out, fmt.Sprintf("%s %s %s", f[1], f[2], f[3]))
	}
	return out
}

// checkGone asserts that containerd keeps no container, task or snapshot
// with this ID.
func (e *env) checkGone(id string) {
	e.t.Helper()
	ctx := context.Background()
	if _, err := e.client.LoadContainer(ctx, id); err == nil {
		e.t.Errorf("container %s still exists", id)
	}
	if _, err := e.rt.task(ctx, e.client, id); err != nil {
		e.t.Errorf("task lookup: %v", err)
	}
	if p, _ := e.rt.task(ctx, e.client, id); p != nil {
		e.t.Errorf("task %s still exists: %v", id, p.Status)
	}
	if _, err := e.client.SnapshotService(e.rt.Snapshotter()).Stat(ctx, id); err == nil {
		e.t.Errorf("snapshot %s still exists", id)
	}
}

// waitLog waits until the container's log file contains substr.
func waitLog(t testing.TB, path, substr string) {
	t.Helper()
	if err := poll(10*time.Second, func() bool {
		b, _ := os.ReadFile(path)
		return strings.Contains(string(b), substr)
	}); err != nil {
		b, _ := os.ReadFile(path)
		t.Fatalf("log %s never said %q; it has:\n%s", path, substr, b)
	}
}
