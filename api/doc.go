// Package api is the Kubernetes-compatible HTTP API that every master serves.
//
// # What it owns
//
// Routing (gorilla/mux) of /api/v1/..., /apis/apps/v1/... and
// /apis/rbac.authorization.k8s.io/v1/... (Roles, ClusterRoles and their
// bindings, validated as kube's, with kube's default roles created by
// EnsureDefaults; rbac.go, rbac_defaults.go) (namespaced,
// cluster-scoped and all-namespace paths, legacy /watch/ paths and
// subresources); decoding request bodies (JSON, YAML, protobuf) into
// k8s.io/api types with fieldValidation=Strict|Warn|Ignore; defaulting and
// validation as kube-apiserver does for the fields Flotilla serves;
// stamping uid, creationTimestamp and generation; the verbs create, get,
// list, watch, update, patch (JSON, merge and strategic merge), delete and
// deletecollection; status/scale/binding/eviction subresources; the
// agent-backed subresources pods/log, pods/exec, pods/portforward and
// nodes/proxy (proxy.go: options validated and the container defaulted as
// kube-apiserver does, then proxied to the node's agent endpoint at its
// InternalIP and status.daemonEndpoints.kubeletEndpoint.port); ClusterIP
// and NodePort allocation; discovery (plain and aggregated v2), /version,
// /healthz, /livez, /readyz and /metrics; Table output for kubectl get
// (list, get and watch; kube's printer columns for our resources, Name and
// Age otherwise); every error as a metav1.Status.
//
// It talks to the Raft group only through Cluster (Apply, ReadIndex,
// Store), which *cluster.Node satisfies and apitest.Cluster doubles.
//
// # What it must not do
//
// It never writes the FSM except through Cluster.Apply, never reads a clock
// inside a transaction (times and UIDs are stamped here, before Apply), and
// holds no cache of its own: every read is the local fsm.Store. It does not
// claim the /internal/ and /flotilla/ HTTP prefixes (cluster.Node.Handler
// serves them next to this handler). Authentication, authorization and
// audit (package api/auth) plug in through Config.Middleware; TLS is the
// listener's; OpenAPI documents through Config.Extra. The self-reviews
// kubectl auth can-i and whoami send (selfreview.go) are answered here,
// never stored: SelfSubjectAccessReview asks Config.Authorizer about the
// user Middleware put in the context (503 without one), SelfSubjectReview
// returns that user (400 "no user present on request" without one, as kube).
//
// Security pieces that live here: Secrets are sealed (Config.Seal) in
// commit and opened in decodeKV/getCurrent, so every verb and the watch
// see plaintext while the store holds ciphertext (seal.go);
// serviceaccounts/token issues pod-bound ServiceAccount tokens
// (tokenrequest.go, Config.ServiceAccountKey); pod creation runs kube's
// ServiceAccount admission (sa_admission.go: the kube-api-access projected
// volume); the API reaches agents over HTTPS with the master's
// certificate (Config.AgentTLS).
//
// # Decisions
//
// Keys: /<group>/<resource>/<namespace>/<name>, the core group written
// "core"; cluster-scoped objects /<group>/<resource>/<name>. Values are the
// object's JSON with apiVersion and kind and without resourceVersion.
// Allocations live beside them: /flotilla/allocations/clusterips/<ip> and
// /flotilla/allocations/nodeports/<port>, valued with the owning Service's
// key, claimed with CompareAbsent in the transaction that writes the Service
// and deleted in the one that removes it, so two masters cannot hand out
// one address. 10.96.0.1 (the first address of ServiceCIDR) is reserved for
// default/kubernetes, which EnsureDefaults creates with the default namespaces.
//
// resourceVersion is the key's ModRevision (the Raft index of its last
// write); a list's is the revision of the view it read. Reads: no
// resourceVersion = linearizable (ReadIndex, then the local store); "0" = the
// local store as it is; N = the local store once it has applied N (waiting
// up to Config.FutureRevisionWait, then 504 "Too large resource version"
// with Retry-After, as kube-apiserver). resourceVersionMatch=Exact (and the
// legacy limit+resourceVersion form) reads the retained view at N or 410.
// Continue tokens are kube's format, base64 of {"v","rv","start"}; a token
// whose view the store no longer retains is 410 Expired.
//
// Writes compare ModRevision: an update with a stale resourceVersion is 409
// Conflict; an update, patch or delete without one re-reads and retries; a
// write that changes nothing is skipped. create compares the key's absence
// (409 AlreadyExists) and the namespace's revision (a namespace being
// deleted refuses new content with 403).
//
// Watches are served from the local store's history by any master:
// ADDED/MODIFIED/DELETED as seen through the selectors (an object that stops
// matching is DELETED, one that starts matching ADDED), the current state
// first when resourceVersion is unset or "0" or sendInitialEvents=true (then
// the "k8s.io/initial-events-end" BOOKMARK that client-go's watch-list
// waits for), periodic BOOKMARKs carrying the last revision delivered, and an
// ERROR event with a 410 Expired Status when the revision is older than the
// history or the store drops the watcher (too slow, restored snapshot).
// Server.CloseWatches (on shutdown) ends every stream cleanly and answers
// later watches 503, so clients re-watch on another master.
//
// Deletion: propagationPolicy Orphan/Foreground add the orphan and
// foregroundDeletion finalizers (the garbage collector removes them); an
// object with finalizers gets deletionTimestamp and deletionGracePeriodSeconds
// 0 and stays until an update removes the last finalizer, which deletes it.
// A pod bound to a node is deleted gracefully (deletionTimestamp = now +
// grace) and stays until the agent, or a delete with grace 0, removes it; an
// unbound or finished pod goes at once. A namespace becomes Terminating and
// stays until the namespace controller empties spec.finalizers (finalize).
//
// ServiceAccount tokens (tokenrequest.go, sa_admission.go): the
// serviceaccounts/token subresource answers TokenRequest with an ES256 JWT
// (internal/satoken) signed by Config.ServiceAccountKey (none: 503), 1h by
// default, 10 minutes at least, cut to 48h at most, audience the issuer
// unless asked, optionally bound to a pod that must exist with the given
// uid (404, 409) and run as that ServiceAccount (400). Pod create runs
// kube's ServiceAccount admission: serviceAccountName defaults to
// "default", a named ServiceAccount must exist (403), and unless
// automountServiceAccountToken is false the projected kube-api-access-*
// volume (token, ca.crt from ConfigMap kube-root-ca.crt, namespace) is
// mounted at /var/run/secrets/kubernetes.io/serviceaccount. A missing
// "default" ServiceAccount is accepted, not waited for (its controller
// creates it just after the namespace); without a signing key no volume is
// added, as no token could fill it.
//
// # Not supported (answered, never ignored)
//
// Server-side apply (415 naming client-side apply instead); volume types other than
// emptyDir, configMap, secret, hostPath, projected (serviceAccountToken,
// configMap, secret, downwardAPI) and downwardAPI; ephemeral containers,
// block volume devices, resource claims, dual-stack Services (all 422 "not
// supported by Flotilla"); watch streams in protobuf (JSON only; every
// client-go client accepts it); PodDisruptionBudgets (every eviction is
// allowed); pods/attach (400: the runtime keeps no stdin open to attach
// to; use exec); log stream selection (stream=Stdout|Stderr, 422);
// gRPC probes, httpGet/tcpSocket/sleep lifecycle hooks, stop signals,
// hostPID, hostIPC, shareProcessNamespace, user namespaces, sysctls, mount
// propagation and Windows options (all 422 "not supported by Flotilla");
// TokenRequest bound to anything but a pod (400); managedFields are not
// tracked.
//
// # Agent proxying
//
// A pod whose node is not registered, reports no address or no agent port
// answers 503 "no agent endpoint for node X" (an unreachable agent: 503
// "error trying to reach the agent of node X"). The agent speaks the
// streaming protocols itself (WebSocket v5 exec and SPDY-over-WebSocket
// port-forward included), so the API only proxies upgrades, unlike
// kube-apiserver, which translates them to SPDY. Agent traffic is plain
// HTTP until the security issue; the client's Authorization header is not
// passed on. nodes/proxy has neither the body limit nor the request
// timeout (image archives). pods/log is streamed with a flush per chunk.
package api
