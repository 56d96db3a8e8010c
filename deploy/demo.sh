#!/usr/bin/env bash
# deploy/demo.sh [up|down]: the echo demo on a running cluster.
#
#   up (default)  import the toolbox test image into every Ready node, create
#                 Deployment "echo" (3 replicas, readiness on /readyz) and a
#                 NodePort Service "echo", wait for the rollout, then send a
#                 few requests through the ClusterIP and the NodePort and
#                 print which pod answered each.
#   down          delete the Deployment and the Service.
#
# The cluster is the one $KUBECONFIG names, else `make run`'s
# ($DATA/kubeconfig, ./data/kubeconfig by default). Both commands can be run again: up applies the same
# objects, down ignores what is already gone.
#
# Environment:
#   KUBECONFIG      the cluster (default: $DATA/kubeconfig)
#   DATA            make run's data dir (default: ./data, as in the Makefile)
#   DEMO_NAMESPACE  namespace of the demo objects (default: default; made if
#                   missing, and left in place by down)
#   DEMO_REQUESTS   requests per path (default: 6)
#   DEMO_NODE_EXEC  a command prefix that runs a command on a node, used for
#                   the requests (e.g. "nsenter --net=/run/netns/flc-a1");
#                   deploy/cluster.sh demo sets it. Without it the requests
#                   go from this shell when the address answers here, else
#                   from inside an echo pod (kubectl exec ... /toolbox get).
#   DEMO_VIA        force where the requests go from: node, here or pod
#   FLOTILLA        the flotilla binary (default: ./bin/flotilla)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FLOTILLA=${FLOTILLA:-$ROOT/bin/flotilla}
NS=${DEMO_NAMESPACE:-default}
REQUESTS=${DEMO_REQUESTS:-6}
NODE_EXEC=${DEMO_NODE_EXEC:-}
IMAGE=flotilla.test/toolbox:v1
ARCHIVE=$ROOT/bin/toolbox.tar

say() { printf '==> %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

k() { "$FLOTILLA" kubectl -n "$NS" "$@"; }

setup() {
	[[ -x $FLOTILLA ]] || die "$FLOTILLA not found: run make build first"
	if [[ -z ${KUBECONFIG:-} ]]; then
		local kc=${DATA:-$ROOT/data}/kubeconfig
		[[ -r $kc ]] ||
			die "no cluster: no $kc; start one with 'make run' (or 'make cluster'), or set KUBECONFIG"
		KUBECONFIG=$(cd "$(dirname "$kc")" && pwd)/kubeconfig
		export KUBECONFIG
	fi
	local srv
	srv=$("$FLOTILLA" kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}' 2>/dev/null) ||
		die "cannot read the kubeconfig $KUBECONFIG"
	say "cluster $srv (KUBECONFIG=$KUBECONFIG)"
	"$FLOTILLA" kubectl get --raw /readyz >/dev/null 2>&1 ||
		die "the API at $srv does not answer: is the cluster up? (If that master is down, point the kubeconfig at another: $FLOTILLA kubectl config get-contexts, then config use-context.)"
}

manifest() {
	cat <<YAML
apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo
  labels: {app: echo}
spec:
  replicas: 3
  selector:
    matchLabels: {app: echo}
  template:
    metadata:
      labels: {app: echo}
    spec:
      containers:
      - name: echo
        image: $IMAGE
        imagePullPolicy: IfNotPresent
        args: [serve, --port, "8080", --udp-port, "9090"]
        ports:
        - {name: http, containerPort: 8080}
        - {name: udp, containerPort: 9090, protocol: UDP}
        readinessProbe:
          httpGet: {path: /readyz, port: http}
          periodSeconds: 2
---
apiVersion: v1
kind: Service
metadata:
  name: echo
  labels: {app: echo}
spec:
  type: NodePort
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: udp, port: 9090, targetPort: udp, protocol: UDP}
YAML
}

# fetch URL: the body of one GET, from wherever the address answers:
# DEMO_NODE_EXEC's node, this shell (curl), or an echo pod.
fetch() {
	local url=$1
	case $via in
	node) $NODE_EXEC curl -fsS --max-time 5 "$url" ;;
	here) curl -fsS --max-time 5 "$url" ;;
	pod) k exec "$pod" -c echo -- /toolbox get "$url" ;;
	esac
}

# pick_via URL: where the requests to URL go from (sets via and pod).
pick_via() {
	local url=$1
	pod=$(k get pods -l app=echo --field-selector=status.phase=Running -o jsonpath='{.items[0].metadata.name}')
	if [[ -n ${DEMO_VIA:-} ]]; then
		via=$DEMO_VIA
	elif [[ -n $NODE_EXEC ]]; then
		via=node
	elif command -v curl >/dev/null && curl -fsS --max-time 2 -o /dev/null "$url" 2>/dev/null; then
		via=here
	else
		via=pod
	fi
	case $via in
	node | here | pod) ;;
	*) die "DEMO_VIA=$via: want node, here or pod" ;;
	esac
	case $via in
	node) say "requests from a node ($NODE_EXEC curl)" ;;
	here) say "requests from this machine (curl)" ;;
	pod) say "requests from inside pod $pod (kubectl exec ... /toolbox get)" ;;
	esac
}

# hit NAME URL: REQUESTS requests to URL, one line each naming the pod.
hit() {
	local name=$1 url=$2 i body
	pick_via "$url"
	for ((i = 1; i <= REQUESTS; i++)); do
		if [[ $via == pod && $url == http://127.* ]]; then
			printf '    %-9s %s  ->  skipped: a loopback address is not the node'"'"'s inside a pod\n' "$name" "$url"
			return
		fi
		if body=$(fetch "$url" 2>&1); then
			printf '    %-9s %s  ->  answered by %s (%s)\n' "$name" "$url" \
				"$(sed -n 's/^hostname=//p' <<<"$body")" "$(sed -n 's/^remote=/from /p' <<<"$body")"
		else
			printf '    %-9s %s  ->  FAILED: %s\n' "$name" "$url" "$(tr '\n' ' ' <<<"$body")"
			failed=1
		fi
	done
}

up() {
	setup
	if [[ ! -r $ARCHIVE ]]; then
		say "building the test image (make images)"
		make -C "$ROOT" images
	fi
	say "importing $IMAGE into every Ready node"
	"$FLOTILLA" image import "$ARCHIVE"

	say "creating Deployment and Service echo in namespace $NS"
	if ! "$FLOTILLA" kubectl get namespace "$NS" >/dev/null 2>&1; then
		"$FLOTILLA" kubectl create namespace "$NS"
	fi
	manifest | k apply -f -
	say "waiting for the rollout"
	k rollout status deployment/echo --timeout=180s
	k get pods -l app=echo -o wide
	k get service echo

	local cip nodeport nodeip
	cip=$(k get service echo -o jsonpath='{.spec.clusterIP}')
	nodeport=$(k get service echo -o jsonpath='{.spec.ports[?(@.name=="http")].nodePort}')
	# A Ready node that runs an echo pod, so its address answers for sure.
	local node
	node=$(k get pods -l app=echo -o jsonpath='{.items[0].spec.nodeName}')
	nodeip=$("$FLOTILLA" kubectl get node "$node" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')
	[[ -n $cip && -n $nodeport && -n $nodeip ]] || die "could not read the Service's ClusterIP/NodePort or node $node's address"

	failed=0
	echo
	say "through the ClusterIP $cip:80"
	hit ClusterIP "http://$cip/"
	echo
	say "through the NodePort $nodeip:$nodeport (node $node)"
	hit NodePort "http://$nodeip:$nodeport/"
	echo
	if ((failed)); then
		die "some requests failed (see above)"
	fi
	local fl=$FLOTILLA
	[[ $fl == "$PWD"/* ]] && fl=./${fl#"$PWD"/}
	cat <<MSG
==> done. Try:
    $fl kubectl get pods -l app=echo -o wide
    $fl kubectl scale deployment echo --replicas 5
    $fl kubectl exec deploy/echo -- /toolbox udp $cip:9090 hello
    $fl kubectl logs deploy/echo
  Remove it with: make demo-down   (or deploy/demo.sh down)
MSG
}

down() {
	setup
	say "deleting Deployment and Service echo in namespace $NS"
	k delete deployment/echo service/echo --ignore-not-found --wait=true
	# The pods go once the garbage collector has followed the ReplicaSet.
	k wait --for=delete pod -l app=echo --timeout=120s 2>/dev/null || true
	if [[ -n $(k get pods -l app=echo -o name 2>/dev/null) ]]; then
		die "echo pods are still terminating: $(k get pods -l app=echo -o name | tr '\n' ' ')"
	fi
	say "demo removed (the image $IMAGE stays on the nodes)"
}

case ${1:-up} in
up) up ;;
down) down ;;
*) die "usage: $0 [up|down]" ;;
esac
