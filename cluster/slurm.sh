#!/usr/bin/env bash
# Slurm on the namespace hosts of cluster/netns.sh: munged, slurmctld on h1 and one slurmd per host,
# started by hand (no systemd) and stopped by their pids.
#
#   cluster/netns.sh up 2 && cluster/slurm.sh up [--cpus C] [--nodes N] [--port P]
#                                    hosts h1..hN (default: all) become nodes of C CPUs each (default: nproc);
#                                    slurmctld listens on port P, each slurmd on P+1 (default 6817, 6818)
#   export SLURM_CONF=$(cluster/slurm.sh conf)
#   cluster/netns.sh exec h1 sinfo                             clients run on a host (h1 is the login node)
#   cluster/slurm.sh down                                      (cluster/netns.sh down also stops them)
#
# Needs the Debian packages slurmctld slurmd slurm-client munge. The configuration is cluster/slurm.conf.in
# with this cluster's folders and nodes filled in; munged uses a key and socket of its own, so a system
# munged, if any, is left alone; every folder is under the cluster's own state (cluster/netns.sh state), so
# clusters with different DISTNET_NETNS prefixes each run a Slurm of their own. Logs: $(cluster/netns.sh state)/slurm/{munge/munged,ctld/slurmctld,hN/slurmd}.log
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin  # the daemons live there
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
netns=$here/netns.sh
die() { echo "slurm.sh: $*" >&2; exit 2; }
nsstate=$("$netns" state)
state=$nsstate/slurm

cmd_up() {
  local cpus nodes_wanted="" port=6817
  cpus=$(nproc)
  while [ $# -gt 0 ]; do
    case $1 in
      --cpus) cpus=${2:?--cpus needs a number}; shift 2;;
      --port) port=${2:?--port needs a number}; shift 2;;
      --nodes) nodes_wanted=${2:?--nodes needs a number}; shift 2;;
      *) die "up: unknown option '$1'";;
    esac
  done
  [ "$(id -u)" = 0 ] || die "must run as root"
  [ -f "$nsstate/hosts" ] || die "no namespace hosts: run cluster/netns.sh up N first"
  local p
  for p in munged mungekey slurmctld slurmd sinfo; do
    command -v "$p" > /dev/null || die "$p not found: apt-get install -y slurmctld slurmd slurm-client munge"
  done
  [ ! -e "$state" ] || die "Slurm is already up here ($state): run cluster/slurm.sh down first"
  case $port in ''|*[!0-9]*) die "--port must be a number, got '$port'";; esac
  [ "$port" -ge 1024 ] && [ "$port" -le 65534 ] || die "--port must be 1024..65534 (slurmd takes the next one)"
  local n i nodes=""
  n=$(cat "$nsstate/hosts")
  if [ -n "$nodes_wanted" ]; then
    [ "$nodes_wanted" -ge 1 ] && [ "$nodes_wanted" -le "$n" ] || die "--nodes must be 1..$n (the hosts that are up)"
    n=$nodes_wanted
  fi
  mkdir -p "$state/munge" "$state/ctld"
  trap 'echo "slurm.sh: up failed; stopping what it started" >&2; cmd_down >&2' EXIT
  # munged refuses a key that others can read and a socket folder that others can write to (or not enter)
  mungekey --create --keyfile="$state/munge/munge.key" --force
  chown -R munge:munge "$state/munge"
  chmod 755 "$state/munge"
  chmod 400 "$state/munge/munge.key"
  "$netns" daemon munged h1 setpriv --reuid=munge --regid=munge --init-groups \
    munged --foreground --key-file="$state/munge/munge.key" --socket="$state/munge/munge.socket" \
    --pid-file="$state/munge/munged.pid" --log-file="$state/munge/munged.log" --seed-file="$state/munge/munged.seed"
  for i in $(seq 1 "$n"); do
    mkdir -p "$state/h$i/spool" "$state/h$i/tmp"
    nodes="${nodes}NodeName=h$i NodeAddr=$("$netns" addr "h$i") CPUs=$cpus RealMemory=1024 State=UNKNOWN"$'\n'
  done
  sed -e "s|@STATE@|$state|g" -e "s|@ADDR1@|$("$netns" addr h1)|g" -e "s|@CTLDPORT@|$port|g" \
      -e "s|@SLURMDPORT@|$((port + 1))|g" "$here/slurm.conf.in" \
    | awk -v nodes="$nodes" '$0 == "@NODES@" { printf "%s", nodes; next } { print }' > "$state/slurm.conf"
  # Slurm loads a cgroup plugin even with proctrack/linuxproc; v1 starts without the /sys/fs/cgroup
  # that `ip netns exec` hides (its fresh /sys has none), where autodetection fails.
  echo "CgroupPlugin=cgroup/v1" > "$state/cgroup.conf"
  export SLURM_CONF=$state/slurm.conf
  wait_for "munged" 10 test -S "$state/munge/munge.socket"
  "$netns" daemon slurmctld h1 slurmctld -D -f "$SLURM_CONF"
  for i in $(seq 1 "$n"); do
    "$netns" daemon "slurmd-h$i" "h$i" slurmd -D -N "h$i" -f "$SLURM_CONF"
  done
  wait_for "$n idle node(s)" 60 all_idle "$n"
  trap - EXIT
  echo "slurm.sh: $n node(s) up. Clients run on a host:"
  echo "  export SLURM_CONF=$SLURM_CONF"
  echo "  cluster/netns.sh exec h1 sinfo"
}

all_idle() {
  local idle
  idle=$("$netns" exec h1 sinfo -h -N -t idle -o %N 2>/dev/null | sort -u | wc -l) || return 1
  [ "$idle" -ge "$1" ]
}

wait_for() {  # wait_for WHAT SECONDS CMD...: poll CMD every 0.2 s
  local what=$1 secs=$2 t
  shift 2
  for t in $(seq 1 $((secs * 5))); do
    "$@" && return 0
    if ! daemons_alive; then break; fi
    sleep 0.2
  done
  echo "slurm.sh: no $what after $secs s; logs under $state:" >&2
  tail -n 5 "$state"/munge/munged.log "$state"/ctld/slurmctld.log "$state"/h*/slurmd.log "$nsstate"/logs/*.log 2>/dev/null >&2 || true
  return 1
}

daemons_alive() {  # every daemon this script started is still running
  local f
  for f in "$nsstate"/daemons/munged.pid "$nsstate"/daemons/slurm*.pid; do
    [ -e "$f" ] || continue
    [ "$(sed 's/.*) //' "/proc/$(cat "$f")/stat" 2>/dev/null | cut -c1)" != Z ] && [ -e "/proc/$(cat "$f")" ] || { echo "slurm.sh: $(basename "$f" .pid) exited" >&2; return 1; }
  done
}

cmd_down() {
  [ -d "$nsstate/daemons" ] || { rm -rf "$state"; return 0; }
  local f
  # nodes first, then the controller, then munged: each by the pid netns.sh recorded
  for f in "$nsstate"/daemons/slurmd-h*.pid; do
    [ -e "$f" ] && "$netns" stop "$(basename "$f" .pid)"
  done
  "$netns" stop slurmctld
  "$netns" stop munged
  rm -rf "$state"
}

sub=${1:-}
[ $# -gt 0 ] && shift
case $sub in
  up) cmd_up "$@";;
  down) cmd_down;;
  conf) echo "$state/slurm.conf";;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2;;
esac
