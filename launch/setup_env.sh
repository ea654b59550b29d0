#!/usr/bin/env bash
# Sourced by launch/demo.sh and tests/run.sh: makes sure that .venv exists
# with the newest Python >= 3.11 on this machine, that byol_jax is installed
# in it, and that Debian's Fashion-MNIST files are present. Exports PY.
# Idempotent: a second run only checks (a stamp records the installed setup.py).
#
# Usage:
#   source launch/setup_env.sh       (from a bash script; then use "$PY")
#   bash launch/setup_env.sh [-h|--help]
#
#   -h, --help   print this help and exit
#
# Options are read only when the file is run, not when it is sourced: a
# sourced file sees its caller's arguments (tests/run.sh's go to pytest).
# Run, it sets up the same way, but the exports end with it.
#
# Example:
#   source launch/setup_env.sh && "$PY" -m pytest -q tests

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  case "${1:-}" in
    -h|--help)  # the comment block at the top of this file, without its '#'
      sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    '') ;;
    *) echo "error: unknown option $1; launch/setup_env.sh takes only --help (or source it)" >&2
       exit 2 ;;
  esac
fi

_repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="${BYOL_VENV:-$_repo_root/.venv}"
_fmnist_dir="/usr/share/datasets/fashion-mnist"

_newest_python() {
  # Candidates on PATH and in pyenv's folder; a pyenv shim for a version that
  # is not selected fails to run, so each candidate must answer.
  local candidates=() best="" best_minor=0 minor
  for v in 3.15 3.14 3.13 3.12 3.11; do
    candidates+=("python$v")
    for d in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v"*/bin/python"$v"; do
      [ -x "$d" ] && candidates+=("$d")
    done
  done
  for c in "${candidates[@]}"; do
    minor=$("$c" -c 'import sys, venv; print(sys.version_info[1])' 2>/dev/null) || continue
    if [ "$minor" -gt "$best_minor" ]; then best="$c"; best_minor="$minor"; fi
  done
  [ -n "$best" ] || { echo "error: no Python >= 3.11 with venv found; install python3.12 (or newer) and retry" >&2; return 1; }
  command -v "$best" 2>/dev/null || echo "$best"
}

_ensure_venv() {
  local stamp="$_venv/.byol_jax_setup" want
  want="$(cat "$_repo_root/setup.py" | sha1sum | cut -d' ' -f1)"
  if [ -x "$_venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  if [ ! -x "$_venv/bin/python" ]; then
    local py; py="$(_newest_python)" || return 1
    echo "setting up $_venv with $("$py" --version)" >&2
    "$py" -m venv "$_venv" || return 1
  fi
  "$_venv/bin/python" -m pip install -q --upgrade pip || return 1
  "$_venv/bin/python" -m pip install -q -e "$_repo_root[test]" || return 1
  echo "$want" > "$stamp"
}

_ensure_fashion_mnist() {
  [ -f "$_fmnist_dir/t10k-labels-idx1-ubyte.gz" ] && return 0
  echo "installing Debian's dataset-fashion-mnist" >&2
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null || {
    echo "error: could not install dataset-fashion-mnist; run: sudo apt-get install -y dataset-fashion-mnist" >&2
    return 1; }
}

_ensure_venv && _ensure_fashion_mnist || { echo "error: setup failed (see above)" >&2; exit 1; }
export PY="$_venv/bin/python"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
