#!/bin/bash
# qsub -v ARGS="fashion-cnn --epochs 10" cluster/pbs.sh
#PBS -N distnet
#PBS -l select=2:ncpus=8:mpiprocs=8
#PBS -l walltime=01:00:00
#PBS -j oe
set -euo pipefail
cd "$PBS_O_WORKDIR"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
. .venv/bin/activate
n=$(wc -l < "$PBS_NODEFILE")
# shellcheck disable=SC2086
mpiexec -n "$n" -f "$PBS_NODEFILE" python -m distnet train $ARGS --metrics "runs/${PBS_JOBID}.jsonl" \
        --checkpoint-dir "runs/${PBS_JOBID}"
