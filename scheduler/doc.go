// Package scheduler binds pending pods to nodes: a priority queue with
// back-off, filter and score plugins built as an iterator chain that records
// why each node was rejected, and a binder. It is pure logic over a read-only
// view of nodes and pods plus a binder interface; it never reaches into the
// store or the API server's internals (issue 4 builds it).
//
// # What it owns
//
//   - Engine: the scheduler without client-go. Fed node and pod events, it
//     keeps a Cache (nodes, bound and assumed pods) and a Queue (active,
//     backoff, unschedulable), and its Run loop places pods and binds them
//     through a Binder, reporting outcomes through a Reporter. Tests and
//     benchmarks drive it directly.
//   - Scheduler (adapter.go): the client-go edge. Informers on nodes and
//     pods feed a fresh Engine per Run; the Binder POSTs pods/binding; the
//     Reporter writes core/v1 Events (Scheduled, FailedScheduling) and the
//     PodScheduled=False condition. Run is a leader service: it returns when
//     its context is cancelled and starts from scratch on the next term.
//
// See README.md for the pipeline (queue → snapshot → filter chain → score →
// assume → bind).
//
// # What it must not do
//
// Import api/, cluster/, fsm/ or any store; mutate an object it got from an
// informer (the pods it reports on are DeepCopied first); wait for a bind's
// round trip before placing the next pod (that is what assumed pods are
// for); schedule before both informers have delivered their initial lists
// (it would overcommit nodes whose pods it has not seen yet).
//
// # Decisions
//
//   - Which pods: spec.nodeName empty, spec.schedulerName
//     "default-scheduler" (Options.SchedulerName) or empty, not being
//     deleted, not Succeeded/Failed, no spec.schedulingGates (as kube).
//   - Readiness: a node whose Ready condition is not True is treated as
//     carrying the taint kube's node lifecycle controller would give it
//     (node.kubernetes.io/not-ready:NoSchedule, or unreachable when
//     Unknown); a missing condition counts as not ready. So it is refused
//     with kube's wording ("node(s) had untolerated taint
//     {node.kubernetes.io/not-ready: }") whether or not a controller has
//     tainted it yet, and a pod tolerating that taint may still go there.
//     Cordoned nodes likewise admit pods tolerating
//     node.kubernetes.io/unschedulable:NoSchedule.
//   - Reasons use kube-scheduler's wording. The summary sorts reasons by
//     node count, most first, ties in text order, as issue 4's example
//     reads. kube itself sorts the "N reason" strings as text (so "10 …"
//     sorts before "2 …"); the words are the same, the order may differ.
//     Untolerated taints name key and value ("{dedicated: gpu}") as issue 4
//     asks and kube ≤ 1.34 did; kube ≥ 1.35 says only "node(s) had
//     untolerated taint(s)" so that tenants cannot read node taints. Change
//     TaintReason if Flotilla grows tenants. No preemption, so no
//     "preemption: …" suffix.
//   - Sampling: like kube's percentageOfNodesToScore, a cycle stops
//     filtering after finding max(100, p·N) feasible nodes, p adaptive
//     (50 % minus 1 % per 125 nodes, at least 5 %) unless configured, and
//     the next cycle starts where this one stopped.
//   - Spreading is by controller ownerReference, or for a pod without a
//     controller by identical labels in its namespace; not by zone.
//   - Assumed pods expire AssumeTTL (default 5 min) after their bind
//     succeeded if the informer never shows them bound; never while the
//     bind is in flight.
//   - Requests are kube's (component-helpers/resource): containers summed,
//     the biggest init container if larger, sidecars added, plus overhead;
//     pod-level resources when set. Scores use kube's defaults for
//     containers without requests (100m cpu, 200 MiB).
//   - Node affinity is matched by this package's own compiled matcher
//     (affinity.go): same semantics as component-helpers' nodeaffinity, but
//     it allocates nothing per node, which matters at 5,000 nodes.
//     Tolerations use k8s.io/api's Toleration.ToleratesTaint (numeric Gt/Lt
//     tolerations off, as kube's default).
package scheduler
