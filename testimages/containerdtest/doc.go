// Package containerdtest starts a private containerd for a test: its own
// config, root, state and socket under the test's temporary directory, so
// tests never touch a containerd the machine may run, and everything it
// made is gone when the test ends (tasks killed, containers and snapshots
// removed, the daemon stopped, leftover shims and mounts cleaned up).
//
// It drives containerd with the ctr command, the way an operator would,
// so it needs no containerd client code of its own.
package containerdtest
