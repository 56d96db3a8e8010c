// Package server is the node agent's endpoint (--agent-port, 10250): the
// far end of the API's pods/log, pods/exec, pods/portforward and
// nodes/proxy, on the kubelet's paths so the API proxies to it as
// kube-apiserver proxies to a kubelet.
//
//	GET      /containerLogs/{namespace}/{pod}/{container}   follow, tailLines, sinceSeconds, sinceTime, timestamps, limitBytes, previous
//	GET|POST /exec/{namespace}/{pod}[/{uid}]/{container}    command (repeated), input|stdin, output|stdout, error|stderr, tty
//	GET|POST /portForward/{namespace}/{pod}[/{uid}]         port (WebSocket v4 only)
//	GET      /images                                        the runtime's images (ImageList)
//	POST     /images                                        body: an OCI or Docker archive; answers the imported ImageList
//	GET      /healthz                                       "ok"
//
// # What it owns
//
// Finding a pod's containers from the runtime's labels (no pod cache of its
// own: a restarted agent serves at once), reading their log files (package
// agent/logs), and the streaming protocols kubectl speaks: for exec,
// WebSocket v5.channel.k8s.io / v4.channel.k8s.io and SPDY (v4 down to v1);
// for port-forward, SPDY over a WebSocket tunnel (SPDY/3.1+portforward.k8s.io,
// what kubectl tries first), plain SPDY, and the v4 WebSocket channels.
// The SPDY framings and stream bookkeeping come from k8s.io/cri-streaming,
// the same code the kubelet's CRI streaming server runs.
//
// # What it must not do
//
// It never starts, stops or changes a container (the pod workers own that),
// and it does not authorize: the API decides who may reach which pod, and
// TLS comes with the security issue.
//
// # Decisions
//
// kube-apiserver translates WebSocket exec (v5) and tunnelled port-forward
// into SPDY before talking to the kubelet; Flotilla's API is a plain
// upgrade-aware proxy instead, so this endpoint speaks those protocols
// itself. Errors are metav1.Status JSON with kubelet's wording (e.g.
// `previous terminated container "c" in pod "p" not found`, 400), so the API
// and kubectl show them as kube does.
//
// A pod is found by namespace and name among the containers' labels; when a
// pod was deleted and made again under its name while the old containers
// linger, the newest wins (the API passes the uid on exec and port-forward
// paths to be exact). The current container is the highest attempt; the
// previous one, the attempt before it.
//
// Port-forward dials 127.0.0.1:<port> (then [::1]) inside the pod's network
// namespace through Config.Network; a pod the network does not know (a
// hostNetwork pod, or Network nil) is dialled on the node's loopback.
package server
