// Package controllers runs Flotilla's controllers: the leader-only loops
// that turn what users asked for (Deployments, ReplicaSets, Services,
// namespace deletions, nodes joining and leaving) into what the cluster
// has (ReplicaSets, Pods, Endpoints, pod CIDRs, taints, evictions).
//
// # What it owns
//
// One file per controller, each a Kubernetes controller of the same name:
//
//   - replicaset.go: keeps spec.replicas pods; adopts matching orphans and
//     releases pods that stop matching; creates in slow-start batches
//     (1, 2, 4, …, stopping at the first failing batch); deletes
//     unscheduled, pending, not-ready, then newest pods first; writes
//     status (replicas, fullyLabeled, ready, available after
//     minReadySeconds, terminating, observedGeneration, ReplicaFailure).
//   - deployment.go (+ deployment_util.go): RollingUpdate (maxSurge,
//     maxUnavailable) and Recreate through one ReplicaSet per template,
//     named <deployment>-<pod-template-hash>; the revision,
//     revision-history, desired-replicas and max-replicas annotations;
//     revisionHistoryLimit; pause/resume; proportional scaling during a
//     rollout; Progressing (with progressDeadlineSeconds) and Available
//     conditions and the status fields exactly as kubectl rollout status
//     and rollout history/undo read them.
//   - endpoints.go: an Endpoints object per Service with a selector
//     (ready and not-ready addresses, ports resolved by name or number);
//     Services without a selector are left alone.
//   - namespace.go: empties a namespace being deleted (every namespaced
//     resource discovery lists), then removes the "kubernetes" finalizer
//     through /finalize.
//   - serviceaccount.go: a "default" ServiceAccount in every namespace.
//   - nodeipam.go: a pod CIDR per node from Config.ClusterCIDR.
//   - podgc.go: finished pods over a threshold, pods of deleted nodes.
//   - garbagecollector.go: ownerReferences: background and foreground
//     cascading deletion, orphaning, blockOwnerDeletion.
//   - nodelifecycle.go: gossip health (NodeHealth) → Node conditions,
//     the unreachable taint, rate-limited evictions.
//   - rootca.go: the kube-root-ca.crt ConfigMap (the cluster CA) in every
//     namespace, which pods' ServiceAccount volumes project.
//
// manager.go builds one shared informer factory, the controllers and one
// event broadcaster, and runs them until its context ends. The cluster
// package runs Manager.Run as a cluster.LeaderService, so the controllers
// run on the Raft leader only and stop when it loses leadership.
//
// # What it must not do
//
// It talks to the API only through k8s.io/client-go (informers for reads,
// typed or REST clients for writes) and keeps no state that is not derived
// from the API on start: a new leader rebuilds everything from its
// informers and picks up where the old one stopped. It never reaches into
// api/, fsm/ or cluster/ internals, and never mutates an object from an
// informer cache (DeepCopy first).
//
// # The pattern
//
// Informer → key queue → reconcile (loop.go): event handlers only enqueue
// keys; workers (Config.Workers per controller) reconcile one key at a
// time; success forgets the key's failures, failure requeues it with
// client-go's per-key exponential backoff, not-found is done. A
// controller that needs to look again later (minReadySeconds, a progress
// deadline, an eviction timeout, namespace content still terminating)
// uses the queue's AddAfter. Pod GC and the node health monitor are the
// two periodic scans: what they look for is an absence or a total, which no
// single event announces.
//
// # Decisions
//
// Expectations (expectations.go): the ReplicaSet controller records the
// creations and deletions each sync asks for and does nothing more for
// that ReplicaSet until the informer has shown them (or 5 minutes pass),
// so a lagging cache never makes it create twice. Creations are counted,
// deletions tracked by pod key (seen once whether the update that sets
// deletionTimestamp or the delete arrives first).
//
// Adoption re-reads the owner live before the first adoption of a sync,
// and patches with a strategic merge patch that names the dependent's uid,
// so a replaced namesake is never adopted.
//
// The pod-template-hash is FNV-32a over the template's JSON (plus
// collisionCount), encoded as Kubernetes encodes it. It need not equal
// kube-controller-manager's: the new ReplicaSet is found by comparing
// templates without the hash label, the label only has to exist and be
// consistent.
//
// A rolling update counts at most spec.replicas available pods per
// ReplicaSet when deciding how far to scale old ones down: a ReplicaSet's
// status written before its last scale-down still counts the pods being
// deleted, and trusting it can (in Kubernetes too) dip below
// replicas - maxUnavailable for a moment.
//
// The Deployment's revision annotation is written with a metadata merge
// patch: Flotilla's status subresource keeps only status, where
// kube-controller-manager sends it along with a status update.
//
// Garbage collection covers pods, replicasets, deployments, services,
// endpoints, configmaps, secrets, serviceaccounts (and nodes and
// namespaces as owners). Events are left out on purpose: an informer over
// all events would hold every event in memory, events rarely carry
// ownerReferences, and they expire after an hour anyway. An owner
// reference to a kind outside that list is never treated as dangling. No
// dependency graph is kept: each informer indexes objects by owner UID.
// Before deleting a dependent the collector confirms a missing owner with
// a live read (the owner's informer may lag behind the dependent's).
//
// Node lifecycle: an unreachable node is one gossip reports dead or left,
// or has not known for NodeUnknownGracePeriod. The countdown to eviction
// starts at the unreachable taint's timeAdded, stored on the Node, so it
// survives a leader change (timeAdded has one-second precision; the
// leader that added the taint uses its exact time). Evictions are a plain
// graceful delete of the pod (its owner replaces it); pods whose node
// never comes back stay Terminating, as in Kubernetes, until the node is
// deleted and pod GC force-deletes them. While more than half of all
// nodes are unreachable no pod is evicted (the taints and conditions stay:
// they are true as far as this leader can tell). Unlike Kubernetes there
// are no zones and no not-ready taint: gossip gives one signal, reachable
// or not.
//
// Node IPAM is IPv4 only and single-worker; the Node objects are the only
// record of what was handed out. A released range is reused last (the
// search continues from the last allocation), so a just-deleted node's
// routes have time to go.
//
// Events are core/v1 Events through client-go's record.EventBroadcaster,
// whose correlator aggregates similar events and rate-limits each source
// and object (a burst of 25, then one per 5 minutes), so events never
// crowd out real writes. Components and reasons are Kubernetes': e.g.
// replicaset-controller SuccessfulCreate/SuccessfulDelete/FailedCreate,
// deployment-controller ScalingReplicaSet, node-controller NodeNotReady,
// taint-eviction-controller TaintManagerEviction, cidrAllocator
// CIDRNotAvailable.
package controllers
