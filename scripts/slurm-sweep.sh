#!/usr/bin/env bash
# A SLURM job array that shares one sweep across N GPUs (or machines): each array task runs
# shard K of N (`--shard K/N`, a deterministic slice of the plan), all writing run folders into
# the same --out on a shared filesystem (run ids never collide; each shard keeps its own index).
#
#   sbatch --array=0-7 scripts/slurm-sweep.sh sweeps/paper-table2.toml runs/paper-table2
#   # when all tasks are done (or after copying shard outputs into one folder):
#   petnas-train sweep --config sweeps/paper-table2.toml --out runs/paper-table2 --reindex
#   petnas-analyze report --runs runs/paper-table2 --out reports/paper-table2
#
#SBATCH --job-name=petnas
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=48:00:00
#SBATCH --output=logs/petnas-%A_%a.out
set -euo pipefail
config=${1:?usage: sbatch --array=0-(N-1) scripts/slurm-sweep.sh CONFIG OUT}
out=${2:?usage: sbatch --array=0-(N-1) scripts/slurm-sweep.sh CONFIG OUT}
k=${SLURM_ARRAY_TASK_ID:?run as a job array}
n=${SLURM_ARRAY_TASK_COUNT:-$(( ${SLURM_ARRAY_TASK_MAX:?} + 1 ))}
bin=${PETNAS_TRAIN:-target/release/petnas-train}
mkdir -p logs
# Rerunning the same array resumes: finished runs are skipped, interrupted ones redone.
exec "$bin" sweep --config "$config" --out "$out" --shard "$k/$n" --quiet --no-estimate
