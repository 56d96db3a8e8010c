package containerd

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"flotilla/agent/runtime"
)

// byID indexes a listing.
func byID(t *testing.T, rt *Runtime) map[string]runtime.Container {
	t.Helper()
	list, err := rt.ListContainers(context.Background())
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	m := map[string]runtime.Container{}
	for _, c := range list {
		m[c.ID] = c
	}
	return m
}

// Exit records and running containers survive a new Runtime (the agent
// restarting) and a containerd restart; an exit that happens while
// containerd is down is recorded once it is back.
func TestStatusSurvivesRestarts(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	ok := e.run(e.spec("ok", "exit", "0"))
	bad := e.run(e.spec("bad", "exit", "3"))
	long := e.run(e.spec("long", "sleep", "infinity"))
	e.waitState(e.rt, ok, runtime.StateExited, 20*time.Second)
	e.waitState(e.rt, bad, runtime.StateExited, 20*time.Second)
	e.waitState(e.rt, long, runtime.StateRunning, 10*time.Second)
	before := byID(t, e.rt)

	check := func(rt *Runtime, when string) {
		t.Helper()
		now := byID(t, rt)
		for _, id := range []string{ok, bad} {
			if now[id] != before[id] {
				t.Errorf("%s: %s is %+v, was %+v", when, id, now[id], before[id])
			}
		}
		if now[long].State != runtime.StateRunning || now[long].StartedAt != before[long].StartedAt {
			t.Errorf("%s: running container is %+v", when, now[long])
		}
	}

	// The agent restarts.
	e.rt.Close()
	rt2 := e.newRuntime()
	e.rt = rt2
	check(rt2, "new runtime")

	// containerd restarts; the container keeps running through it.
	crash := e.run(e.spec("crash", "crash-after", "1500ms"))
	if err := e.proc.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := poll(10*time.Second, func() bool {
		_, err := rt2.ListContainers(ctx)
		return errors.Is(err, runtime.ErrUnavailable)
	}); err != nil {
		t.Fatal("runtime did not notice containerd gone")
	}
	// Let the crash happen while containerd is down: its cgroup (which
	// stays until the task is deleted) empties when the process exits.
	procs := filepath.Join("/sys/fs/cgroup/memory", e.ns, crash, "cgroup.procs")
	if err := poll(10*time.Second, func() bool {
		b, err := os.ReadFile(procs)
		return err == nil && len(bytes.TrimSpace(b)) == 0
	}); err != nil {
		t.Fatalf("container did not exit while containerd was down (%s)", procs)
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := e.proc.Restart(rctx); err != nil {
		t.Fatal(err)
	}
	if err := poll(15*time.Second, func() bool {
		_, err := rt2.Version(ctx)
		return err == nil
	}); err != nil {
		t.Fatal("runtime did not reconnect")
	}
	check(rt2, "containerd restart")
	got := e.waitState(rt2, crash, runtime.StateExited, 20*time.Second)
	if got.ExitCode != 1 || got.Reason != runtime.ReasonError {
		t.Errorf("exit while containerd was down: %+v", got)
	}
	// And the survivor can still be stopped.
	if err := rt2.StopContainer(ctx, long, 0); err != nil {
		t.Fatal(err)
	}
}

func TestUnavailable(t *testing.T) {
	// A Runtime made while nothing listens.
	rt, err := New(context.Background(), Config{Address: "/tmp/flotilla-no-such-" + randHex(4) + ".sock", FIFODir: t.TempDir()})
	if err != nil {
		t.Fatalf("New without containerd: %v", err)
	}
	defer rt.Close()
	start := time.Now()
	if _, err := rt.Version(context.Background()); !errors.Is(err, runtime.ErrUnavailable) {
		t.Errorf("version: got %v, want ErrUnavailable", err)
	}
	if _, err := rt.ListContainers(context.Background()); !errors.Is(err, runtime.ErrUnavailable) {
		t.Errorf("list: got %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("failing took %s", d)
	}
	if _, ok := <-rt.Events(context.Background()); ok {
		t.Errorf("events from nowhere")
	}

	// A Runtime whose containerd goes away and comes back.
	e := newEnv(t)
	ctx := context.Background()
	events := e.rt.Events(ctx)
	if err := e.proc.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case _, ok := <-events:
		for ok {
			_, ok = <-events
		}
	case <-time.After(10 * time.Second):
		t.Error("event channel not closed when containerd died")
	}
	for name, call := range map[string]func() error{
		"version":  func() error { _, err := e.rt.Version(ctx); return err },
		"list":     func() error { _, err := e.rt.ListContainers(ctx); return err },
		"status":   func() error { _, err := e.rt.ContainerStatus(ctx, "x"); return err },
		"image":    func() error { _, err := e.rt.GetImage(ctx, "busybox"); return err },
		"create":   func() error { _, err := e.rt.CreateContainer(ctx, e.spec("c", "exit", "0")); return err },
		"stop":     func() error { return e.rt.StopContainer(ctx, "x", time.Second) },
		"remove":   func() error { return e.rt.RemoveContainer(ctx, "x") },
		"exec":     func() error { _, err := e.rt.Exec(ctx, "x", runtime.ExecOptions{Cmd: []string{"true"}}); return err },
		"start":    func() error { return e.rt.StartContainer(ctx, "x") },
		"listimgs": func() error { _, err := e.rt.ListImages(ctx); return err },
	} {
		start := time.Now()
		err := call()
		if !errors.Is(err, runtime.ErrUnavailable) {
			t.Errorf("%s while down: got %v, want ErrUnavailable", name, err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("%s while down took %s", name, d)
		}
	}

	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := e.proc.Restart(rctx); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if err := poll(15*time.Second, func() bool {
		_, err := e.rt.Version(ctx)
		return err == nil
	}); err != nil {
		t.Fatal("no recovery after containerd came back")
	}
	t.Logf("recovered %s after containerd answered", time.Since(start).Round(time.Millisecond))
	id := e.run(e.spec("after", "exit", "0"))
	if got := e.waitState(e.rt, id, runtime.StateExited, 20*time.Second); got.Reason != runtime.ReasonCompleted {
		t.Errorf("after recovery: %+v", got)
	}
}

func TestRemoveLeavesNothing(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	done := e.run(e.spec("done", "exit", "0"))
	e.waitState(e.rt, done, runtime.StateExited, 20*time.Second)
	running := e.run(e.spec("running", "sleep", "infinity", "--ignore-term"))
	e.waitState(e.rt, running, runtime.StateRunning, 10*time.Second)
	created := e.create(e.spec("created", "exit", "0")).ID

	for _, id := range []string{done, running, created} {
		if err := e.rt.RemoveContainer(ctx, id); err != nil {
			t.Fatalf("remove %s: %v", id, err)
		}
		e.checkGone(id)
		if _, err := e.rt.ContainerStatus(ctx, id); !errors.Is(err, runtime.ErrNotFound) {
			t.Errorf("status after remove: got %v, want ErrNotFound", err)
		}
		if err := e.rt.RemoveContainer(ctx, id); err != nil {
			t.Errorf("second remove: %v", err)
		}
	}
	if list, err := e.rt.ListContainers(ctx); err != nil || len(list) != 0 {
		t.Errorf("list after removes: %v %v", list, err)
	}
}

// A container given a network namespace joins it: the namespace the test
// made holds only lo, unlike the host's.
func TestNetNSJoined(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	name := "flt-" + randHex(4)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Skipf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del: %v: %s", err, out)
		}
	})
	s := e.spec("netns", "sleep", "infinity")
	s.NetNSPath = "/run/netns/" + name
	pod := e.run(s)
	hostNet := e.run(e.spec("hostnet", "sleep", "infinity"))

	ifaces := func(id string) string {
		var out bytes.Buffer
		code, err := e.rt.Exec(ctx, id, runtime.ExecOptions{Cmd: []string{"/toolbox", "ls", "/sys/class/net"}, Stdout: &out})
		if err != nil || code != 0 {
			t.Fatalf("ls /sys/class/net: %d %v", code, err)
		}
		return strings.TrimSpace(out.String())
	}
	if got := ifaces(pod); got != "lo" {
		t.Errorf("pod netns interfaces: %q, want only lo", got)
	}
	if got := ifaces(hostNet); got == "lo" || !strings.Contains(got, "lo") {
		t.Errorf("host network interfaces: %q, want lo and more", got)
	}
	// Both must be gone before the namespace is deleted.
	for _, id := range []string{pod, hostNet} {
		if err := e.rt.StopContainer(ctx, id, 0); err != nil {
			t.Fatal(err)
		}
		if err := e.rt.RemoveContainer(ctx, id); err != nil {
			t.Fatal(err)
		}
	}

	s.NetNSPath = "/run/netns/no-such-" + randHex(4)
	if _, err := e.rt.CreateContainer(ctx, s); !errors.Is(err, ErrInvalidSpec) {
		t.Errorf("missing netns: got %v, want ErrInvalidSpec", err)
	}
}
