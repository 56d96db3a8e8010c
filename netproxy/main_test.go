package netproxy

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// netnsEnv marks the test binary re-executed inside its own network
// namespace.
const netnsEnv = "FLOTILLA_NETPROXY_NETNS"

// inNetNS is true when the tests run in a private network namespace with
// lo up: they may add addresses to lo (ClusterIPs such as 10.96.0.10/32)
// and bind them, and all of it goes away with the process.
var inNetNS bool

// TestMain runs the tests, as root, in a network namespace of their own,
// so that binding Service addresses touches nothing of the host's. The
// binary re-executes itself under unshare(1); without root (or without
// unshare) the tests run here and those that need the namespace skip.
func TestMain(m *testing.M) {
	if os.Getenv(netnsEnv) != "" {
		if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "netproxy tests: ip link set lo up: %v: %s\n", err, out)
			os.Exit(1)
		}
		inNetNS = true
		os.Exit(m.Run())
	}
	// Probe first: a failure to make the namespace must not look like a
	// failed test run. Fuzzing stays here: its workers talk to the
	// coordinator over inherited descriptors a re-exec would drop, and no
	// fuzz target needs the namespace.
	if os.Geteuid() != 0 || fuzzing() || exec.Command("unshare", "--net", "true").Run() != nil {
		os.Exit(m.Run())
	}
	cmd := exec.Command("unshare", append([]string{"--net", "--", os.Args[0]}, os.Args[1:]...)...)
	cmd.Env = append(os.Environ(), netnsEnv+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	// If go test kills this process (its timeout), the tests go too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		os.Exit(0)
	case errors.As(err, &exit) && exit.ExitCode() > 0:
		os.Exit(exit.ExitCode())
	default: // could not start, or killed by a signal
		fmt.Fprintf(os.Stderr, "netproxy tests: run in a network namespace: %v\n", err)
		os.Exit(1)
	}
}

func fuzzing() bool {
	for _, a := range os.Args[1:] {
		if strings.HasPrefix(a, "-test.fuzz") {
			return true
		}
	}
	return false
}

// requireNetNS skips t unless the tests run in their own network
// namespace (see TestMain).
func requireNetNS(t testing.TB) {
	t.Helper()
	if !inNetNS {
		t.Skip("needs root and unshare(1): runs in a private network namespace")
	}
}
