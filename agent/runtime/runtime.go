package runtime

import (
	"context"
	"errors"
	"io"
	"time"
)

// Errors a Runtime returns, matched with errors.Is.
var (
	// ErrNotFound: no such container or image.
	ErrNotFound = errors.New("not found")
	// ErrUnavailable: the runtime (containerd) cannot be reached; the agent
	// reports its Node not ready and keeps retrying.
	ErrUnavailable = errors.New("container runtime unavailable")
)

// Container labels: every container Flotilla makes carries them, so an agent
// that restarts finds its containers again by listing, with no state of its
// own. Values are plain strings.
const (
	LabelPodUID        = "io.flotilla.pod.uid"
	LabelPodName       = "io.flotilla.pod.name"
	LabelPodNamespace  = "io.flotilla.pod.namespace"
	LabelContainerName = "io.flotilla.container.name"
	LabelAttempt       = "io.flotilla.container.attempt" // restart count when made, decimal
)

// State is a container's lifecycle state.
type State string

const (
	StateCreated State = "created" // made, never started
	StateRunning State = "running"
	StateExited  State = "exited" // its process ended (or it could not start)
	StateUnknown State = "unknown"
)

// Reasons for an exited container (Container.Reason), as the kubelet names them.
const (
	ReasonCompleted  = "Completed"          // exit code 0
	ReasonError      = "Error"              // non-zero exit code
	ReasonOOMKilled  = "OOMKilled"          // killed by the kernel for exceeding its memory limit
	ReasonStartError = "StartError"         // the process could not be started (e.g. no such executable); ExitCode 128
	ReasonCannotRun  = "ContainerCannotRun" // the task could not be created
)

// Image is an image in the runtime's store.
type Image struct {
	// Ref is the full reference the image is stored under,
	// e.g. "docker.io/library/busybox:1.36" or "flotilla.test/toolbox:v1".
	Ref string
	// ID is the digest of the image's config ("sha256:..."), what
	// containerStatuses[].imageID reports.
	ID string
	// Size is the size of the image's content in bytes.
	Size int64
}

// Mount binds a host path into a container.
type Mount struct {
	HostPath      string
	ContainerPath string
	ReadOnly      bool
}

// ContainerSpec is everything needed to create one container of a pod.
type ContainerSpec struct {
	PodUID, PodNamespace, PodName string
	// Name is the container's name in the pod; Attempt its restart count.
	Name    string
	Attempt int
	// Image is a reference already present in the store (GetImage succeeded).
	Image string
	// Command replaces the image's entrypoint and Args its cmd, as in
	// Kubernetes (either empty keeps the image's).
	Command, Args []string
	// Env is "K=V" entries, appended after the image's own.
	Env []string
	// WorkingDir, when set, replaces the image's.
	WorkingDir string
	Mounts     []Mount
	// NetNSPath is the pod's network namespace (a bind-mounted nsfs file);
	// "" means the host's network namespace (hostNetwork pods).
	NetNSPath string
	// Hostname is the container's UTS hostname (the pod name; the node's
	// for hostNetwork pods).
	Hostname string
	// CPUMilli is the cpu limit in millicores (0 = none); CPUShares the
	// request as cgroup shares (0 = default). MemoryLimit is bytes (0 = none).
	CPUMilli    int64
	CPUShares   uint64
	MemoryLimit int64
	// LogPath is the file the container's stdout and stderr go to, in the
	// CRI log format (see package agent/logs); its directory exists.
	LogPath string
	// TTY and Stdin as in the pod spec.
	TTY, Stdin bool
	// RunAsUser and RunAsGroup override the image's user when set.
	RunAsUser, RunAsGroup *int64
	// Privileged gives the container all capabilities and devices;
	// ReadOnlyRootfs mounts its root filesystem read-only.
	Privileged, ReadOnlyRootfs bool
	// CapAdd and CapDrop adjust the default capability set ("NET_ADMIN",
	// with or without the "CAP_" prefix; "ALL" in CapDrop drops all).
	CapAdd, CapDrop []string
}

// Container is a container as the runtime sees it now.
type Container struct {
	ID                            string
	PodUID, PodNamespace, PodName string
	Name                          string
	Attempt                       int
	// Image is the reference it was made from; ImageID that image's ID.
	Image, ImageID string
	State          State
	CreatedAt      time.Time
	StartedAt      time.Time // zero until started
	FinishedAt     time.Time // zero until exited
	ExitCode       int32
	// Reason and Message explain an exited container (Reason* constants).
	Reason, Message string
	LogPath         string
}

// EventType says what happened to a container.
type EventType string

const (
	EventStarted EventType = "started"
	EventExited  EventType = "exited"
	EventOOM     EventType = "oom"
)

// Event tells the agent a container changed, so the pod's worker looks at
// it now rather than at its next resync.
type Event struct {
	Type        EventType
	ContainerID string
	PodUID      string
}

// TermSize is a terminal's size, for exec with a TTY.
type TermSize struct{ Width, Height uint16 }

// ExecOptions is one command run in a running container.
type ExecOptions struct {
	Cmd    []string
	Stdin  io.Reader // nil: no stdin
	Stdout io.Writer // nil: discarded
	Stderr io.Writer // nil: discarded (with TTY, stderr goes to Stdout)
	TTY    bool
	Resize <-chan TermSize // may be nil
	// Env is extra "K=V" entries on top of the container's.
	Env []string
}

// Version names the runtime, for the Node's nodeInfo.containerRuntimeVersion
// ("containerd://1.6.20").
type Version struct{ Name, Version string }

// Runtime runs containers. Every method is safe for concurrent use; ctx
// bounds the call, never the container's life.
type Runtime interface {
	// Version answers when the runtime is reachable; the agent uses it as
	// its health check.
	Version(ctx context.Context) (Version, error)

	// PullImage fetches ref from its registry and unpacks it.
	PullImage(ctx context.Context, ref string) (Image, error)
	// GetImage returns a local image, ErrNotFound if absent. A reference
	// without a registry or tag is normalised as Docker does
	// ("busybox" → "docker.io/library/busybox:latest").
	GetImage(ctx context.Context, ref string) (Image, error)
	// ImportImage loads an OCI or Docker archive (tar) and unpacks it.
	ImportImage(ctx context.Context, r io.Reader) ([]Image, error)
	ListImages(ctx context.Context) ([]Image, error)
	RemoveImage(ctx context.Context, ref string) error

	// CreateContainer makes a container (and its root filesystem) but
	// starts nothing.
	CreateContainer(ctx context.Context, spec ContainerSpec) (Container, error)
	// StartContainer starts a created container's process. If the process
	// cannot start, the container is left exited with ReasonStartError and
	// the cause in Message, and the error is returned too.
	StartContainer(ctx context.Context, id string) error
	// StopContainer sends the stop signal (SIGTERM unless the image says
	// otherwise), waits up to grace, then SIGKILL; it returns once the
	// exit is recorded. A container not running is left as it is.
	StopContainer(ctx context.Context, id string, grace time.Duration) error
	// RemoveContainer deletes a container that is not running, with its
	// task and snapshot. Removing one that is gone is not an error.
	RemoveContainer(ctx context.Context, id string) error
	// ContainerStatus returns one container; ErrNotFound if there is none.
	ContainerStatus(ctx context.Context, id string) (Container, error)
	// ListContainers returns every container carrying LabelPodUID, in any
	// state; exit codes, reasons and times survive the agent's and the
	// runtime's restarts.
	ListContainers(ctx context.Context) ([]Container, error)
	// Exec runs a command in a running container and returns its exit code.
	Exec(ctx context.Context, id string, opts ExecOptions) (int, error)
	// Events streams container changes until ctx ends. The channel is
	// closed when ctx ends or the runtime connection is lost (subscribe
	// again); events may be dropped, so the agent also resyncs.
	Events(ctx context.Context) <-chan Event
	Close() error
}
