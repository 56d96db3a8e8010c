// Package agent is the node agent (the kubelet of Flotilla): it joins the
// gossip pool, registers its Node, runs the pods bound to it through
// containerd with CNI networking, and serves logs and exec to the API
// servers. It is an API client only (issue 5 builds it).
package agent
