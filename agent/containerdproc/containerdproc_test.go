package containerdproc

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd"
)

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestAddressFor(t *testing.T) {
	short := AddressFor("/tmp/ctrd1")
	if short != "/tmp/ctrd1/containerd.sock" {
		t.Errorf("short dir: got %q", short)
	}
	long := "/var/lib/" + strings.Repeat("x", 120)
	got := AddressFor(long)
	if !strings.HasPrefix(got, longPathSocketDir+"/") || len(got) >= maxSocketPath {
		t.Errorf("long dir: got %q", got)
	}
	if AddressFor(long) != got || AddressFor(long+"y") == got {
		t.Errorf("long-dir socket names must be stable and distinct")
	}
}

func TestStartBadConfig(t *testing.T) {
	ctx := context.Background()
	if _, err := Start(ctx, Config{}); err == nil || !strings.Contains(err.Error(), "Dir") {
		t.Errorf("empty Dir: got %v", err)
	}
	_, err := Start(ctx, Config{Dir: t.TempDir(), Binary: "/nonexistent/containerd"})
	if !errors.Is(err, ErrNoBinary) {
		t.Errorf("missing binary: got %v, want ErrNoBinary", err)
	}
}

func TestStartAnswersAndStops(t *testing.T) {
	p := StartForTest(t)
	ctx := context.Background()
	if !Running(ctx, p.Address()) {
		t.Fatalf("containerd not answering on %s", p.Address())
	}
	c, err := containerd.New(p.Address())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	v, err := c.Version(ctx)
	if err != nil || v.Version == "" {
		t.Fatalf("version: %+v %v", v, err)
	}
	cfg, err := os.ReadFile(filepath.Join(p.Dir(), "config.toml"))
	if err != nil || !strings.Contains(string(cfg), `"io.containerd.grpc.v1.cri"`) {
		t.Errorf("config does not disable cri: %v\n%s", err, cfg)
	}

	if err := p.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if Running(ctx, p.Address()) {
		t.Errorf("still answering after Stop")
	}
	if err := p.Stop(); err != nil {
		t.Errorf("second stop: %v", err)
	}
}

func TestSuperviseRestartsAfterCrash(t *testing.T) {
	p := StartForTest(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Supervise(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	for i := range 2 {
		p.mu.Lock()
		before := p.d.pid
		p.mu.Unlock()
		if err := p.Kill(); err != nil {
			t.Fatalf("kill %d: %v", i, err)
		}
		if Running(context.Background(), p.Address()) {
			t.Fatalf("answering right after Kill")
		}
		waitFor(t, 20*time.Second, "containerd restarted by Supervise", func() bool {
			p.mu.Lock()
			pid := p.d.pid
			p.mu.Unlock()
			return pid != before && Running(context.Background(), p.Address())
		})
	}

	// Stop ends supervision: nothing comes back.
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Supervise did not return after Stop")
	}
	if Running(context.Background(), p.Address()) {
		t.Errorf("containerd running after Stop")
	}
}

func TestRestartAfterKill(t *testing.T) {
	p := StartForTest(t)
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if !Running(ctx, p.Address()) {
		t.Fatal("not answering after Restart")
	}
}

// A restarted agent finds the managed containerd its predecessor left
// running and takes it over instead of starting a second one.
func TestStartAdoptsRunningDaemon(t *testing.T) {
	p := StartForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p2, err := Start(ctx, Config{Dir: p.Dir()})
	if err != nil {
		t.Fatalf("second start: %v", err)
	}
	t.Cleanup(func() { p2.Stop() })
	if p2.d.pid != p.d.pid || p2.Address() != p.Address() {
		t.Fatalf("adopted pid %d address %s, want %d %s", p2.d.pid, p2.Address(), p.d.pid, p.Address())
	}
	if err := p2.Kill(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "first handle to see the exit", func() bool { return !p.d.running() })
	if err := p2.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if !Running(ctx, p2.Address()) {
		t.Fatal("not answering after Restart")
	}
}

// Something else answering on our socket is not ours to adopt.
func TestStartRefusesForeignDaemon(t *testing.T) {
	p := StartForTest(t)
	dir, err := os.MkdirTemp("", "ctrd")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	// Point the other Dir's socket at p's daemon.
	if err := os.Symlink(p.Address(), filepath.Join(dir, "containerd.sock")); err != nil {
		t.Fatal(err)
	}
	_, err = Start(context.Background(), Config{Dir: dir})
	if !errors.Is(err, ErrAlreadyRunning) {
		t.Fatalf("got %v, want ErrAlreadyRunning", err)
	}
}
