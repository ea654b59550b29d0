#!/usr/bin/env bash
# N processes on this machine, each with M simulated CPU devices, joined by
# jax.distributed (CPU collectives over localhost): a multi-host run in
# miniature, for tests and for trying multi-host changes without a cluster.
#
# Usage:
#   launch/local_multiprocess.sh [--dry-run] [--processes N] [--devices M]
#       [--port P] [--logdir DIR] [--module experiments.pretrain]
#       [-h|--help] -- ARGS...
#
#   --processes N    JAX processes to start (default 2)
#   --devices M      simulated CPU devices per process (default 2)
#   --port P         the coordinator's port (default: a free one)
#   --logdir DIR     where process_<i>.log go (default
#                    local_multiprocess_logs/ in the current folder)
#   --module MODULE  entry point (default experiments.pretrain)
#   --dry-run        print the commands, one per line, and run nothing
#   -h, --help       print this help and exit
#
# ARGS go unchanged to every process (e.g. --workdir=... --config=...);
# each also gets --coordinator_address, --num_processes and --process_id.
# Process 0's log is also shown here. PY chooses the Python (default
# python3). SIGTERM/SIGINT are passed on to every process (they checkpoint
# and exit 75). Exits with the first non-zero status of the processes, else
# 0; after a crash the other processes are killed rather than left waiting.
#
# Example:
#   launch/local_multiprocess.sh --processes 2 --devices 2 -- \
#       --workdir=runs/local_2x2 --config=experiments/configs/byol.py:demo
set -euo pipefail

processes=2
devices=2
port=""
logdir="local_multiprocess_logs"
module="experiments.pretrain"
dry_run=0
python="${PY:-python3}"

die() { echo "error: $*" >&2; exit 2; }
# An option's value is the next argument, unless that is another option.
need_value() { [ $# -ge 2 ] && [[ "$2" != -* ]] || die "$1 needs a value, e.g. $1 VALUE (see --help)"; }
usage() {  # the comment block at the top of this file, without its '#'
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"
}
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift ;;
    --processes) need_value "$@"; processes="$2"; shift 2 ;;
    --devices) need_value "$@"; devices="$2"; shift 2 ;;
    --port) need_value "$@"; port="$2"; shift 2 ;;
    --logdir) need_value "$@"; logdir="$2"; shift 2 ;;
    --module) need_value "$@"; module="$2"; shift 2 ;;
    --) shift; break ;;
    *) die "unknown option $1; put the entry point's flags after --" ;;
  esac
done
[[ "$processes" =~ ^[1-9][0-9]*$ ]] || die "--processes must be a positive integer, got '$processes'"
[[ "$devices" =~ ^[1-9][0-9]*$ ]] || die "--devices must be a positive integer, got '$devices'"
[ -z "$port" ] || { [[ "$port" =~ ^[1-9][0-9]*$ ]] && [ "$port" -le 65535 ]; } ||
  die "--port must be a TCP port, 1 to 65535, got '$port'"
[ $# -gt 0 ] || die "no entry-point flags after --; give at least --workdir and --config"
if [ -z "$port" ]; then
  # A free port, chosen by the kernel (the coordinator binds it a moment later).
  port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')"
fi

args=("$@")

command_for() {  # command_for <process id>: sets cmd to that process's argv
  # A generous collective timeout: on a loaded machine one process can reach
  # a collective much later than another (we saw gloo give up after 30 s).
  cmd=(env "XLA_FLAGS=--xla_force_host_platform_device_count=$devices --xla_cpu_collective_timeout_seconds=600"
       JAX_PLATFORMS=cpu "$python" -m "$module" "${args[@]}"
       "--coordinator_address=localhost:$port" "--num_processes=$processes"
       "--process_id=$1")
}

if [ "$dry_run" -eq 1 ]; then
  for ((i = 0; i < processes; i++)); do
    command_for "$i"
    printf '%q ' "${cmd[@]}"; printf '> %q 2>&1\n' "$logdir/process_$i.log"
  done
  exit 0
fi

mkdir -p "$logdir"
pids=()
for ((i = 0; i < processes; i++)); do
  command_for "$i"
  "${cmd[@]}" > "$logdir/process_$i.log" 2>&1 &
  pids+=("$!")
done
forward() { kill -s "$1" "${pids[@]}" 2>/dev/null || true; }
trap 'forward TERM' TERM
trap 'forward INT' INT
tail -n +1 -f "$logdir/process_0.log" --pid="${pids[0]}" &
tail_pid=$!

# Wait for each process as it ends. A crash (status other than 0 or 75)
# would leave the others blocked in a collective until JAX's heartbeat
# timeout: stop them at once instead.
status=0
declare -A running
for pid in "${pids[@]}"; do running[$pid]=1; done
while [ "${#running[@]}" -gt 0 ]; do
  set +e; wait -n -p done_pid "${!running[@]}"; rc=$?; set -e
  # A trapped signal also ends `wait` (done_pid unset): wait again.
  [ -n "${done_pid:-}" ] || continue
  unset "running[$done_pid]" done_pid
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then
    status=$rc
    [ "$rc" -eq 75 ] || forward KILL
  fi
done
wait "$tail_pid" 2>/dev/null || true
exit "$status"
