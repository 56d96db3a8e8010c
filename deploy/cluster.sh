#!/usr/bin/env bash
# deploy/cluster.sh up|down|status|demo|purge: a local Flotilla cluster of
# three masters and two agents on this one machine, each node a "test host":
# its own network namespace with an eth0 on a private bridge.
#
#   flc-sw   a namespace holding the bridge br0 (the "switch")
#   flc-m1   10.77.0.1   flotilla server (master), --bootstrap-expect 3,
#                        --join each master's gossip address
#   flc-m2   10.77.0.2   flotilla server
#   flc-m3   10.77.0.3   flotilla server
#   flc-a1   10.77.0.4   flotilla agent, its own containerd (managed)
#   flc-a2   10.77.0.5   flotilla agent, its own containerd (managed)
#   flc-host 10.77.0.254 a veth in this (root) namespace, so this shell
#                        reaches the APIs and the NodePorts
#
# Processes enter only the node's network namespace (nsenter --net), not a
# mount namespace: containerd's mounts and the pods' network namespaces,
# bind-mounted under the agent's data dir, stay visible to everyone.
#
#   up      create what is missing and start what is not running, then wait
#           until Raft has 3 voters and both Nodes are Ready. Running it on a
#           cluster that is up says so; after `down` it starts the same
#           cluster again from its data (or after kill -9 of one process, it
#           starts that one again).
#   down    stop everything (agents, their containers and containerd, then
#           masters), unmount what is left under the data dir, and remove the
#           namespaces, veths and bridge. The data dir stays (logs, Raft
#           state): `up` resumes it, `purge` removes it.
#   status  what runs, the Raft peers and the Nodes
#   demo    deploy/demo.sh on this cluster, the requests sent from node a1
#   purge   down, then remove the data dir
#
# Environment: DATA (default ./data; the cluster lives in $DATA/cluster),
# CLUSTER_NET (default 10.77.0: the first three octets of a free /24),
# FLOTILLA (default ./bin/flotilla). Needs root, ip, nsenter, containerd,
# runc, iptables and the CNI plugins (Debian: containernetworking-plugins).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FLOTILLA=${FLOTILLA:-$ROOT/bin/flotilla}
NET=${CLUSTER_NET:-10.77.0}
P=flc-                 # prefix of every namespace and link this script makes
SW=${P}sw              # the switch namespace
HOSTLINK=${P}host      # the veth end in the root namespace
HOSTIP=$NET.254
MASTERS=(m1 m2 m3)
AGENTS=(a1 a2)
export PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin

say() { printf '==> %s\n' "$*"; }
warn() { printf 'cluster: %s\n' "$*" >&2; }
die() { printf 'cluster: %s\n' "$*" >&2; exit 1; }

# ip_of NAME: the node's address (m1 .1, m2 .2, m3 .3, a1 .4, a2 .5).
ip_of() {
	case $1 in
	m1) echo "$NET.1" ;; m2) echo "$NET.2" ;; m3) echo "$NET.3" ;;
	a1) echo "$NET.4" ;; a2) echo "$NET.5" ;;
	*) die "unknown node $1" ;;
	esac
}
nodes() { echo "${MASTERS[@]}" "${AGENTS[@]}"; }
netns_path() { echo "/run/netns/$P$1"; }
has_netns() { [[ -e /run/netns/$1 ]]; }

# --- checks and paths --------------------------------------------------------

setup_paths() {
	local data=${DATA:-$ROOT/data}
	[[ -d $data/cluster ]] || mkdir -p "$data/cluster" ||
		die "cannot make the data dir $data/cluster"
	DIR=$(cd "$data/cluster" && pwd)
	[[ $DIR != *[[:space:]]* ]] || die "the data dir $DIR has white space in its path; set DATA"
	KUBECONFIG_FILE=$DIR/kubeconfig
}

need_root() {
	[[ $(id -u) == 0 ]] || die "needs root (network namespaces, veths, containers): run it with sudo"
}

need_tools() {
	local t missing=()
	for t in ip nsenter setsid flock containerd runc iptables; do
		command -v "$t" >/dev/null || missing+=("$t")
	done
	[[ -x /usr/lib/cni/bridge || -x /opt/cni/bin/bridge ]] || missing+=("CNI plugins (containernetworking-plugins)")
	((${#missing[@]} == 0)) || die "missing: ${missing[*]} (Debian: apt-get install iproute2 util-linux containerd runc iptables containernetworking-plugins)"
	[[ -x $FLOTILLA ]] || die "$FLOTILLA not found: run make build first"
}

# lock: one cluster.sh at a time on this data dir.
lock() {
	exec 9>"$DIR/.lock"
	flock -n 9 || die "another deploy/cluster.sh is working on $DIR; wait for it"
}

# --- processes ---------------------------------------------------------------

# pid_of NAME: the pid of the node's flotilla process if it runs, else
# nothing. The pid file is trusted only if that process is flotilla with
# this node's data dir.
pid_of() {
	local f=$DIR/$1/pid pid
	[[ -r $f ]] || return 0
	pid=$(<"$f")
	[[ $pid =~ ^[0-9]+$ ]] || return 0
	if tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q -- "--data-dir $DIR/$1 "; then
		echo "$pid"
	fi
}

alive() { [[ -n $1 ]] && kill -0 "$1" 2>/dev/null; }

# stop_pid PID SECONDS: SIGTERM, then SIGKILL after SECONDS.
stop_pid() {
	local pid=$1 i
	alive "$pid" || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < $2 * 10; i++)); do
		alive "$pid" || return 0
		sleep 0.1
	done
	warn "pid $pid ignored SIGTERM for $2s; killing it"
	kill -KILL "$pid" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		alive "$pid" || return 0
		sleep 0.1
	done
	warn "pid $pid would not die"
}

# pids_matching REGEX: pids whose command line (space-joined) matches.
pids_matching() {
	local f pid
	for f in /proc/[0-9]*/cmdline; do
		pid=${f#/proc/}
		pid=${pid%/cmdline}
		[[ $pid == "$$" ]] && continue
		if tr '\0' ' ' 2>/dev/null <"$f" | grep -Eq -- "$1"; then
			echo "$pid"
		fi
	done
}

# descendants PID...: every process below the given ones.
descendants() {
	local p c
	for p in "$@"; do
		for c in $(pgrep -P "$p" 2>/dev/null); do
			echo "$c"
			descendants "$c"
		done
	done
}

# start NAME ARGS...: flotilla ARGS in the node's namespace, in the
# background, in its own session (a Ctrl-C in this shell does not reach it),
# logging to its data dir. nsenter execs in place, so the pid is
# flotilla's own.
start() {
	local name=$1 pid
	shift
	mkdir -p "$DIR/$name"
	printf '\n--- %s: started by deploy/cluster.sh\n' "$(date -Is)" >>"$DIR/$name/flotilla.log"
	# 9>&-: the lock stays with this script, not with the node.
	setsid nsenter --net="$(netns_path "$name")" -- "$FLOTILLA" "$@" \
		</dev/null >>"$DIR/$name/flotilla.log" 2>&1 9>&- &
	pid=$!
	echo "$pid" >"$DIR/$name/pid"
	sleep 0.5
	alive "$pid" || die "$name exited at once; see $DIR/$name/flotilla.log:
$(tail -5 "$DIR/$name/flotilla.log")"
	say "started $name (pid $pid, $(ip_of "$name"), log $DIR/$name/flotilla.log)"
}

# join_flags: --join for every master's gossip address. One that answers is
# enough; all three, so that a node (re)started while m1 is down, or an m1
# started afresh, still finds the others.
join_flags() {
	local n
	for n in "${MASTERS[@]}"; do
		printf -- '--join %s:7946 ' "$(ip_of "$n")"
	done
}

# server_token: the cluster's shared server token, made on the first `up`
# and kept in the data dir: every master starts with it (it opens the first
# exchange of the CA and keys), and agents join with it, as in k3s.
server_token() {
	if [[ ! -s $DIR/token ]]; then
		(umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/token")
	fi
	cat "$DIR/token"
}

start_master() {
	local n=$1
	# shellcheck disable=SC2046 # join_flags is meant to split
	start "$n" server --name "$n" --data-dir "$DIR/$n" --bind "$(ip_of "$n")" \
		--bootstrap-expect 3 $(join_flags) --token "$(server_token)"
}

# Each agent runs its own containerd under its data dir (--containerd
# managed) with its own containerd namespace, so its containers' cgroups and
# runc state are named after the node (flc-a1), apart from any other
# containerd user on this machine.
start_agent() {
	local n=$1
	# shellcheck disable=SC2046 # join_flags is meant to split
	start "$n" agent --node-name "$n" --data-dir "$DIR/$n" --bind "$(ip_of "$n")" \
		$(join_flags) --token "$(server_token)" --containerd managed --containerd-namespace "$P$n"
}

# --- network -----------------------------------------------------------------

check_net_free() {
	[[ $NET =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "CLUSTER_NET=$NET: want the first three octets of a /24, like 10.77.0"
	if ip -4 -o addr show | grep -v " $HOSTLINK " | grep -q " inet $NET\."; then
		die "$NET.0/24 is already used on this machine (ip -4 addr); pick another with CLUSTER_NET=10.x.y"
	fi
	if ip -4 route show | grep -v " dev $HOSTLINK " | grep -q "^$NET\."; then
		die "$NET.0/24 is already routed on this machine (ip -4 route); pick another with CLUSTER_NET=10.x.y"
	fi
}

# net_up: the switch, the root veth and one namespace per node; only what is
# missing is made.
net_up() {
	if ! has_netns "$SW"; then
		ip netns add "$SW"
		ip -n "$SW" link add br0 type bridge
		ip -n "$SW" link set br0 up
		ip -n "$SW" link set lo up
	fi
	if ! ip link show "$HOSTLINK" >/dev/null 2>&1; then
		ip link add "$HOSTLINK" type veth peer name host netns "$SW"
		ip -n "$SW" link set host master br0 up
		ip addr add "$HOSTIP/24" dev "$HOSTLINK"
		ip link set "$HOSTLINK" up
	fi
	local n
	for n in $(nodes); do
		has_netns "$P$n" && continue
		ip netns add "$P$n"
		# Made inside the node with its peer straight in the switch, so
		# neither end ever sits in the root namespace.
		ip -n "$P$n" link add eth0 type veth peer name "$n" netns "$SW"
		ip -n "$SW" link set "$n" master br0 up
		ip -n "$P$n" addr add "$(ip_of "$n")/24" dev eth0
		ip -n "$P$n" link set eth0 up
		ip -n "$P$n" link set lo up
		# (IPv4 forwarding, which pods need, the agent turns on itself.)
	done
}

net_down() {
	local n pids
	for n in $(nodes) sw; do
		has_netns "$P$n" || continue
		# A process left in a namespace keeps it (and its veth) alive
		# after the name is gone.
		pids=$(ip netns pids "$P$n" 2>/dev/null || true)
		if [[ -n $pids ]]; then
			warn "killing what is left in $P$n: $(echo $pids)"
			kill -KILL $pids 2>/dev/null || true
			sleep 0.5
		fi
		ip netns del "$P$n"
	done
	if ip link show "$HOSTLINK" >/dev/null 2>&1; then
		ip link del "$HOSTLINK"
	fi
}

# --- containers --------------------------------------------------------------

# ctrd_sock NAME: the agent's managed containerd socket, from its config.
ctrd_sock() {
	local cfg=$DIR/$1/containerd/config.toml
	[[ -r $cfg ]] || return 0
	sed -n '/^\[grpc\]/,/^\[/s/^ *address = "\(.*\)"$/\1/p' "$cfg" | head -1
}

# containers_down NAME: after the agent has stopped, end its containers,
# its containerd and the shims, and unmount what is left under its data dir.
containers_down() {
	local n=$1 sock cfg ns t pid pids shims
	sock=$(ctrd_sock "$n")
	cfg=$DIR/$n/containerd/config.toml
	if [[ -n $sock && -S $sock ]] && command -v ctr >/dev/null &&
		timeout 5 ctr -a "$sock" version >/dev/null 2>&1; then
		# Through containerd: each task is killed and deleted, so runc
		# removes its state and cgroups and the shim exits.
		for ns in $(timeout 10 ctr -a "$sock" namespaces ls -q 2>/dev/null); do
			for t in $(timeout 10 ctr -a "$sock" -n "$ns" tasks ls -q 2>/dev/null); do
				say "$n: deleting container $ns/$t"
				timeout 20 ctr -a "$sock" -n "$ns" tasks rm -f "$t" >/dev/null 2>&1 ||
					warn "$n: could not delete task $ns/$t"
			done
		done
	fi
	for pid in $(pids_matching "^[^ ]*containerd --config $cfg( |\$)"); do
		say "$n: stopping its containerd (pid $pid)"
		stop_pid "$pid" 10
	done
	# Shims that survived (containerd was not answering): their containers
	# first, then the shims; then runc's state of those containers.
	if [[ -n $sock ]]; then
		shims=$(pids_matching "^[^ ]*containerd-shim[^ ]* .*-address $sock( |\$)")
		if [[ -n $shims ]]; then
			warn "$n: killing shims left running and their containers: $(echo $shims)"
			local sockets
			sockets=$(for pid in $shims; do shim_socket "$pid"; done)
			pids=$(descendants $shims)
			kill -KILL $pids $shims 2>/dev/null || true
			sleep 0.5
			# A killed shim leaves its socket.
			rm -f $sockets
		fi
	fi
	# Containers whose shim died before them are still in their cgroups.
	pids=$(find /sys/fs/cgroup -path "*/$P$n/*" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
	if [[ -n $pids ]]; then
		warn "$n: killing container processes left without a shim: $(echo $pids)"
		kill -KILL $pids 2>/dev/null || true
		sleep 0.5
	fi
	if [[ -d /run/containerd/runc/$P$n ]]; then
		for t in /run/containerd/runc/"$P$n"/*; do
			[[ -e $t ]] || continue
			runc --root "/run/containerd/runc/$P$n" delete --force "$(basename "$t")" >/dev/null 2>&1 || true
		done
		rmdir "/run/containerd/runc/$P$n" 2>/dev/null || true
	fi
	# containerd's default cgroup of a container is /<namespace>/<id>; runc
	# removes the <id> level only.
	find /sys/fs/cgroup -maxdepth 2 -type d -name "$P$n" -exec rmdir {} + 2>/dev/null || true
	unmount_under "$DIR/$n"
}

# shim_socket PID: the socket of the runc shim PID, as containerd names it:
# /run/containerd/s/sha256(address/namespace/id).
shim_socket() {
	local -a args
	local i addr='' ns='' id=''
	mapfile -d '' args 2>/dev/null <"/proc/$1/cmdline" || return 0
	for ((i = 1; i + 1 < ${#args[@]}; i++)); do
		case ${args[i]} in
		-address | --address) addr=${args[i + 1]} ;;
		-namespace | --namespace) ns=${args[i + 1]} ;;
		-id | --id) id=${args[i + 1]} ;;
		esac
	done
	[[ -n $addr && -n $ns && -n $id ]] || return 0
	echo "/run/containerd/s/$(printf '%s' "$addr/$ns/$id" | sha256sum | cut -c1-64)"
}

# mounts_under DIR: mount points at or below DIR, deepest first.
mounts_under() {
	awk -v d="$1" '$5 == d || index($5, d "/") == 1 { print length($5) " " $5 }' /proc/self/mountinfo |
		sort -rn | cut -d' ' -f2-
}

unmount_under() {
	local m
	for m in $(mounts_under "$1"); do
		umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || warn "could not unmount $m"
	done
}

# --- the cluster -------------------------------------------------------------

# write_kubeconfig: one context per master, HTTPS verified against the
# cluster CA, the admin token. Both come from a master's data dir, where
# the master writes them once the cluster's keys exist.
write_kubeconfig() {
	local n m="" tmp=$KUBECONFIG_FILE.tmp i
	for ((i = 0; i < 600; i++)); do
		for n in "${MASTERS[@]}"; do
			if [[ -s $DIR/$n/tls/ca.crt && -s $DIR/$n/tls/admin.token ]]; then
				m=$n
				break 2
			fi
		done
		sleep 0.1
	done
	[[ -n $m ]] || die "no master has the cluster's keys after 60s; see $DIR/m*/flotilla.log"
	{
		echo "apiVersion: v1"
		echo "kind: Config"
		echo "clusters:"
		for n in "${MASTERS[@]}"; do
			printf -- '- name: %s\n  cluster:\n    server: https://%s:6443\n    certificate-authority-data: %s\n' \
				"$P$n" "$(ip_of "$n")" "$(base64 -w0 <"$DIR/$m/tls/ca.crt")"
		done
		echo "users:"
		echo "- name: admin"
		printf '  user:\n    token: %s\n' "$(tr -d '\n' <"$DIR/$m/tls/admin.token")"
		echo "contexts:"
		for n in "${MASTERS[@]}"; do
			printf -- '- name: %s\n  context:\n    cluster: %s\n    user: admin\n    namespace: default\n' "$P$n" "$P$n"
		done
		echo "current-context: ${P}m1"
	} >"$tmp"
	chmod 600 "$tmp"
	mv "$tmp" "$KUBECONFIG_FILE"
}

# api: the API address of a running master (m1 first).
api() {
	local n
	for n in "${MASTERS[@]}"; do
		if alive "$(pid_of "$n")"; then
			echo "$(ip_of "$n"):6443"
			return
		fi
	done
}

# master_at HOST:PORT: the master's name.
master_at() {
	local n
	for n in "${MASTERS[@]}"; do
		[[ $1 == "$(ip_of "$n"):6443" ]] && echo "$n"
	done
}

# peers: `operator raft list-peers` through any running master.
peers() {
	local a
	a=$(api)
	[[ -n $a ]] || return 1
	timeout 10 "$FLOTILLA" operator raft list-peers --server "$a" --kubeconfig "$KUBECONFIG_FILE" --timeout 5s 2>/dev/null
}

# kc_any ARGS: kubectl to the first master (by the kubeconfig's contexts)
# that answers.
kc_any() {
	local n
	for n in "${MASTERS[@]}"; do
		alive "$(pid_of "$n")" || continue
		if timeout 20 "$FLOTILLA" kubectl --kubeconfig "$KUBECONFIG_FILE" --context "$P$n" --request-timeout 10s "$@" 2>/dev/null; then
			return 0
		fi
	done
	return 1
}

voters() { peers | awk 'NR > 1 && $4 == "true"' | wc -l; }
leader() { peers | awk 'NR > 1 && $3 == "leader" { print $1 }'; }
ready_nodes() {
	kc_any get nodes --no-headers 2>/dev/null | awk '$2 == "Ready"' | wc -l
}

# wait_for SECONDS WHAT CMD...: poll CMD until it succeeds.
wait_for() {
	local secs=$1 what=$2 i
	shift 2
	for ((i = 0; i < secs; i++)); do
		if "$@"; then
			return 0
		fi
		sleep 1
	done
	return 1
}

have_leader() { [[ -n $(leader) ]]; }
have_voters() { [[ $(voters) -ge ${#MASTERS[@]} ]]; }
# have_nodes: every agent runs and its Node is Ready. (A Node's stored
# status may say Ready before a restarted agent has spoken: the process
# check keeps a dead agent from passing.)
have_nodes() {
	local n
	for n in "${AGENTS[@]}"; do
		alive "$(pid_of "$n")" || die "agent $n exited; see $DIR/$n/flotilla.log:
$(tail -5 "$DIR/$n/flotilla.log")"
	done
	[[ $(ready_nodes) -ge ${#AGENTS[@]} ]]
}

usage_hint() {
	local kc=$KUBECONFIG_FILE fl=$FLOTILLA
	[[ $fl == "$PWD"/* ]] && fl=./${fl#"$PWD"/}
	cat <<EOF

The APIs: https://$NET.1:6443 (m1), https://$NET.2:6443, https://$NET.3:6443
(kubeconfig $kc, contexts ${P}m1 (current), ${P}m2, ${P}m3). Try:

  export KUBECONFIG=$kc
  $fl kubectl get nodes -o wide
  $fl kubectl --context ${P}m2 get pods -A        # through m2
  $fl operator raft list-peers --server $NET.1:6443
  make demo                  # (KUBECONFIG set) the echo demo on this cluster
  deploy/cluster.sh demo     # the same, its requests sent from node a1
  deploy/cluster.sh status
  nsenter --net=/run/netns/${P}a1 sh   # a shell on node a1 (ClusterIPs answer there)

Logs: $DIR/<node>/flotilla.log.
Stop it: make cluster-down (the data stays; make cluster starts it again).
EOF
}

up() {
	need_root
	need_tools
	setup_paths
	lock
	local n running=0
	for n in $(nodes); do
		alive "$(pid_of "$n")" && running=$((running + 1))
	done
	if ((running == ${#MASTERS[@]} + ${#AGENTS[@]})) && has_netns "$SW"; then
		say "already up: all $running nodes run (data in $DIR)"
		write_kubeconfig
		status_body
		usage_hint
		return
	fi
	has_netns "$SW" || check_net_free
	say "network: bridge in $SW, $NET.0/24, this shell at $HOSTIP ($HOSTLINK)"
	net_up
	for n in "${MASTERS[@]}"; do
		if alive "$(pid_of "$n")"; then
			say "$n already running (pid $(pid_of "$n"))"
		else
			start_master "$n"
		fi
	done
	write_kubeconfig
	say "waiting for a Raft leader"
	wait_for 90 leader have_leader || die "no leader after 90s; see $DIR/m*/flotilla.log"
	for n in "${AGENTS[@]}"; do
		if alive "$(pid_of "$n")"; then
			say "$n already running (pid $(pid_of "$n"))"
		else
			start_agent "$n"
		fi
	done
	say "waiting for ${#MASTERS[@]} Raft voters and ${#AGENTS[@]} Ready nodes"
	wait_for 120 voters have_voters || die "fewer than ${#MASTERS[@]} voters after 120s:
$(peers)"
	wait_for 180 nodes have_nodes || die "fewer than ${#AGENTS[@]} Ready nodes after 180s; see $DIR/a*/flotilla.log:
$(kc_any get nodes)"
	status_body
	usage_hint
}

status_body() {
	echo
	peers || warn "no master answers"
	echo
	kc_any get nodes -o wide || true
}

status() {
	setup_paths
	local n pid state
	printf '%-4s %-8s %-13s %-8s %s\n' NODE PID ADDRESS NETNS LOG
	for n in $(nodes); do
		pid=$(pid_of "$n")
		alive "$pid" || pid=-
		state=absent
		has_netns "$P$n" && state=present
		printf '%-4s %-8s %-13s %-8s %s\n' "$n" "$pid" "$(ip_of "$n")" "$state" "$DIR/$n/flotilla.log"
	done
	if [[ -z $(api) ]]; then
		echo
		say "no master runs: the cluster is down (deploy/cluster.sh up starts it)"
	else
		status_body
	fi
}

down() {
	need_root
	setup_paths
	lock
	local n pid
	# Agents first: they leave gossip on SIGTERM and leave their containers
	# running (as on a real node), so those go next, through containerd.
	for n in "${AGENTS[@]}"; do
		pid=$(pid_of "$n")
		if alive "$pid"; then
			say "stopping $n (pid $pid)"
			stop_pid "$pid" 20
		fi
	done
	for n in "${AGENTS[@]}"; do
		[[ -d $DIR/$n ]] && containers_down "$n"
	done
	# All masters at once: stopped one by one, the last two would wait for
	# a quorum that is gone.
	local pids=()
	for n in "${MASTERS[@]}"; do
		pid=$(pid_of "$n")
		if alive "$pid"; then
			say "stopping $n (pid $pid)"
			kill -TERM "$pid" 2>/dev/null || true
			pids+=("$pid")
		fi
	done
	for pid in "${pids[@]}"; do
		stop_pid "$pid" 35
	done
	for n in $(nodes); do
		rm -f "$DIR/$n/pid"
	done
	say "removing namespaces $P*, $HOSTLINK and the bridge"
	net_down
	unmount_under "$DIR"
	check_clean
	[[ ${1:-} == purge ]] ||
		say "the data and logs stay in $DIR: make cluster starts the same cluster again, deploy/cluster.sh purge removes them"
}

# check_clean: say what is left, if anything.
check_clean() {
	local left=() m p
	for m in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$P" || true); do
		left+=("namespace $m")
	done
	ip link show "$HOSTLINK" >/dev/null 2>&1 && left+=("link $HOSTLINK")
	for m in $(find /sys/fs/cgroup -maxdepth 2 -type d -name "$P*" 2>/dev/null); do
		left+=("cgroup $m")
	done
	for m in $(mounts_under "$DIR"); do
		left+=("mount $m")
	done
	for p in $(pids_matching "^[^ ]*(flotilla|containerd)[^ ]* .*$DIR/"); do
		left+=("process $p: $(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline" | cut -c1-100)")
	done
	if ((${#left[@]})); then
		warn "left behind:"
		printf '  %s\n' "${left[@]}" >&2
		return 1
	fi
	say "down: no process, namespace, link or mount left"
}

purge() {
	down purge
	say "removing $DIR"
	rm -rf "$DIR"
}

demo() {
	setup_paths
	[[ -r $KUBECONFIG_FILE ]] || die "no cluster: run deploy/cluster.sh up first"
	has_netns "${P}a1" || die "node a1 has no namespace: is the cluster up?"
	local a kc=$DIR/kubeconfig-demo
	a=$(api)
	[[ -n $a ]] || die "no master runs: is the cluster up?"
	# The kubeconfig's current context is m1's; the demo talks to the first
	# master that runs.
	cp "$KUBECONFIG_FILE" "$kc"
	"$FLOTILLA" kubectl --kubeconfig "$kc" config use-context "$P$(master_at "$a")" >/dev/null
	KUBECONFIG=$kc DEMO_NODE_EXEC="nsenter --net=$(netns_path a1)" \
		"$ROOT/deploy/demo.sh" "${1:-up}"
}

case ${1:-} in
up) up ;;
down) down ;;
status) status ;;
demo) demo "${2:-up}" ;;
purge) purge ;;
*)
	echo "usage: $0 up|down|status|demo [down]|purge" >&2
	exit 2
	;;
esac
