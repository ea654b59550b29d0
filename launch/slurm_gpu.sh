#!/usr/bin/env bash
# Submits launch/slurm_gpu.sbatch: BYOL on NODES GPU nodes, one JAX process
# per node.
#
# Usage:
#   launch/slurm_gpu.sh --nodes N [--gpus-per-node G] [--partition P]
#       [--time HH:MM:SS] [--account A] [--module experiments.pretrain]
#       [--dry-run] [-h|--help] -- ARGS...
#
#   --nodes N            nodes (= JAX processes) to run on
#   --gpus-per-node G    GPUs each node drives (default 8)
#   --partition P        SLURM partition (default: the cluster's)
#   --time HH:MM:SS      time limit (or minutes, MM:SS, D-HH, D-HH:MM,
#                        D-HH:MM:SS); the job requeues itself and resumes
#   --account A          SLURM account to charge
#   --module MODULE      entry point (default experiments.pretrain)
#   --dry-run            print the sbatch command and the srun command the
#                        job will run, and submit nothing
#   -h, --help           print this help and exit
#
# ARGS go unchanged to the entry point on every node (sbatch hands them to
# the script as they are, so spaces survive). The workdir must be on a file
# system all nodes share.
#
# Example:
#   launch/slurm_gpu.sh --nodes 4 --partition gpu --time 24:00:00 -- \
#       --workdir=/shared/runs/byol_1000ep \
#       --config=experiments/configs/byol.py:1000ep
set -euo pipefail

nodes="" gpus=8 partition="" time_limit="" account="" dry_run=0
module="experiments.pretrain"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() { echo "error: $*" >&2; exit 2; }
# An option's value is the next argument, unless that is empty or another
# option.
need_value() { [ $# -ge 2 ] && [ -n "$2" ] && [[ "$2" != -* ]] || die "$1 needs a value, e.g. $1 VALUE (see --help)"; }
usage() {  # the comment block at the top of this file, without its '#'
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"
}
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --nodes) need_value "$@"; nodes="$2"; shift 2 ;;
    --gpus-per-node) need_value "$@"; gpus="$2"; shift 2 ;;
    --partition) need_value "$@"; partition="$2"; shift 2 ;;
    --time) need_value "$@"; time_limit="$2"; shift 2 ;;
    --account) need_value "$@"; account="$2"; shift 2 ;;
    --module) need_value "$@"; module="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    *) die "unknown option $1; put the entry point's flags after --" ;;
  esac
done
[ -n "$nodes" ] || die "--nodes is required (nodes = JAX processes), e.g. --nodes 4"
[[ "$nodes" =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive integer, got '$nodes'"
[[ "$gpus" =~ ^[1-9][0-9]*$ ]] || die "--gpus-per-node must be a positive integer, got '$gpus'"
# Slurm's time formats: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
[ -z "$time_limit" ] || [[ "$time_limit" =~ ^([0-9]+-)?[0-9]+(:[0-9]+){0,2}$ ]] ||
  die "--time must be minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS, e.g. 24:00:00, got '$time_limit'"
[[ ! "$module" =~ [[:space:]] ]] || die "--module must be a module name without spaces, e.g. experiments.linear_eval, got '$module'"
[ $# -gt 0 ] || die "no entry-point flags after --; give at least --workdir and --config"

cmd=(sbatch "--nodes=$nodes" --ntasks-per-node=1 "--gpus-per-node=$gpus"
     "--export=ALL,BYOL_MODULE=$module")
[ -z "$partition" ] || cmd+=("--partition=$partition")
[ -z "$time_limit" ] || cmd+=("--time=$time_limit")
[ -z "$account" ] || cmd+=("--account=$account")
cmd+=("$here/slurm_gpu.sbatch" "$@")

if [ "$dry_run" -eq 1 ]; then
  line="$(printf '%q ' "${cmd[@]}")"; echo "${line% }"
  SLURM_JOB_NUM_NODES="$nodes" BYOL_MODULE="$module" \
    bash "$here/slurm_gpu.sbatch" --dry-run "$@"
  exit 0
fi
exec "${cmd[@]}"
