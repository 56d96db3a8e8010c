// Package network owns a node's pod networking: one network namespace per
// pod, attached to the node through CNI (Debian's containernetworking-plugins:
// bridge with host-local IPAM over the node's podCIDR, portmap for the pods
// that have hostPorts; lo is brought up by the agent), and the host-gw routes that carry traffic to other nodes'
// podCIDRs.
//
// Pods have no sandbox ("pause") container. A pod's network namespace is a
// file, <DataDir>/netns/<pod uid>, onto which the namespace's nsfs inode is
// bind-mounted; every container of the pod joins it by path. The mount is a
// plain file bind mount that inherits its parent's propagation, so
// containerd and runc (which must open the path) see it in the same places
// the agent does; nothing here makes mounts shared or private.
//
// The Manager acts in the network namespace the agent runs in (the node's).
// CNI plugins are child processes and so act there too, as the host side.
// Entering a pod's namespace (to create it, or to open a socket in it for
// port-forward) happens on a dedicated, locked OS thread that is switched
// back afterwards; if switching back fails the thread is left locked so the
// Go runtime destroys it instead of reusing it in the wrong namespace.
//
// Everything needed to undo a pod's network survives an agent restart:
// <DataDir>/state/<uid>.json records the pod's netns path, IP, port
// mappings and the exact CNI configuration used for ADD, and is written
// before ADD runs, so a crash mid-setup still leaves enough to run DEL.
// libcni's cache (<DataDir>/cni) and host-local's leases (<DataDir>/ipam)
// live under DataDir for the same reason. New never touches existing pod
// namespaces: a restarted agent must not disturb running pods.
//
// Decisions:
//   - bridge has ipMasq off: pod-to-pod traffic across nodes keeps pod IPs
//     (host-gw), and masquerading traffic leaving the cluster is a node
//     policy this package does not own.
//   - Routes this package installs carry their own routing protocol number
//     (routeProtocol), which is how SyncRoutes finds and replaces its own
//     routes after a restart without touching anyone else's.
//   - The pod side of a lost namespace (node reboot: the mount is gone, the
//     file and state remain) is handled by passing an empty netns to CNI DEL,
//     which still releases the IP and the port mappings.
//
// The package must not change anything outside the namespace it runs in,
// except the bind mounts under DataDir/netns.
package network
