#!/usr/bin/env bash
# mpi4py built against Debian's Open MPI, beside the MPICH wheel of the virtual environment (which stays as it is):
#   cluster/openmpi-mpi4py.sh          prints the folder to put first on PYTHONPATH for Open MPI runs
#   PYTHONPATH=$(cluster/openmpi-mpi4py.sh) mpirun ... python -m distnet train ...
# Builds the wheel once (2-3 minutes on 2 cores) into .cache/wheels/ and installs it into .cache/openmpi-py/;
# later calls reuse both. Same mpi4py version as the virtual environment's. Needs openmpi-bin libopenmpi-dev.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${PYTHON:-$root/.venv/bin/python}
[ -x "$py" ] || py=python3
# Debian's name for Open MPI's wrapper: a plain `mpicc` may be the MPICH wheel's, first on an activated venv's PATH
mpicc=${MPICC:-$(command -v mpicc.openmpi || true)}
[ -n "$mpicc" ] && "$mpicc" --showme:version 2>&1 | grep -q "Open MPI" || {
  echo "openmpi-mpi4py.sh: Open MPI's mpicc not found: apt-get install -y openmpi-bin libopenmpi-dev" >&2; exit 2; }
version=$("$py" -c 'import mpi4py; print(mpi4py.__version__)')
wheels=$root/.cache/wheels/openmpi
target=$root/.cache/openmpi-py
wheel=$(ls "$wheels"/mpi4py-"$version"-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
  echo "openmpi-mpi4py.sh: building mpi4py $version against $("$mpicc" --showme:version 2>&1 | head -n 1) (2-3 minutes)" >&2
  mkdir -p "$wheels"
  # Built by a venv of its own: the MPICH wheel puts its mpi.h into its venv's include/, which the compiler
  # would find before Open MPI's (mpi4py then compiles against one MPI and links the other).
  build=$root/.cache/build-venv
  "$("$py" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')" -m venv --clear "$build"
  env MPICC="$mpicc" "$build/bin/python" -m pip wheel -q --no-deps --no-binary=mpi4py --no-cache-dir \
    -w "$wheels" "mpi4py==$version" >&2
  rm -rf "$build"
  wheel=$(ls "$wheels"/mpi4py-"$version"-*.whl | head -n 1)
fi
if [ ! -f "$target/.from" ] || [ "$(cat "$target/.from")" != "$(basename "$wheel")" ]; then
  rm -rf "$target"
  "$py" -m pip install -q --no-deps --no-index --target "$target" "$wheel" >&2
  basename "$wheel" > "$target/.from"
fi
library=$(PYTHONPATH=$target "$py" -c 'import mpi4py; mpi4py.rc.initialize = False
from mpi4py import MPI; print(MPI.Get_library_version().rstrip("\0"))' 2>&1) || true
case $library in
  *"Open MPI"*) ;;
  *) echo "openmpi-mpi4py.sh: the mpi4py in $target does not load Open MPI ($library); removing it and $wheel" >&2
     rm -rf "$target" "$wheel"; exit 1;;
esac
echo "$target"
