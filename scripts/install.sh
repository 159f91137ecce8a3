#!/usr/bin/env bash
# One-command install of mmunirep and its whole stack (README "Install").
#
#   bash scripts/install.sh                 # creates ./.venv and installs everything into it
#   MMUNIREP_VENV=/path/to/env bash scripts/install.sh
#   bash scripts/install.sh --no-venv       # into the Python that `python3` runs now
#
# What it does, in order:
#   1. a virtual environment (unless --no-venv), with setuptools<81 (mmcv 2.1.0's setup.py imports
#      pkg_resources, which setuptools 81 removed), wheel and ninja;
#   2. torch / torchvision, pinned (TORCH_SPEC overrides) so that pip takes the files on disk
#      instead of downloading several GB;
#   3. mmcv 2.1.0 with its compiled ops: mmdet 3.3.0 and mmsegmentation 1.2.2 accept only
#      mmcv>=2.0.0rc4,<2.2.0 and PyPI has 2.1.0 only as source. It is built from that exact sdist,
#      patched here for torch >= 2.10 headers (C++20), and the wheel is cached in
#      $MMUNIREP_CACHE (default ~/.cache/mmunirep) keyed by Python, torch and CPU/CUDA, so that a
#      second install on the same machine reuses it. CUDA ops are built when a GPU is visible
#      or FORCE_CUDA=1;
#   4. the pinned stack of requirements/runtime.txt, the test tools of requirements/tests.txt and
#      mmunirep itself (editable);
#   5. an import check of mmunirep, mmcv.ops, mmdet and mmseg.
set -euo pipefail

say() { printf '[install %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[install] error: %s\n' "$*" >&2; exit 1; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
USE_VENV=1
for arg in "$@"; do
  case "$arg" in
    --no-venv) USE_VENV=0 ;;
    -h|--help) sed -n '2,22p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument '$arg' (expected --no-venv or --help)" ;;
  esac
done

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
MMCV_VERSION=${MMCV_VERSION:-2.1.0}
CACHE=${MMUNIREP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mmunirep}
start=$(date +%s)

if [ "$USE_VENV" = 1 ]; then
  VENV=${MMUNIREP_VENV:-$ROOT/.venv}
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  PY="$VENV/bin/python"
else
  PY=$(command -v "$PYTHON") || die "no '$PYTHON' on PATH"
fi
# mmcv's setup.py and mmengine (Config, at run time) import pkg_resources, which setuptools 81
# removed; torch asks for setuptools>=77.0.3, which alone would upgrade it past 80. Every pip call
# carries this pin so no step moves it.
SETUPTOOLS='setuptools>=77.0.3,<81'
pipi() { "$PY" -m pip install --disable-pip-version-check "$@" "$SETUPTOOLS"; }

say "python: $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
say "step 1/5: build tools"
pipi -q wheel ninja

say "step 2/5: $TORCH_SPEC"
# shellcheck disable=SC2086
pipi -q $TORCH_SPEC

# ---- step 3: mmcv --------------------------------------------------------------------------
read -r PYTAG TORCHVER HAS_GPU < <("$PY" -c '
import sys, torch
print(f"cp{sys.version_info[0]}{sys.version_info[1]}", torch.__version__, int(torch.cuda.is_available()))')
if [ "${FORCE_CUDA:-0}" = 1 ] || [ "$HAS_GPU" = 1 ]; then
  export FORCE_CUDA=1
  # mmcv's CUDA ops and ours: 8.0;8.6;9.0+PTX and the visible GPUs those do not run natively on
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$("$PY" "$ROOT/mmunirep/ops/cuda_archs.py")}
  OPS="cuda-$(echo "$TORCH_CUDA_ARCH_LIST" | tr -c '0-9a-zA-Z.\n' '_')"
else
  OPS=cpu
fi
WHEEL_DIR="$CACHE/wheels/mmcv-$MMCV_VERSION-$PYTAG-torch$TORCHVER-$OPS"
if [ -n "$(ls "$WHEEL_DIR"/mmcv-*.whl 2>/dev/null)" ]; then
  say "step 3/5: reusing the cached mmcv wheel in $WHEEL_DIR"
else
  say "step 3/5: building mmcv $MMCV_VERSION ($OPS ops) from source; about 17-21 min on 2 cores, once per machine"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "$PY" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: \
    --no-build-isolation -d "$work" "mmcv==$MMCV_VERSION"
  tar -xzf "$work"/mmcv-"$MMCV_VERSION".tar.gz -C "$work"
  src="$work/mmcv-$MMCV_VERSION"
  # torch >= 2.10 headers need C++20; mmcv 2.1.0 asks for C++14/17.
  sed -i -e 's/-std=c++14/-std=c++20/g' -e 's/-std=c++17/-std=c++20/g' "$src/setup.py"
  grep -q -- '-std=c++20' "$src/setup.py" || die "could not patch mmcv's C++ standard in $src/setup.py"
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PY" -m pip wheel --disable-pip-version-check \
    --no-deps --no-build-isolation -w "$work/dist" "$src"
  mkdir -p "$WHEEL_DIR"
  cp "$work"/dist/mmcv-*.whl "$WHEEL_DIR"/
  rm -rf "$work"; trap - EXIT
fi

say "step 4/5: mmcv (cached wheel), mmengine, mmdet, mmsegmentation, timm, pycocotools, test tools, mmunirep (editable)"
pipi -q -r "$ROOT/requirements/runtime.txt" -r "$ROOT/requirements/tests.txt" \
  "$(ls "$WHEEL_DIR"/mmcv-*.whl | head -n 1)"
pipi -q --no-build-isolation -e "$ROOT"

say "step 5/5: import check"
(cd "$ROOT" && "$PY" -c 'import mmunirep, mmcv.ops, mmdet, mmseg, timm, pkg_resources, psutil
from mmengine.config import Config
Config.fromfile("configs/detection/unireplknet_t_1k_cascade_3x.py")
Config.fromfile("configs/segmentation/unireplknet_t_1k_upernet_160k_512.py")
print("mmunirep", mmunirep.__version__, "| mmcv", __import__("mmcv").__version__,
      "| mmdet", mmdet.__version__, "| mmseg", mmseg.__version__, "| timm", timm.__version__)')
say "done in $(( $(date +%s) - start )) s; activate with: source ${VENV:-<your env>}/bin/activate"
