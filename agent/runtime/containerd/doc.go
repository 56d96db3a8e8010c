// Package containerd implements runtime.Runtime on containerd (the v1.7
// Go client, which drives containerd 1.6 and later) with runc. It owns the
// translation from a pod's container to containerd objects: the OCI spec
// (image config with Kubernetes' command/args rules, env, bind mounts,
// cgroup limits, security settings), the container and its snapshot, the
// task and its output, exec processes, images, and the exit record.
//
// There is no pod sandbox: a container joins the network namespace the
// agent made for its pod (ContainerSpec.NetNSPath), or the host's.
//
// Why exits live in labels: the agent keeps no state of its own, and a
// containerd task must be deleted once it exits (its shim, a process per
// container, only goes away then). So when a task exits (seen on the event
// stream, or by Status/List finding it stopped) the exit code, time and
// reason are written into the container's labels (io.flotilla.exit.*)
// and only then is the task deleted. Exit information therefore survives
// both agent and containerd restarts, and a stopped container costs no
// process.
//
// Container IDs are derived from (pod UID, container name, attempt), so a
// create retried after a crash finds the container it already made rather
// than leaking a second one; the snapshot key is the container ID.
//
// The connection to containerd is made lazily and kept: New succeeds with
// containerd down, every call then fails fast with runtime.ErrUnavailable,
// and gRPC reconnects by itself when the daemon returns. A background
// monitor records exits even when nobody listens to Events, and sweeps for
// exits it missed whenever its subscription is re-established.
//
// Container output goes through FIFOs, as with containerd's CRI plugin,
// and is written to ContainerSpec.LogPath by this process (package
// agent/logs: CRI format, rotation), not by a log driver process per
// container. StartContainer makes <Config.FIFODir>/<container ID>/stdout
// and stderr (stdout alone with a TTY), opens their read ends, creates the
// task on them and starts a copier: a goroutine per stream. The runc shim
// opens both ends of each FIFO and keeps them until the container's output
// is over, so while no agent reads, the container's writes wait in the
// FIFO and block once it is full (64 KiB) rather than fail. Close stops
// the copiers and leaves the tasks alone; the next Runtime (New, and each
// time the monitor subscribes again) reattaches a copier to every task of
// the namespace that has none, reading the FIFO paths from containerd and
// the log path from the io.flotilla.log.path label. A container's output is
// read to EOF before its exit is recorded, so a container reported exited
// has all its output in the log; the FIFO directory goes with the task.
// What a container writes in its last moments is lost if it exits while
// no agent runs and the FIFO has room for it: the shim then closes the
// FIFO, and a pipe nobody holds keeps nothing. The price of the design:
// the shim copies every byte once more (container pipe to FIFO), CPU that
// containerd's binary log driver did not spend; what it saves is a logger
// process per container, megabytes each.
//
// The container gets no stdin FIFO: ContainerSpec.Stdin is accepted and
// ignored, and attach is not supported.
package containerd
