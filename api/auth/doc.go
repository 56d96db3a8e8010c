// Package auth authenticates, authorizes and audits the requests of every
// master's HTTPS port (the Kubernetes API, /flotilla/... and /internal/...).
//
// # What it owns
//
// Authentication, in kube-apiserver's order: a client certificate verified
// by the TLS layer against the cluster CA (CN = user, O = groups), then a
// bearer token: the admin token (compared in constant time; user
// flotilla:admin in system:masters) or a ServiceAccount JWT (verified by
// Config.VerifySA; its audience must be one of Config.Audiences; its
// ServiceAccount must exist with the token's UID and, for a pod-bound
// token, the pod with its UID, not deleted more than 60 s ago — kube's
// rule, so a terminating pod can still talk to the API). Every
// authenticated user also gets system:authenticated. No credentials: 401
// except on the anonymous paths (health, version, join). Bad credentials:
// the same 401, whatever was wrong (the reason goes to the debug log).
//
// Authorization, first answer wins:
//  1. /internal/... only for O flotilla:servers — checked before
//     system:masters, because the admin token is not a server;
//  2. system:masters: anything;
//  3. the node authorizer for system:node:<name> users in system:nodes
//     (Kubernetes' Node authorizer and NodeRestriction in one): reads of
//     nodes, pods, services, endpoints, namespaces; create/update/patch of
//     events; create/update/patch of its own Node (create names the node in
//     the body, which is read for it) and nodes/status; update/patch of
//     pods/status and delete of pods bound to it; get of the Secrets,
//     ConfigMaps and ServiceAccount its pods reference and
//     serviceaccounts/token for those ServiceAccounts; GET
//     /flotilla/v1/gossip/keyring. Its denials of writes to nodes and pods
//     are final (admission in kube); for anything else it has no opinion
//     and RBAC decides;
//  4. RBAC from rbac.authorization.k8s.io/v1 objects with kube's matching
//     (verbs, apiGroups, resources with "*", "x/sub", "*/sub", "x/*",
//     resourceNames, nonResourceURLs with a trailing "*"; RoleBindings
//     grant only in their namespace and never non-resource URLs);
//  5. deny: 403 worded as kube-apiserver's.
//
// A GET of pods/exec, attach or portforward (a websocket upgrade) needs
// create as well as get, as in kube-apiserver since 1.31.
//
// Request attributes follow kube's RequestInfo rules, except where
// Flotilla's handlers read a request differently: then they follow the
// handlers, because the decision must be about what will be served (see
// RequestAttributes).
//
// Audit: with Config.AuditLog, one JSON line per mutating request (method
// not GET/HEAD/OPTIONS), including those refused with 401 or 403.
//
// # Decisions
//
// Authorization reads memory only on the common paths: system:masters
// needs no attributes at all; RBAC is an immutable snapshot indexed by
// user and group, rebuilt by one goroutine after each batch of changes
// from an fsm watch on /rbac.authorization.k8s.io/ and swapped in
// atomically, so a request takes no lock; the node authorizer reads a
// single pod by key (decoded once per ModRevision) and keeps a
// watch-maintained index of what bound pods reference (pod -> node ->
// Secret/ConfigMap/ServiceAccount), because "which pod on this node uses
// this Secret" cannot be answered by key. Like kube's informers these
// caches are eventually consistent: a RoleBinding works a moment after it
// is written. A node's read that misses the index waits up to 250 ms for
// the index to catch up, so a pod bound a moment ago is found.
//
// Checks that depend on one object (a node's write to a pod, a token's
// ServiceAccount and pod) use Config.ReadIndex, when given, once on a miss:
// the object may be newer than this master's store. A pod that is missing
// even then lets a node's status write or delete through to the handler,
// whose 404 the agent treats as done; without ReadIndex the check fails
// closed.
//
// Verified ServiceAccount tokens are cached until they expire (an ES256
// verification costs more than everything else here); revocation is by
// deleting the ServiceAccount or pod, which is checked on every request.
//
// # What it must not do
//
// It never writes the store, never lists the store per request, and never
// trusts a client-supplied identity other than a CA-verified certificate
// or a token it verified. Impersonation headers are not honoured (they are
// ignored, so a request is always served as its real user).
package auth
