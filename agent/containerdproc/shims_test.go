package containerdproc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"flotilla/testimages"
)

// runSleeper starts one container that never exits on p and returns its
// namespace and the pid of its process.
func runSleeper(t *testing.T, p *Process) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	archive, err := testimages.Build(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	rand.Read(b)
	ns := "cp" + hex.EncodeToString(b)
	c, err := containerd.New(p.Address(), containerd.WithDefaultNamespace(ns))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	imgs, err := c.Import(ctx, f)
	if err != nil || len(imgs) == 0 {
		t.Fatalf("import: %v %v", imgs, err)
	}
	img := containerd.NewImage(c, imgs[0])
	if err := img.Unpack(ctx, "overlayfs"); err != nil {
		t.Fatal(err)
	}
	ctr, err := c.NewContainer(ctx, "sleeper",
		containerd.WithNewSnapshot("sleeper", img),
		containerd.WithNewSpec(oci.WithImageConfig(img),
			oci.WithProcessArgs("/toolbox", "sleep", "infinity"),
			oci.WithHostNamespace(specs.NetworkNamespace)))
	if err != nil {
		t.Fatal(err)
	}
	task, err := ctr.NewTask(ctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return ns, int(task.Pid())
}

// checkNothingLeft asserts Stop left no shim, container process, mount
// or runc state behind.
func checkNothingLeft(t *testing.T, p *Process, ns string, pid int) {
	t.Helper()
	if s := shimsOf(p.Address()); len(s) > 0 {
		t.Errorf("shims still running: %v", s)
	}
	if alive(pid) {
		t.Errorf("container process %d still running", pid)
	}
	if mps, err := MountsUnder(p.Dir()); err != nil || len(mps) > 0 {
		t.Errorf("mounts left under %s: %v %v", p.Dir(), mps, err)
	}
	if Running(context.Background(), p.Address()) {
		t.Errorf("containerd still answering")
	}
	if _, err := os.Stat(filepath.Join(runcRoot, ns)); err == nil {
		t.Errorf("runc state dir for %s left", ns)
	}
	for _, cg := range []string{"memory", "pids", "cpu"} {
		if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", cg, ns)); err == nil {
			t.Errorf("cgroup %s/%s left", cg, ns)
		}
	}
}

func TestStopEndsTasks(t *testing.T) {
	p := StartForTest(t)
	ns, pid := runSleeper(t, p)
	if !alive(pid) || len(shimsOf(p.Address())) != 1 {
		t.Fatalf("sleeper %d not running under one shim (%v)", pid, shimsOf(p.Address()))
	}
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	checkNothingLeft(t, p, ns, pid)
}

// After containerd crashed its shims run on; Stop still ends them.
func TestStopEndsOrphanedShims(t *testing.T) {
	p := StartForTest(t)
	ns, pid := runSleeper(t, p)
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	if !alive(pid) || len(shimsOf(p.Address())) != 1 {
		t.Fatalf("container should outlive containerd: pid %d alive %v, shims %v", pid, alive(pid), shimsOf(p.Address()))
	}
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	checkNothingLeft(t, p, ns, pid)
}
