// Package pods runs the pods bound to one node on a container runtime: it is
// the pod lifecycle half of the kubelet of Flotilla. The agent shell
// (package agent) makes a Manager and calls Run; everything about one pod,
// from its network namespace and volumes to its containers, probes, restarts,
// status and termination, happens here.
//
// How it works: a client-go informer watches the pods with
// spec.nodeName=<node> and queues their UIDs; runtime events and a periodic
// relist queue UIDs too. A worker takes one UID at a time (the workqueue
// never hands the same key to two workers, so each pod's sync is serialized)
// and reconciles what the pod asks for against what the runtime has:
// containers are found by the pod UID label, so the Manager keeps no state
// that a restart could lose. A sync is level-triggered and idempotent: it
// may run any number of times and always converges.
//
// Choices a Kubernetes user may want to know about:
//
//   - Restarting the agent never restarts a container. Running containers
//     of known pods are adopted; containers, network namespaces, volumes
//     and log directories of pods that are gone from the API are stopped and
//     removed.
//   - Restart back-off, phases, conditions, container states and event
//     reasons follow the kubelet (CrashLoopBackOff after the first immediate
//     restart, the back-off reset after 10 minutes of running, and so on).
//   - When the runtime is unreachable (runtime.ErrUnavailable) nothing is
//     written: pods keep their last status and the sync is retried.
//   - /etc/hosts, /etc/hostname and /etc/resolv.conf are files under the
//     pod's directory, bind-mounted into every container unless it mounts
//     that path itself. resolv.conf is the node's (there is no cluster DNS
//     yet), merged with the pod's dnsConfig.
//   - Secret volumes are written to the pod's directory on disk (mode 0700
//     directories), not to a tmpfs as the kubelet does; emptyDir with
//     medium Memory is a tmpfs.
//   - fsGroup and supplementalGroups are not applied (the runtime interface
//     has no supplementary groups); emptyDir directories are mode 0777 as in
//     the kubelet, so non-root containers can write them.
//   - runAsNonRoot is enforced only when runAsUser is set: without it the
//     image's user cannot be checked, so the container is refused
//     (CreateContainerConfigError), the safe side of the policy.
//   - A pod's sync does its work inline: an image pull, a postStart hook
//     or a graceful kill holds that pod's worker (never another pod's) until
//     it is done, so a deletion waits for a pull under way. Probes run on
//     their own goroutines and dial the pod's IP from the agent's network
//     namespace (the node's address for hostNetwork pods).
//   - Status is written through pods/status only when it changed; the last
//     write is remembered so that the informer's lag does not cause
//     rewrites. Graceful deletion ends with a terminal status (Succeeded if
//     every container exited 0, else Failed), then a delete with grace 0
//     and a UID precondition.
//   - A pod asking for something this package cannot do (a volume type it
//     does not know, a gRPC probe, a sidecar init container) is failed
//     up front with reason Unsupported and an event: it never half-runs.
//
// This package must not write the Node object (the agent shell does) and
// must not reach into the runtime's or the network's internals: it uses
// runtime.Runtime and the small Network interface below.
package pods
