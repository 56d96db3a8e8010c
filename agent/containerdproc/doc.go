// Package containerdproc runs a private containerd for the agent's
// --containerd=managed mode and for tests: it writes the daemon's config
// (root, state and sockets under one directory; the CRI plugin disabled so
// the daemon stays light and never touches CNI), starts the binary, waits
// until the socket answers, restarts it when it dies (Supervise) and, on
// Stop, leaves nothing running or mounted behind.
//
// It owns only the containerd process and what that process left behind
// (tasks, shims, mounts under its directory). It never deletes images,
// containers or snapshots: those belong to whoever made them, and a managed
// containerd's root survives agent restarts on purpose.
//
// Shims run in their own process groups so that they outlive a containerd
// restart; that is what lets a node restart containerd without restarting
// its containers. Stop is the one place that deliberately ends them: first
// through containerd's own API (kill and delete every task, so runc removes
// its state and cgroups), then, for anything that survived, by finding the
// shims that name our socket in their command line.
//
// A managed containerd outlives the agent on purpose (containers do not
// need the agent), so Start, finding a daemon it started earlier on the
// same directory (same config path) still answering, adopts it instead of
// failing; a foreign daemon on the socket is ErrAlreadyRunning.
//
// StartForTest (testing.go) is the helper other packages' tests use to get a
// real containerd on a private socket under a short temporary directory.
package containerdproc
