package containerd

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"flotilla/agent/runtime"
)

// RunForTest creates and starts a container from spec for a test and stops
// and removes it when the test ends. An unset hostname is the pod's name,
// an unset log path a file in a temp dir of the test; no NetNSPath is the
// host's network.
func RunForTest(t testing.TB, rt runtime.Runtime, spec runtime.ContainerSpec) runtime.Container {
	t.Helper()
	if spec.Hostname == "" {
		spec.Hostname = spec.PodName
	}
	if spec.LogPath == "" {
		spec.LogPath = filepath.Join(t.TempDir(), spec.Name+".log")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := rt.CreateContainer(ctx, spec)
	if err != nil {
		t.Fatalf("create %s: %v", spec.Name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = rt.StopContainer(ctx, c.ID, 0)
		_ = rt.RemoveContainer(ctx, c.ID)
	})
	if err := rt.StartContainer(ctx, c.ID); err != nil {
		t.Fatalf("start %s: %v", spec.Name, err)
	}
	return c
}
