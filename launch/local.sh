#!/usr/bin/env bash
# Train on one machine with N MPI processes:  launch/local.sh N CONFIG_OR_PRESET [distnet train options]
#   launch/local.sh 2 fashion-mlp --metrics runs/mlp.jsonl
# Each rank gets cores/N BLAS threads (at least 1), so ranks do not oversubscribe the cores.
# Set MPIEXEC to use another launcher binary (a cluster's mpiexec); set THREADS to override the split.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 N CONFIG_OR_PRESET [distnet train options]" >&2
  exit 2
fi
n=$1; shift
case $n in ''|*[!0-9]*|0) echo "$0: N must be a positive integer, got '$n'" >&2; exit 2;; esac
cores=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)
threads=${THREADS:-$(( cores / n > 0 ? cores / n : 1 ))}
export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
py=${PYTHON:-python3}
here=$(dirname "$("$py" -c 'import sys; print(sys.executable)')")
mpiexec=${MPIEXEC:-$( [ -x "$here/mpiexec" ] && echo "$here/mpiexec" || command -v mpiexec || true )}
if [ -z "$mpiexec" ]; then
  echo "$0: no mpiexec found: pip install -e '.[mpich]' (or set MPIEXEC to your MPI's launcher)" >&2
  exit 2
fi
# Under mpiexec rank 0's stderr is a pipe: tell it whether the user is watching a terminal.
if [ -t 2 ]; then export DISTNET_PROGRESS=${DISTNET_PROGRESS:-bar}; fi
echo "launch: $n rank(s) x $threads BLAS thread(s) via $mpiexec" >&2
exec "$mpiexec" -n "$n" "$py" -m distnet train "$@"
