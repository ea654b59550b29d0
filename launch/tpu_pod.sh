#!/usr/bin/env bash
# BYOL on a Cloud TPU-VM slice (single host or pod): create the slice, copy
# this checkout to every worker and install it, run the same command on all
# workers (`--worker=all`; their output streams here), optionally delete it.
#
# Usage:
#   launch/tpu_pod.sh --name NAME --zone ZONE --accelerator-type TYPE
#       [--version RUNTIME] [--project PROJECT] [--spot] [--no-create]
#       [--delete] [--module experiments.pretrain] [--dry-run] [-h|--help]
#       -- ARGS...
#
#   --name NAME              the TPU VM's name
#   --zone ZONE              e.g. us-central2-b
#   --accelerator-type TYPE  e.g. v4-256 (32 workers)
#   --version RUNTIME        TPU software version (default tpu-ubuntu2204-base)
#   --project PROJECT        Google Cloud project (default: gcloud's)
#   --spot                   create a Spot (preemptible) slice
#   --no-create              use an existing slice of that name
#   --delete                 delete the slice when the run ends
#   --module MODULE          entry point (default experiments.pretrain)
#   --dry-run                print every command (shell-quoted, ready to
#                            paste) and run none
#   -h, --help               print this help and exit
#
# ARGS go unchanged to `python3 -m MODULE` on every worker. The workdir must
# be on storage all workers share (gs://). Each worker joins jax.distributed
# by itself (experiments/entry.py detects the TPU VM).
# Exit status: the run's (75: preempted after a checkpoint; run again).
#
# Example:
#   launch/tpu_pod.sh --name byol --zone us-central2-b \
#       --accelerator-type v4-256 --spot --delete -- \
#       --workdir=gs://BUCKET/byol_1000ep \
#       --config=experiments/configs/byol.py:1000ep
set -euo pipefail

name="" zone="" type="" project="" spot=0 create=1 delete=0 dry_run=0
version="tpu-ubuntu2204-base"
module="experiments.pretrain"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() { echo "error: $*" >&2; exit 2; }
# An option's value is the next argument, unless that is another option.
need_value() { [ $# -ge 2 ] && [[ "$2" != -* ]] || die "$1 needs a value, e.g. $1 VALUE (see --help)"; }
usage() {  # the comment block at the top of this file, without its '#'
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"
}
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --name) need_value "$@"; name="$2"; shift 2 ;;
    --zone) need_value "$@"; zone="$2"; shift 2 ;;
    --accelerator-type) need_value "$@"; type="$2"; shift 2 ;;
    --version) need_value "$@"; version="$2"; shift 2 ;;
    --project) need_value "$@"; project="$2"; shift 2 ;;
    --module) need_value "$@"; module="$2"; shift 2 ;;
    --spot) spot=1; shift ;;
    --no-create) create=0; shift ;;
    --delete) delete=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    *) die "unknown option $1; put the entry point's flags after --" ;;
  esac
done
[ -n "$name" ] || die "--name is required (the TPU VM's name)"
[ -n "$zone" ] || die "--zone is required, e.g. us-central2-b"
[ -n "$type" ] || die "--accelerator-type is required, e.g. v4-256"
[ $# -gt 0 ] || die "no entry-point flags after --; give at least --workdir and --config"

# Hosts (= workers = JAX processes) of a slice. v2/v3/v4/v5p count
# TensorCores, 8 per host; v5e/v6e count chips, 4 per host of a multi-host
# slice (up to 8 chips fit on one host).
workers_of() {
  local generation="${1%-*}" size="${1##*-}"
  [[ "$size" =~ ^[0-9]+$ ]] || die "cannot read the size of accelerator type '$1'"
  case "$generation" in
    v2|v3|v4|v5p) echo $(( size > 8 ? size / 8 : 1 )) ;;
    v5litepod|v5e|v6e) echo $(( size > 8 ? size / 4 : 1 )) ;;
    *) die "unknown TPU generation in '$1'" ;;
  esac
}
workers="$(workers_of "$type")"

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=("--zone=$zone")
[ -z "$project" ] || where+=("--project=$project")

# Each python argument is quoted for the workers' shell, so spaces and
# quotes arrive unchanged.
remote_args="$(printf ' %q' "$@")"
remote_run="cd ~/byol_jax && python3 -m $module$remote_args"
tarball="/tmp/byol_jax-$name.tar.gz"

steps=()
quote() { local line; line="$(printf '%q ' "$@")"; echo "${line% }"; }
add() { steps+=("$(quote "$@")"); }
if [ "$create" -eq 1 ]; then
  create_cmd=("${gcloud_tpu[@]}" create "$name" "${where[@]}"
              "--accelerator-type=$type" "--version=$version")
  [ "$spot" -eq 0 ] || create_cmd+=(--spot)
  add "${create_cmd[@]}"
fi
add tar -czf "$tarball" -C "$repo" --exclude=.venv --exclude=.git --exclude=runs --exclude=.cache .
add "${gcloud_tpu[@]}" scp "$tarball" "$name:~/byol_jax.tar.gz" "${where[@]}" --worker=all
add "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all \
  "--command=mkdir -p ~/byol_jax && tar -xzf ~/byol_jax.tar.gz -C ~/byol_jax && python3 -m pip install -q -e \"\$HOME/byol_jax[tpu]\""
add "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all "--command=$remote_run"
delete_cmd="$(quote "${gcloud_tpu[@]}" delete "$name" "${where[@]}" --quiet)"

if [ "$dry_run" -eq 1 ]; then
  echo "# $type: $workers worker(s), one JAX process each"
  printf '%s\n' "${steps[@]}"
  [ "$delete" -eq 0 ] || echo "$delete_cmd"
  exit 0
fi

status=0
for step in "${steps[@]}"; do
  echo "+ $step" >&2
  set +e; eval "$step"; status=$?; set -e
  [ "$status" -eq 0 ] || break
done
if [ "$delete" -eq 1 ]; then
  echo "+ $delete_cmd" >&2
  eval "$delete_cmd"
fi
exit "$status"
