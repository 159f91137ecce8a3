#!/usr/bin/env bash
# Build mmunirep's CUDA depthwise-conv extension (mmunirep/_ext*.so) in place.
#
#   bash scripts/build_ops.sh            # for TORCH_CUDA_ARCH_LIST (default: 8.0;8.6;9.0+PTX and
#                                      # the visible GPUs those do not run on natively)
#   TORCH_CUDA_ARCH_LIST=9.0 bash scripts/build_ops.sh
#
# Needs nvcc and a CUDA build of torch, not a GPU. If CUDA_HOME is unset it is taken from the
# real location of nvcc: some machines put a wrapper script on the PATH (torch would guess the
# toolkit root from the wrapper's folder and fail to link cudart).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
if [ -z "${CUDA_HOME:-}" ]; then
  nvcc_path=$(command -v nvcc) || { echo "build_ops: nvcc not found; set CUDA_HOME" >&2; exit 1; }
  real=$(sed -n 's/^exec \(.*\/bin\/nvcc\) .*/\1/p' "$nvcc_path" 2>/dev/null | head -n 1)
  [ -n "$real" ] || real=$(readlink -f "$nvcc_path")
  export CUDA_HOME=$(dirname "$(dirname "$real")")
fi
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$("$PY" "$ROOT/mmunirep/ops/cuda_archs.py")}
export FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
echo "build_ops: CUDA_HOME=$CUDA_HOME TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
cd "$ROOT"
start=$(date +%s)
"$PY" setup.py -q build_ext --inplace
# the file of this Python (another Python's build may sit beside it)
so=$("$PY" -c 'import sysconfig; print("mmunirep/_ext" + sysconfig.get_config_var("EXT_SUFFIX"))')
echo "build_ops: built $so in $(( $(date +%s) - start )) s"
"$PY" -c '
from mmunirep.ops import ext_available
from mmunirep.ops.cuda_archs import describe_built_archs
assert ext_available(), "extension did not import"
import mmunirep._ext as ext
print("build_ops: mmunirep._ext imports, with CUDA kernels for", describe_built_archs(ext.cuda_archs))'
# A C++ error must come back as a Python RuntimeError: an extension with a private copy of the C++
# runtime (linked by a toolchain that finds only the static libstdc++) imported and computed, but
# died (SIGSEGV) on its first TORCH_CHECK. setup.py links the libstdc++.so torch has loaded.
"$PY" -c '
import torch, mmunirep._ext as ext
try:
    ext.depthwise_conv2d_forward(torch.randn(1, 2, 5, 5), torch.randn(2, 1, 4, 4), None)
except RuntimeError as err:
    assert "odd square kernel" in str(err), err
    print("build_ops: its errors raise RuntimeError")
else:
    raise SystemExit("build_ops: a 4x4 kernel was not refused")' || {
  echo "build_ops: the extension cannot raise its errors (exit $?). Check that it needs" \
    "libstdc++.so.6 (readelf -d) and does not define __cxa_throw itself (nm -D): if it does, build" \
    "with a compiler that links the C++ runtime dynamically (e.g. CXX=/usr/bin/g++)" >&2
  exit 1
}
