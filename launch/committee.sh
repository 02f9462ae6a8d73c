#!/usr/bin/env bash
# Train a committee and evaluate it, in one command:
#   launch/committee.sh N CONFIG_OR_PRESET K OUT [distnet train options]
#   launch/committee.sh 2 fashion-cnn 5 runs/committee --epochs 3
# Trains K members with seeds 1..K on N ranks each (launch/local.sh), member i into OUT/seed-i (checkpoints
# and metrics.jsonl), then runs 'distnet eval --ensemble' on N ranks: the report goes to OUT/committee.txt
# and OUT/committee.json. A member whose folder already holds a checkpoint is not trained again (delete the
# folder to retrain it), so an interrupted committee continues where it stopped.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 N CONFIG_OR_PRESET K OUT [distnet train options]" >&2
  exit 2
fi
n=$1 config=$2 k=$3 out=$4; shift 4
case $k in ''|*[!0-9]*|0) echo "$0: K must be a positive integer, got '$k'" >&2; exit 2;; esac
here=$(cd "$(dirname "$0")" && pwd)
members=()
for i in $(seq 1 "$k"); do
  dir=$out/seed-$i
  members+=("$dir")
  if compgen -G "$dir/ckpt-*.h5" >/dev/null; then
    echo "committee: member $i already trained in $dir" >&2
    continue
  fi
  echo "committee: training member $i of $k (seed $i) into $dir" >&2
  "$here/local.sh" "$n" "$config" "$@" --seed "$i" --checkpoint-dir "$dir" --metrics "$dir/metrics.jsonl"
done
py=${PYTHON:-python3}
bin=$(dirname "$("$py" -c 'import sys; print(sys.executable)')")
mpiexec=${MPIEXEC:-$( [ -x "$bin/mpiexec" ] && echo "$bin/mpiexec" || command -v mpiexec )}
"$mpiexec" -n "$n" "$py" -m distnet eval --ensemble "${members[@]}" --json > "$out/committee.json"
"$mpiexec" -n "$n" "$py" -m distnet eval --ensemble "${members[@]}" | tee "$out/committee.txt"
