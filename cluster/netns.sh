#!/usr/bin/env bash
# A cluster of N "hosts" on one machine, made of Linux network namespaces, to try and test multi-node runs.
#
#   cluster/netns.sh up N [--rate RATE] [--subnet A.B.C]
#                                         hosts h1..hN on a switch, A.B.C.1..N/24 (default 10.77.0, or the
#                                         next free 10.77.K when another cluster here uses it); RATE shapes
#                                         every link with tc tbf (e.g. 1gbit, 100mbit)
#   cluster/netns.sh exec hN CMD...       run CMD "on" host hN (its own network, host name, IPC, PIDs, /dev/shm)
#   cluster/netns.sh down                 stop everything started here and remove every namespace and link
#   cluster/netns.sh status | addr hN | bytes hN | kill hN
#   cluster/netns.sh daemon NAME hN CMD... / stop NAME   a background process on hN, stopped by its pid
#   cluster/netns.sh list                 every cluster recorded on this machine: prefix, hosts, subnet, owner
#   cluster/netns.sh reap                 take down every recorded cluster whose owner process has ended
#
# Each host is a network namespace "<prefix>-hN" with one veth link "eth0" to a bridge that lives in a namespace
# of its own ("<prefix>-sw"), so nothing is added to the machine's own network: the addresses exist only inside
# these namespaces. `exec` also gives each command new UTS, IPC and PID namespaces, host name hN, and a
# /dev/shm of its own, so MPI sees different hosts and cannot use shared memory between them; the file system
# is shared, as on a cluster with a shared home. Names resolve through /etc/netns/<prefix>-hN/hosts.
#
# Everything this script creates is recorded under $DISTNET_NETNS_STATE/<prefix> (default /run/distnet-netns/dn);
# `down` removes only what is recorded there, and is safe to run any number of times. Set DISTNET_NETNS to
# another prefix to keep a second cluster apart: several clusters share a machine without touching each other
# (the tests make one per run, with a random prefix). DISTNET_NETNS_OWNER=PID at `up` records an owner: once
# that process has ended, `reap` takes the cluster down (a test run killed before its teardown leaves nothing
# for long). Needs root, iproute2, util-linux.
set -euo pipefail

prefix=${DISTNET_NETNS:-dn}
case $prefix in [a-z]|[a-z][a-z0-9]|[a-z][a-z0-9][a-z0-9]|[a-z][a-z0-9][a-z0-9][a-z0-9]|[a-z][a-z0-9][a-z0-9][a-z0-9][a-z0-9]) ;;
  *) echo "netns.sh: DISTNET_NETNS must be 1-5 lower-case letters or digits, starting with a letter, got '$prefix'" >&2
     exit 2;;
esac
root=${DISTNET_NETNS_STATE:-/run/distnet-netns}
state=$root/$prefix
sw=$prefix-sw

die() { echo "netns.sh: $*" >&2; exit 2; }
need_root() { [ "$(id -u)" = 0 ] || die "must run as root (network namespaces need CAP_SYS_ADMIN)"; }
is_up() { [ -f "$state/hosts" ]; }
nhosts() { cat "$state/hosts"; }
subnet() { cat "$state/subnet"; }
# the subnets of the other clusters recorded on this machine
subnets_in_use() {
  local f
  for f in "$root"/*/subnet; do
    if [ -f "$f" ] && [ "$f" != "$state/subnet" ]; then cat "$f"; fi
  done
  return 0
}

# host NAME_OR_ADDRESS -> its index N (h2, h2.local, 10.77.0.2 all give 2)
host_index() {
  is_up || die "no cluster is up (prefix '$prefix'): run cluster/netns.sh up N"
  local h=${1%%.*} n
  case $1 in "$(subnet)".*) h=h${1##*.};; esac
  n=${h#h}
  case $n in ''|*[!0-9]*) die "unknown host '$1' (hosts are h1..h$(nhosts))";; esac
  [ "$n" -ge 1 ] && [ "$n" -le "$(nhosts)" ] || die "unknown host '$1' (hosts are h1..h$(nhosts))"
  echo "$n"
}

cmd_up() {
  need_root
  local n=${1:-} rate="" subnet=""
  [ $# -gt 0 ] && shift
  while [ $# -gt 0 ]; do
    case $1 in
      --rate) rate=${2:?--rate needs a value such as 1gbit}; shift 2;;
      --subnet) subnet=${2:?--subnet needs A.B.C}; shift 2;;
      *) die "up: unknown option '$1'";;
    esac
  done
  case $n in ''|*[!0-9]*|0) die "usage: netns.sh up N [--rate RATE] (N hosts, 1..250)";; esac
  [ "$n" -le 250 ] || die "up: at most 250 hosts"
  is_up && die "a cluster with prefix '$prefix' is already up ($(nhosts) hosts): run cluster/netns.sh down first"
  local i existing used
  existing=$(ip netns list | awk '{print $1}')
  for i in $sw $(seq -f "$prefix-h%g" 1 "$n"); do
    if grep -qx "$i" <<<"$existing"; then
      die "namespace $i exists but was not made by this script's state in $state: remove it yourself or set DISTNET_NETNS to another prefix"
    fi
  done
  mkdir -p "$root"
  # the state folder is the claim on the prefix: of two `up`s with one prefix at once, the second stops here
  mkdir "$state" 2>/dev/null || die "prefix '$prefix' is taken (a cluster being made, or the leftovers of one: $state): run cluster/netns.sh down, or set DISTNET_NETNS to another prefix"
  used=$(subnets_in_use)
  if [ -z "$subnet" ]; then
    subnet=10.77.0
    for i in $(seq 0 255); do grep -qx "10.77.$i" <<<"$used" || { subnet=10.77.$i; break; }; done
  elif grep -qx "$subnet" <<<"$used"; then
    rmdir "$state"
    die "subnet $subnet is used by another cluster on this machine (cluster/netns.sh list): choose another --subnet"
  fi
  case $subnet in *[!0-9.]*|*..*|.*|*.) rmdir "$state"; die "--subnet must be A.B.C (three numbers), got '$subnet'";; esac
  mkdir -p "$state/daemons" "$state/logs"
  [ -z "${DISTNET_NETNS_OWNER:-}" ] || echo "$DISTNET_NETNS_OWNER" > "$state/owner"
  : > "$state/namespaces"
  echo "$subnet" > "$state/subnet"
  trap 'echo "netns.sh: up failed; removing what it made" >&2; cmd_down >&2' EXIT
  {
    for i in $(seq 1 "$n"); do echo "$subnet.$i h$i"; done
  } > "$state/hosts.txt"
  # /etc/netns is shared by every prefix: made by whichever cluster needed it first, removed with the last one
  if [ ! -d /etc/netns ]; then mkdir /etc/netns && touch "$root/etc-netns-made"; fi
  add_ns "$sw"
  ip -n "$sw" link add br0 type bridge
  ip -n "$sw" link set br0 up
  for i in $(seq 1 "$n"); do
    local ns=$prefix-h$i
    add_ns "$ns"
    mkdir -p "/etc/netns/$ns"
    echo "/etc/netns/$ns" >> "$state/etc"
    { printf '127.0.0.1 localhost\n::1 localhost\n'; cat "$state/hosts.txt"; } > "/etc/netns/$ns/hosts"
    ip -n "$sw" link add "h$i" type veth peer name eth0 netns "$ns"
    ip -n "$sw" link set "h$i" master br0 up
    ip -n "$ns" addr add "$subnet.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
    if [ -n "$rate" ]; then
      tc -n "$sw" qdisc add dev "h$i" root tbf rate "$rate" burst 256kb latency 20ms
      tc -n "$ns" qdisc add dev eth0 root tbf rate "$rate" burst 256kb latency 20ms
    fi
  done
  echo "$n" > "$state/hosts"
  trap - EXIT
  echo "netns.sh: $n host(s) up: $(tr '\n' ' ' < "$state/hosts.txt")${rate:+(links shaped to $rate)}"
}

add_ns() {
  echo "$1" >> "$state/namespaces"  # recorded first, so that down removes it even if what follows fails
  ip netns add "$1"
  ip -n "$1" link set lo up
  # IPv4 only: no IPv6 autoconfiguration chatter on the links (it would show in the byte counters)
  ip netns exec "$1" sh -c 'echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6' 2>/dev/null || true
}

# alive PID...: true when any of them is running (a zombie, exited but not yet reaped, does not count)
alive() {
  local p st
  for p in "$@"; do
    st=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | cut -c1) || continue
    [ -n "$st" ] && [ "$st" != Z ] && return 0
  done
  return 1
}

# stop_pid PID: stop what `daemon` started: PID is its unshare process (checked, so that a stale pid file cannot
# hit another process). SIGTERM goes to the shell that runs the daemon, which passes it on; after 10 s, SIGKILL
# to the unshare process takes down the daemon's PID namespace and everything in it.
stop_pid() {
  local outer=$1 inner t
  alive "$outer" && [ "$(cat "/proc/$outer/comm" 2>/dev/null)" = unshare ] || return 0
  inner=$(cat "/proc/$outer/task/$outer/children" 2>/dev/null || true)
  for t in $inner; do kill -TERM "$t" 2>/dev/null || true; done
  for t in $(seq 1 100); do
    alive "$outer" || return 0
    sleep 0.1
  done
  echo "netns.sh: pid $outer did not stop on SIGTERM in 10 s: SIGKILL" >&2
  kill -KILL "$outer" 2>/dev/null || true
}

cmd_down() {
  [ -d "$state" ] || { echo "netns.sh: nothing is up (prefix '$prefix')"; return 0; }
  need_root
  local f ns pid pids t
  for f in "$state"/daemons/*.pid; do
    [ -e "$f" ] || continue
    stop_pid "$(cat "$f")"
    rm -f "$f"
  done
  if [ -f "$state/namespaces" ]; then
    # Anything still running on a host (a job's processes) goes with it: SIGTERM, then SIGKILL.
    for sig in TERM KILL; do
      pids=""
      while read -r ns; do
        pids="$pids $(ip netns pids "$ns" 2>/dev/null || true)"
      done < "$state/namespaces"
      [ -n "${pids// }" ] || break
      kill -"$sig" $pids 2>/dev/null || true
      for t in $(seq 1 30); do
        alive $pids || break
        sleep 0.1
      done
    done
    while read -r ns; do
      ip netns del "$ns" 2>/dev/null || true
    done < "$state/namespaces"
  fi
  if [ -f "$state/etc" ]; then
    while read -r f; do rm -rf "$f"; done < "$state/etc"
  fi
  rm -rf "$state"
  if [ -f "$root/etc-netns-made" ] && [ -z "$(ls -A "$root" | grep -vx etc-netns-made)" ]; then
    rmdir /etc/netns 2>/dev/null || true
    rm -f "$root/etc-netns-made"
  fi
  rmdir "$root" 2>/dev/null || true
  echo "netns.sh: down (prefix '$prefix')"
}

# enter N SCRIPT ARGS...: run `sh -c SCRIPT hN ARGS...` on host hN. ip netns exec: the host's network (and its
# /etc/hosts); unshare: new UTS (host name), IPC and PID namespaces (own /proc) and a /dev/shm of its own, so that
# processes on different hosts share no memory. --kill-child: if the unshare process is killed (a timeout), the
# first process of the new PID namespace gets SIGKILL, and with it everything this command started.
enter() {
  local n=$1 script=$2
  shift 2
  exec ip netns exec "$prefix-h$n" unshare --uts --ipc --pid --kill-child --mount-proc --propagation slave \
    sh -c 'hostname "$0" && mount -t tmpfs -o mode=1777 shm /dev/shm || exit 1; '"$script" "h$n" "$@"
}

cmd_exec() {
  [ $# -ge 2 ] || die "usage: netns.sh exec hN CMD..."
  local n
  n=$(host_index "$1"); shift
  enter "$n" 'exec "$@"' "$@"
}

# A daemon does not run as the first process of its PID namespace (that one ignores signals it has no handler
# for and does not reap orphans such as slurmstepd): a shell does, forwards SIGTERM to it and reaps.
DAEMON_INIT='"$@" & c=$!; trap "kill -TERM $c 2>/dev/null" TERM INT HUP; s=0
while kill -0 $c 2>/dev/null; do wait $c; s=$?; done; exit $s'

cmd_daemon() {
  [ $# -ge 3 ] || die "usage: netns.sh daemon NAME hN CMD... (CMD must stay in the foreground)"
  local name=$1 n
  case $name in ''|*[!A-Za-z0-9_.-]*) die "daemon: bad name '$name'";; esac
  n=$(host_index "$2")
  shift 2
  [ ! -e "$state/daemons/$name.pid" ] || die "daemon $name is already running (pid $(cat "$state/daemons/$name.pid"))"
  (enter "$n" "$DAEMON_INIT" "$@") < /dev/null >> "$state/logs/$name.log" 2>&1 &
  echo $! > "$state/daemons/$name.pid"
}

cmd_stop() {
  local f=$state/daemons/$1.pid
  [ -f "$f" ] || return 0
  stop_pid "$(cat "$f")"
  rm -f "$f"
}

cmd_status() {
  is_up || { echo "netns.sh: nothing is up (prefix '$prefix')"; return 0; }
  echo "hosts: $(tr '\n' ' ' < "$state/hosts.txt")"
  local f
  for f in "$state"/daemons/*.pid; do
    [ -e "$f" ] || continue
    if alive "$(cat "$f")"; then echo "$(basename "$f" .pid): pid $(cat "$f")"
    else echo "$(basename "$f" .pid): pid $(cat "$f") (exited; log: $state/logs/$(basename "$f" .pid).log)"; fi
  done
}

cmd_bytes() {  # bytes hN: "RX TX" of the host's link, as counted by the kernel on its veth
  local n
  n=$(host_index "$1")
  ip netns exec "$prefix-h$n" sh -c 'echo "$(cat /sys/class/net/eth0/statistics/rx_bytes) $(cat /sys/class/net/eth0/statistics/tx_bytes)"'
}

cmd_list() {  # every cluster recorded under $root
  local d p owner
  for d in "$root"/*/; do
    [ -f "$d/hosts" ] || continue
    p=$(basename "$d")
    owner=$(cat "$d/owner" 2>/dev/null || echo -)
    if [ "$owner" != - ] && ! kill -0 "$owner" 2>/dev/null; then owner="$owner (ended)"; fi
    echo "$p: $(cat "$d/hosts") host(s), subnet $(cat "$d/subnet" 2>/dev/null || echo ?), owner $owner"
  done
}

cmd_reap() {  # take down the clusters whose recorded owner process has ended
  local d p owner
  for d in "$root"/*/; do
    [ -f "$d/owner" ] || continue
    owner=$(cat "$d/owner")
    case $owner in ''|*[!0-9]*) continue;; esac
    kill -0 "$owner" 2>/dev/null && continue
    p=$(basename "$d")
    echo "netns.sh: owner $owner of cluster '$p' has ended: taking it down"
    DISTNET_NETNS=$p "$0" down
  done
}

cmd_kill() {  # kill hN: the host vanishes: SIGKILL to every process in its network namespace
  local n pids
  n=$(host_index "$1")
  pids=$(ip netns pids "$prefix-h$n")
  [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
}

sub=${1:-}
[ $# -gt 0 ] && shift
case $sub in
  up) cmd_up "$@";;
  down) cmd_down;;
  exec) cmd_exec "$@";;
  daemon) need_root; cmd_daemon "$@";;
  stop) need_root; cmd_stop "${1:?usage: netns.sh stop NAME}";;
  status) cmd_status;;
  addr) echo "$(subnet).$(host_index "${1:?usage: netns.sh addr hN}")";;
  bytes) cmd_bytes "${1:?usage: netns.sh bytes hN}";;
  kill) need_root; cmd_kill "${1:?usage: netns.sh kill hN}";;
  state) echo "$state";;
  list) cmd_list;;
  reap) need_root; cmd_reap;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2;;
esac
