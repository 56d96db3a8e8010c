// Package agent is the node agent (the kubelet of Flotilla): it registers
// its Node, keeps the Node's status true, and wires the parts that do the
// work: pods (agent/pods) on a container runtime (agent/runtime, on
// containerd), their network (agent/network), and the agent endpoint for
// logs, exec, port-forward and images (agent/server). It is an API client
// only.
//
// Decisions, and why:
//
//   - The agent's API client names no master. Each new connection asks a
//     dialer for one: the master that answered last, then --server
//     addresses, then every master gossip reports alive. A master that dies
//     breaks its connections; client-go dials again and lands elsewhere.
//   - Health is gossip's job. The Node's status is written only when what
//     the agent knows changes (containerd reachable, pod network ready,
//     podCIDR, addresses) or when the stored status drifted from it (the
//     node lifecycle controller marks an unreachable node Unknown; the
//     agent puts its conditions back once it is reachable). A periodic
//     comparison writes nothing when they agree: no heartbeats through Raft.
//   - Routes to other nodes' podCIDRs (host-gw) follow the Node list.
//   - Stopping the agent leaves its containers running; the next start
//     adopts them by their pod UID label (package agent/pods).
package agent
