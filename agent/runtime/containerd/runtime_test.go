package containerd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/cio"

	"flotilla/agent/runtime"
	"flotilla/testimages"
)

func TestImages(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()

	img, err := e.rt.GetImage(ctx, testimages.ToolboxRef)
	if err != nil {
		t.Fatal(err)
	}
	if img.Ref != testimages.ToolboxRef || !strings.HasPrefix(img.ID, "sha256:") || img.Size <= 0 {
		t.Errorf("GetImage: %+v", img)
	}
	all, err := e.rt.ListImages(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(all, img) {
		t.Errorf("ListImages %+v lacks %+v", all, img)
	}

	if _, err := e.rt.GetImage(ctx, "busybox"); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("absent image: got %v, want ErrNotFound", err)
	}
	if _, err := e.rt.GetImage(ctx, "Not A Ref!"); err == nil || errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("bad reference: got %v, want a parse error", err)
	}

	// No registry is reachable: the pull must fail, say why, and not hang.
	for _, ref := range []string{"127.0.0.1:1/nope:v1"} { // loopback only: no DNS lookups from tests
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		start := time.Now()
		_, err := e.rt.PullImage(pctx, ref)
		cancel()
		if err == nil || !strings.Contains(err.Error(), "pull image") {
			t.Errorf("pull %s: got %v", ref, err)
		}
		t.Logf("pull %s failed in %s: %v", ref, time.Since(start).Round(time.Millisecond), err)
	}

	if err := e.rt.RemoveImage(ctx, testimages.ToolboxRef); err != nil {
		t.Fatal(err)
	}
	if _, err := e.rt.GetImage(ctx, testimages.ToolboxRef); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("after remove: got %v, want ErrNotFound", err)
	}
	if err := e.rt.RemoveImage(ctx, testimages.ToolboxRef); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("second remove: got %v, want ErrNotFound", err)
	}
}

func TestNormalizeRef(t *testing.T) {
	for in, want := range map[string]string{
		"busybox":                        "docker.io/library/busybox:latest",
		"busybox:1.36":                   "docker.io/library/busybox:1.36",
		"flotilla.test/toolbox:v1":       "flotilla.test/toolbox:v1",
		"localhost:5000/a/b":             "localhost:5000/a/b:latest",
		"quay.io/x/y@sha256:" + zeros64:  "quay.io/x/y@sha256:" + zeros64,
		"docker.io/library/busybox:1.36": "docker.io/library/busybox:1.36",
	} {
		got, err := NormalizeRef(in)
		if err != nil || got != want {
			t.Errorf("NormalizeRef(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "UPPER", "a b"} {
		if _, err := NormalizeRef(bad); err == nil {
			t.Errorf("NormalizeRef(%q): want error", bad)
		}
	}
}

const zeros64 = "0000000000000000000000000000000000000000000000000000000000000000"

func TestExitRecorded(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		args   []string
		code   int32
		reason string
	}{
		{"zero", []string{"exit", "0"}, 0, runtime.ReasonCompleted},
		{"three", []string{"exit", "3"}, 3, runtime.ReasonError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := e.spec(tc.name, tc.args...)
			s.Attempt = 2
			c := e.create(s)
			if c.State != runtime.StateCreated || c.ID != ContainerID(s.PodUID, s.Name, 2) {
				t.Fatalf("created: %+v", c)
			}
			if err := e.rt.StartContainer(ctx, c.ID); err != nil {
				t.Fatal(err)
			}
			got := e.waitState(e.rt, c.ID, runtime.StateExited, 20*time.Second)
			if got.ExitCode != tc.code || got.Reason != tc.reason {
				t.Errorf("exit %d %q, want %d %q", got.ExitCode, got.Reason, tc.code, tc.reason)
			}
			if got.StartedAt.IsZero() || got.FinishedAt.Before(got.StartedAt) || got.CreatedAt.After(got.StartedAt) {
				t.Errorf("times: created %v started %v finished %v", got.CreatedAt, got.StartedAt, got.FinishedAt)
			}
			if got.PodUID != s.PodUID || got.PodName != s.PodName || got.PodNamespace != "default" ||
				got.Name != s.Name || got.Attempt != 2 || got.Image != testimages.ToolboxRef ||
				!strings.HasPrefix(got.ImageID, "sha256:") || got.LogPath != s.LogPath {
				t.Errorf("identity: %+v", got)
			}
			// The task is deleted once the exit is recorded: no shim stays.
			if err := poll(10*time.Second, func() bool {
				p, err := e.rt.task(ctx, e.client, c.ID)
				return err == nil && p == nil
			}); err != nil {
				t.Errorf("task of exited container not deleted")
			}
			// Start again: refused, nothing changes.
			if err := e.rt.StartContainer(ctx, c.ID); !errors.Is(err, ErrNotCreated) {
				t.Errorf("second start: %v", err)
			}
		})
	}
}

func TestCreateIsIdempotent(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	s := e.spec("again", "sleep", "infinity")
	a := e.create(s)
	b := e.create(s)
	if a.ID != b.ID || b.State != runtime.StateCreated {
		t.Errorf("second create: %+v vs %+v", b, a)
	}
	s.Attempt = 1
	c := e.create(s)
	if c.ID == a.ID {
		t.Errorf("attempt 1 has the ID of attempt 0")
	}
	list, err := e.rt.ListContainers(ctx)
	if err != nil || len(list) != 2 {
		t.Errorf("list: %d containers, %v", len(list), err)
	}
}

func TestStartErrorMissingExecutable(t *testing.T) {
	e := newEnv(t)
	s := e.spec("nope")
	s.Command = []string{"nope"}
	c := e.create(s)
	err := e.rt.StartContainer(context.Background(), c.ID)
	if err == nil || !strings.Contains(err.Error(), "executable file not found") {
		t.Fatalf("start: got %v", err)
	}
	got, err := e.rt.ContainerStatus(context.Background(), c.ID)
	if err != nil {
		t.Fatal(err)
	}
	want := `exec: "nope": executable file not found in $PATH`
	if got.State != runtime.StateExited || got.ExitCode != 128 || got.Reason != runtime.ReasonStartError || got.Message != want {
		t.Errorf("status: %+v; want exited 128 StartError %q", got, want)
	}
	if got.FinishedAt.IsZero() {
		t.Errorf("no finish time")
	}
}

func TestStop(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		args    []string
		grace   time.Duration
		code    int32
		reason  string
		minTook time.Duration
		maxTook time.Duration
	}{
		// TERM honoured after its own delay, well within grace.
		{"term-delay", []string{"sleep", "infinity", "--term-delay", "1s"}, 10 * time.Second, 0, runtime.ReasonCompleted, time.Second, 8 * time.Second},
		// TERM ignored: SIGKILL when grace runs out.
		{"ignore-term", []string{"sleep", "infinity", "--ignore-term"}, time.Second, 137, runtime.ReasonError, time.Second, 8 * time.Second},
		// Grace 0: SIGKILL at once.
		{"no-grace", []string{"sleep", "infinity", "--ignore-term"}, 0, 137, runtime.ReasonError, 0, 3 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := e.spec(tc.name, tc.args...)
			id := e.run(s)
			// The toolbox says so once its signal handling is in place.
			waitLog(t, s.LogPath, "sleeping infinity")
			start := time.Now()
			if err := e.rt.StopContainer(ctx, id, tc.grace); err != nil {
				t.Fatal(err)
			}
			took := time.Since(start)
			t.Logf("stop took %s", took.Round(time.Millisecond))
			if took < tc.minTook || took > tc.maxTook {
				t.Errorf("stop took %s, want %s..%s", took, tc.minTook, tc.maxTook)
			}
			// Returned only once the exit is recorded: no polling needed.
			got, err := e.rt.ContainerStatus(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if got.State != runtime.StateExited || got.ExitCode != tc.code || got.Reason != tc.reason {
				t.Errorf("after stop: %+v", got)
			}
			// Stopping an exited container is a no-op.
			if err := e.rt.StopContainer(ctx, id, time.Second); err != nil {
				t.Errorf("second stop: %v", err)
			}
		})
	}
}

func TestOOMKilled(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := e.rt.Events(ctx)

	s := e.spec("hog", "alloc", "100")
	s.MemoryLimit = 32 << 20
	id := e.run(s)
	got := e.waitState(e.rt, id, runtime.StateExited, 30*time.Second)
	if got.Reason != runtime.ReasonOOMKilled || got.ExitCode != 137 {
		t.Errorf("exit %d %q, want 137 OOMKilled", got.ExitCode, got.Reason)
	}

	// The agent hears started, oom and exited for this pod.
	seen := map[runtime.EventType]bool{}
	timeout := time.After(10 * time.Second)
	for !(seen[runtime.EventStarted] && seen[runtime.EventOOM] && seen[runtime.EventExited]) {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatal("event channel closed")
			}
			if ev.ContainerID == id {
				if ev.PodUID != s.PodUID {
					t.Errorf("event %+v: pod UID %q, want %q", ev, ev.PodUID, s.PodUID)
				}
				seen[ev.Type] = true
			}
		case <-timeout:
			t.Fatalf("events seen: %v", seen)
		}
	}
}

// The OOM is recognised from the cgroup's counter alone when no event was
// seen: here the task runs while no Runtime is listening (as when the
// agent is down), and a new Runtime finds it stopped.
func TestOOMWithoutEvent(t *testing.T) {
	if _, ok := cgroupOOMKills("/"); !ok {
		t.Skip("no oom_kill counter in the root memory cgroup")
	}
	e := newEnv(t)
	ctx := context.Background()
	s := e.spec("hog", "alloc", "100")
	s.MemoryLimit = 32 << 20
	id := e.create(s).ID
	e.rt.Close()

	ctr, err := e.client.LoadContainer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	task, err := ctr.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	exitC, err := task.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case es := <-exitC:
		t.Logf("task exited %d", es.ExitCode())
	case <-time.After(30 * time.Second):
		t.Fatal("hog did not exit")
	}

	rt2 := e.newRuntime()
	got := e.waitState(rt2, id, runtime.StateExited, 10*time.Second)
	if got.Reason != runtime.ReasonOOMKilled || got.ExitCode != 137 {
		t.Errorf("exit %d %q, want 137 OOMKilled", got.ExitCode, got.Reason)
	}
	if _, ok := cgroupOOMKills("/no-such-cgroup-" + randHex(4)); ok {
		t.Errorf("counter found for a cgroup that does not exist")
	}
}

func TestExec(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	s := e.spec("box", "sleep", "infinity")
	s.Env = []string{"FROM_POD=1"}
	id := e.run(s)
	e.waitState(e.rt, id, runtime.StateRunning, 10*time.Second)

	var out, errOut bytes.Buffer
	start := time.Now()
	code, err := e.rt.Exec(ctx, id, runtime.ExecOptions{Cmd: []string{"/toolbox", "echo", "hello", "world"}, Stdout: &out, Stderr: &errOut})
	if err != nil || code != 0 || out.String() != "hello world\n" {
		t.Errorf("echo: code %d err %v out %q stderr %q", code, err, out.String(), errOut.String())
	}
	t.Logf("exec echo took %s", time.Since(start).Round(time.Millisecond))

	code, err = e.rt.Exec(ctx, id, runtime.ExecOptions{Cmd: []string{"/toolbox", "exit", "5"}})
	if err != nil || code != 5 {
		t.Errorf("exit 5: code %d err %v", code, err)
	}

	out.Reset()
	code, err = e.rt.Exec(ctx, id, runtime.ExecOptions{
		Cmd:    []string{"/toolbox", "cat"},
		Stdin:  strings.NewReader("from stdin\n"),
		Stdout: &out,
	})
	if err != nil || code != 0 || out.String() != "from stdin\n" {
		t.Errorf("cat: code %d err %v out %q", code, err, out.String())
	}

	out.Reset()
	code, err = e.rt.Exec(ctx, id, runtime.ExecOptions{Cmd: []string{"/toolbox", "env"}, Env: []string{"EXTRA=2"}, Stdout: &out})
	if err != nil || code != 0 || !strings.Contains(out.String(), "EXTRA=2\n") || !strings.Contains(out.String(), "FROM_POD=1\n") {
		t.Errorf("env: code %d err %v out %q", code, err, out.String())
	}

	out.Reset()
	code, err = e.rt.Exec(ctx, id, runtime.ExecOptions{Cmd: []string{"/toolbox", "hostname"}, TTY: true, Stdout: &out})
	if err != nil || code != 0 || strings.TrimSpace(out.String()) != "pod-box" {
		t.Errorf("tty hostname: code %d err %v out %q", code, err, out.String())
	}

	start = time.Now()
	_, err = e.rt.Exec(ctx, id, runtime.ExecOptions{Cmd: []string{"nope"}})
	if err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("missing command: got %v", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("missing command took %s", time.Since(start))
	}

	// ctx ending kills the exec'd process.
	cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err = e.rt.Exec(cctx, id, runtime.ExecOptions{Cmd: []string{"/toolbox", "sleep", "infinity"}})
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("cancelled exec: got %v", err)
	}

	if err := e.rt.StopContainer(ctx, id, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := e.rt.Exec(ctx, id, runtime.ExecOptions{Cmd: []string{"/toolbox", "echo"}}); !errors.Is(err, ErrNotRunning) {
		t.Errorf("exec in exited container: got %v", err)
	}
}

func TestLogs(t *testing.T) {
	e := newEnv(t)
	s := e.spec("logger", "log", "3")
	id := e.run(s)
	// The output is read to its end before the exit is recorded: the log
	// is complete as soon as the container is seen exited.
	e.waitState(e.rt, id, runtime.StateExited, 20*time.Second)
	want := []string{"stdout F line 0", "stderr F line 1", "stdout F line 2"}
	got := logContent(t, s.LogPath)
	// Each stream keeps its order; between the two it is not defined.
	slices.Sort(got)
	sorted := slices.Clone(want)
	slices.Sort(sorted)
	if !slices.Equal(got, sorted) {
		t.Errorf("log records %q, want %q", got, want)
	}
}

func TestSpecApplied(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	host := t.TempDir()
	if err := os.WriteFile(filepath.Join(host, "in"), []byte("from host"), 0o644); err != nil {
		t.Fatal(err)
	}
	ro := t.TempDir()
	s := e.spec("spec", "sleep", "infinity")
	s.Env = []string{"A=1", "B=two words"}
	s.WorkingDir = "/data"
	s.Mounts = []runtime.Mount{
		{HostPath: host, ContainerPath: "/data"},
		{HostPath: ro, ContainerPath: "/ro", ReadOnly: true},
	}
	s.MemoryLimit = 64 << 20
	s.CPUMilli = 250
	s.CPUShares = 256
	uid, gid := int64(1234), int64(5678)
	s.RunAsUser, s.RunAsGroup = &uid, &gid
	s.CapDrop = []string{"ALL"}
	s.CapAdd = []string{"net_bind_service"}
	id := e.run(s)
	e.waitState(e.rt, id, runtime.StateRunning, 10*time.Second)

	exec := func(args ...string) (string, int) {
		t.Helper()
		var out lockedBuffer
		code, err := e.rt.Exec(ctx, id, runtime.ExecOptions{Cmd: append([]string{"/toolbox"}, args...), Stdout: &out, Stderr: &out})
		if err != nil {
			t.Fatalf("exec %v: %v", args, err)
		}
		return out.String(), code
	}
	if out, _ := exec("env"); !strings.Contains(out, "A=1\n") || !strings.Contains(out, "B=two words\n") || !strings.Contains(out, "HOSTNAME=pod-spec\n") {
		t.Errorf("env: %q", out)
	}
	if out, code := exec("cat", "in"); code != 0 || out != "from host" {
		t.Errorf("cat in (working dir /data): %d %q", code, out)
	}
	if _, code := exec("write", "/ro/x", "no"); code == 0 {
		t.Errorf("wrote to a read-only mount")
	}
	if out, _ := exec("cat", "/proc/self/status"); !strings.Contains(out, "Uid:\t1234\t") || !strings.Contains(out, "Gid:\t5678\t") ||
		!strings.Contains(out, "CapBnd:\t0000000000000400") {
		t.Errorf("status: %s", out)
	}

	ctr, err := e.client.LoadContainer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ctr.Spec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := sp.Linux.Resources
	if r.Memory == nil || *r.Memory.Limit != 64<<20 || (e.rt.swapLimit && *r.Memory.Swap != 64<<20) {
		t.Errorf("memory: %+v", r.Memory)
	}
	if r.CPU == nil || *r.CPU.Quota != 25000 || *r.CPU.Period != 100000 || *r.CPU.Shares != 256 {
		t.Errorf("cpu: %+v", r.CPU)
	}
	// And the cgroup really has them (v1 layout, as on this machine).
	cg := filepath.Join("/sys/fs/cgroup/memory", e.ns, id, "memory.limit_in_bytes")
	if b, err := os.ReadFile(cg); err == nil && strings.TrimSpace(string(b)) != "67108864" {
		t.Errorf("%s = %s", cg, b)
	}
}

// lockedBuffer is one buffer for both stdout and stderr, which are copied
// by separate goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestCreateStartLatency logs how long create+start of one container
// takes with the image present (the agent's share of pod startup). It
// asserts nothing about the numbers: timings are for BENCHMARKS.md.
func TestCreateStartLatency(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	const n = 10
	var create, start, stop, remove []time.Duration
	for i := range n {
		s := e.spec(fmt.Sprintf("lat%d", i), "sleep", "infinity")
		t0 := time.Now()
		c := e.create(s)
		t1 := time.Now()
		if err := e.rt.StartContainer(ctx, c.ID); err != nil {
			t.Fatal(err)
		}
		t2 := time.Now()
		if err := e.rt.StopContainer(ctx, c.ID, 0); err != nil {
			t.Fatal(err)
		}
		t3 := time.Now()
		if err := e.rt.RemoveContainer(ctx, c.ID); err != nil {
			t.Fatal(err)
		}
		t4 := time.Now()
		create, start = append(create, t1.Sub(t0)), append(start, t2.Sub(t1))
		stop, remove = append(stop, t3.Sub(t2)), append(remove, t4.Sub(t3))
	}
	med := func(d []time.Duration) time.Duration {
		slices.Sort(d)
		return d[len(d)/2].Round(time.Millisecond)
	}
	t.Logf("median of %d (max): create %s (%s), start %s (%s), stop(kill) %s, remove %s",
		n, med(create), create[n-1].Round(time.Millisecond), med(start), start[n-1].Round(time.Millisecond), med(stop), med(remove))
}

func TestPrivilegedAndReadOnlyRootfs(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	s := e.spec("priv", "sleep", "infinity")
	s.Privileged = true
	s.ReadOnlyRootfs = true
	id := e.run(s)
	e.waitState(e.rt, id, runtime.StateRunning, 10*time.Second)
	var out lockedBuffer
	if code, err := e.rt.Exec(ctx, id, runtime.ExecOptions{Cmd: []string{"/toolbox", "cat", "/proc/self/status"}, Stdout: &out}); err != nil || code != 0 {
		t.Fatalf("exec: %d %v", code, err)
	}
	// Every capability the host has (at least CAP_SYS_ADMIN, bit 21).
	var capEff uint64
	for _, line := range strings.Split(out.String(), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:\t"); ok {
			fmt.Sscanf(v, "%x", &capEff)
		}
	}
	if capEff&(1<<21) == 0 {
		t.Errorf("privileged container lacks CAP_SYS_ADMIN: CapEff %x", capEff)
	}
	code, err := e.rt.Exec(ctx, id, runtime.ExecOptions{Cmd: []string{"/toolbox", "write", "/x", "y"}})
	if err != nil || code == 0 {
		t.Errorf("write to read-only rootfs: code %d err %v", code, err)
	}
}

func TestSnapshotterChoice(t *testing.T) {
	e := newEnv(t)
	if got := e.rt.Snapshotter(); got != "overlayfs" {
		t.Errorf("default snapshotter on ext4: %q", got)
	}
	bad, err := New(context.Background(), Config{Address: e.proc.Address(), Namespace: e.ns, FIFODir: e.fifoDir, Snapshotter: "nosuch", Logger: e.log})
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	if _, err := bad.Version(context.Background()); err == nil || !strings.Contains(err.Error(), `snapshotter "nosuch"`) {
		t.Errorf("unknown snapshotter: got %v", err)
	}

	native, err := New(context.Background(), Config{Address: e.proc.Address(), Namespace: e.ns, FIFODir: e.fifoDir, Snapshotter: "native", Logger: e.log})
	if err != nil {
		t.Fatal(err)
	}
	defer native.Close()
	e.rt = native
	// The image was unpacked for overlayfs only; create unpacks it again.
	id := e.run(e.spec("native", "exit", "0"))
	if got := e.waitState(native, id, runtime.StateExited, 20*time.Second); got.Reason != runtime.ReasonCompleted {
		t.Errorf("native: %+v", got)
	}
	if err := native.RemoveContainer(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	e.checkGone(id)
}
