#!/bin/bash
# qsub -v ARGS="fashion-cnn --epochs 10" cluster/pbs.sh
#   One distnet rank per MPI slot ($PBS_NODEFILE has a line per slot); metrics in runs/<job id>.jsonl,
#   checkpoints in runs/<job id>/ (DISTNET_RUNS=DIR puts them elsewhere). ARGS is split at spaces.
#
# MPI: the mpiexec on PATH must be the one of the MPI that mpi4py loads: the virtual environment's (hydra, from
# the 'mpich' wheel, which reaches the other nodes by ssh), or the cluster's own when mpi4py was built against
# it (cluster/README.md). Both are given the node file: hydra as -f, Open MPI as --hostfile.
#
# Rerun: a job that PBS runs again (-r y: after a node failure, or qrerun) keeps its id, finds its own
# checkpoints in runs/<job id>/, and the script adds --resume: training continues where it stopped.
# Walltime: PBS sends SIGTERM, then SIGKILL after its kill_delay. On SIGTERM (at a rank, or at mpiexec, which
# passes it on) distnet stops at the next step boundary with a checkpoint and exit code 3, if kill_delay leaves
# the time; otherwise what survives is the newest periodic checkpoint (--checkpoint-every STEPS).
#PBS -N distnet
#PBS -l select=2:ncpus=8:mpiprocs=8
#PBS -l walltime=01:00:00
#PBS -j oe
#PBS -r y
set -euo pipefail
cd "${PBS_O_WORKDIR:-.}"
: "${ARGS:?pass the distnet arguments: qsub -v ARGS=\"CONFIG_OR_PRESET [options]\" cluster/pbs.sh}"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
venv=${DISTNET_VENV:-.venv}
if [ -f "$venv/bin/activate" ]; then . "$venv/bin/activate"; fi
n=$(wc -l < "$PBS_NODEFILE")
case $(mpiexec --version 2>&1) in
  *"Open MPI"*|*OpenRTE*) hostfile=(--hostfile "$PBS_NODEFILE");;
  *) hostfile=(-f "$PBS_NODEFILE");;
esac
runs=${DISTNET_RUNS:-runs}
ckpt=$runs/$PBS_JOBID
resume=()
if compgen -G "$ckpt/ckpt-*.h5" > /dev/null; then
  resume=(--resume)
  echo "pbs.sh: resuming from the newest checkpoint in $ckpt" >&2
fi
# shellcheck disable=SC2086
mpiexec -n "$n" "${hostfile[@]}" python -m distnet train $ARGS --metrics "$runs/$PBS_JOBID.jsonl" \
        --checkpoint-dir "$ckpt" ${resume[@]+"${resume[@]}"}
