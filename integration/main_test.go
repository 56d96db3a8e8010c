package integration

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"flotilla/testimages"
)

// flotillaBin is the binary under test, built once for the whole package.
var flotillaBin string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		fmt.Println("integration: skipped in -short mode")
		os.Exit(0)
	}
	sweepStaleLabs() // what a crashed earlier run left must not poison this one
	dir, err := os.MkdirTemp("", "flotilla-it-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		os.Exit(1)
	}
	flotillaBin = filepath.Join(dir, "flotilla")
	// Built without -race: these tests measure processes, and the race
	// detector's slowdown would distort election timings.
	// The same version stamp as the Makefile, so the embedded kubectl reports
	// a parsable version.
	ldflags := "-X k8s.io/client-go/pkg/version.gitVersion=v1.37.2 -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=37 " +
		"-X k8s.io/component-base/version.gitVersion=v1.37.2 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37"
	build := exec.Command("go", "build", "-ldflags", ldflags, "-o", flotillaBin, "flotilla/cmd/flotilla")
	// Static, as `make build`: see the Makefile.
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "integration: build flotilla:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	stopSharedContainerd()
	testimages.Cleanup()
	os.RemoveAll(dir)
	os.Exit(code)
}
