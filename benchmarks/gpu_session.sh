#!/usr/bin/env bash
# Everything about the op that needs a GPU, in one command: build, GPU tests, kernel benchmark,
# end-to-end training step and an ncu profile, for a GPU machine that has a CUDA build of torch,
# nvcc and timm but not mmengine (as the GPU machines lent to our sessions).
#
#   bash benchmarks/gpu_session.sh prepare          # here, with the package registries: downloads
#                                                   # the dependencies the backbone and pytest need
#                                                   # into .gpu_wheels/ (cp312 wheels, pure Python
#                                                   # but for numpy and pyyaml; ~20 MB)
#   bash benchmarks/gpu_session.sh run OUT_DIR      # on the GPU machine, with .gpu_wheels/ carried
#   bash benchmarks/gpu_session.sh run OUT_DIR dwconv train_step   # only these steps (the build
#                                                   # of an earlier call on the same machine is used)
#
# `run` unpacks only the wheels whose module does not import already into a private folder on
# PYTHONPATH (no pip needed, nothing installed system-wide); if OpenCV is missing it puts a stub
# `cv2` there, which mmengine imports for its visualizer and which none of this code calls. Then:
#   OUT/device.txt      nvidia-smi, torch and CUDA versions
#   OUT/build.txt       tools/build_ops.sh for the GPU's own architecture (none: TORCH_CUDA_ARCH_LIST),
#                       then the log of the SASS step
#   OUT/sass.md         benchmarks/sass_report.py on that build (needs the toolkit's cuobjdump)
#   OUT/tests.txt       pytest tests/test_ops.py (the GPU tests no longer skip)
#   OUT/dwconv.md       benchmarks/dwconv_benchmark.py, fp32 / fp16 / bf16, every shape
#   OUT/train_step.md   benchmarks/train_step_benchmark.py, UniRepLKNet-S at 2x3x800x1333
#   OUT/bench.log       the two benchmarks' output and errors, then the training step with
#                       cudnn.benchmark and the op's autotuner on (train_step_autotune: cuDNN's
#                       algorithms and our kernel variants chosen per shape), then the training
#                       step in bf16 /
#                       fp16 with MMUNIREP_DWCONV_FWD_TC=1 and MMUNIREP_DWCONV_WGRAD_TC=1
#                       (train_step_tc: the tensor-core kernels), then the `profile` step's ncu
#                       report of benchmarks/profile_kernels.py (occupancy, issue, warp states per
#                       kernel),
#                       then the training step with MMUNIREP_DWCONV_PIPELINE=1 and
#                       MMUNIREP_DWCONV_FWD_PIPELINE=1 (train_step_pipelined: the pipelined weight
#                       gradient, and in fp32 the pipelined forward and input gradient),
#                       then dwconv_benchmark.py --parts-sweep (parts_sweep: the weight gradient
#                       by parts per channel against the op's rule), then the training step in
#                       bf16 with both models torch.compile'd (train_step_compile: the op against
#                       PyTorch's convolution with Inductor's fused norms around both)
#   OUT/summary.txt     each step's exit status and duration
# A step that fails is recorded and the next one runs (the benchmarks need the build). The steps
# share a time budget, GPU_SESSION_BUDGET_S (570 s: a device call is cut at 600 s), so that a slow
# step shortens the later ones instead of the call being cut before summary.txt is written; a
# step left with under 20 s is recorded as skipped. The benchmarks write their tables row by row
# and stop starting rows 15 s before their step's limit (exit 3: a partial table that says what it
# left out). DWCONV_ARGS / TRAIN_STEP_ARGS / TRAIN_STEP_AUTOTUNE_ARGS / TRAIN_STEP_TC_ARGS /
# PROFILE_ARGS / TRAIN_STEP_PIPELINED_ARGS / PARTS_SWEEP_ARGS / TRAIN_STEP_COMPILE_ARGS replace
# their default arguments (e.g. DWCONV_ARGS="--dtypes fp32 --shapes 2,192,100,168,13").
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WHEELS=${GPU_WHEELS:-$ROOT/.gpu_wheels}
PY=${PYTHON:-python3}
# module to try : distribution to download
DEPS="mmengine:mmengine==0.10.7 addict:addict yapf:yapf platformdirs:platformdirs
termcolor:termcolor rich:rich pygments:pygments markdown_it:markdown-it-py mdurl:mdurl
yaml:pyyaml numpy:numpy pytest:pytest pluggy:pluggy iniconfig:iniconfig packaging:packaging
setuptools:setuptools"

cmd=${1:-}
case "$cmd" in
prepare)
  mkdir -p "$WHEELS"
  dists=()
  for spec in $DEPS; do dists+=("${spec#*:}"); done
  "${PIP:-$ROOT/.venv/bin/pip}" download --no-deps --only-binary=:all: -d "$WHEELS" \
    --python-version "${GPU_PYTHON_VERSION:-3.12}" --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --platform any "${dists[@]}"
  echo "gpu_session: $(ls "$WHEELS" | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1) in $WHEELS"
  ;;
run)
  OUT=${2:?usage: bash benchmarks/gpu_session.sh run OUT_DIR [STEP...]}
  shift 2
  ALL_STEPS="device build sass tests dwconv train_step train_step_autotune train_step_tc profile train_step_pipelined parts_sweep train_step_compile"
  STEPS=${*:-$ALL_STEPS}
  for s in $STEPS; do
    [[ " $ALL_STEPS " == *" $s "* ]] || { echo "gpu_session: unknown step '$s' (steps: $ALL_STEPS)" >&2; exit 2; }
  done
  wants() { [[ " $STEPS " == *" $1 "* ]]; }
  deadline=$(( $(date +%s) + ${GPU_SESSION_BUDGET_S:-570} ))
  mkdir -p "$OUT"
  OUT=$(cd "$OUT" && pwd)
  cd "$ROOT"
  SITE=$(mktemp -d)/site
  mkdir -p "$SITE"
  export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
  summary="$OUT/summary.txt"
  : >"$summary"
  step() {  # step NAME LOGFILE TIMEOUT_S CMD...: if selected, within the time budget
    local name=$1 log=$2 limit=$3 t0 rc
    shift 3
    wants "$name" || return 0
    t0=$(date +%s)
    (( limit > deadline - t0 )) && limit=$(( deadline - t0 ))
    if (( limit < 20 )); then
      echo "$name: skipped, $(( deadline - t0 )) s left of the time budget" | tee -a "$summary"
      return 1
    fi
    echo "== $name (at most $limit s): $*" | tee -a "$log"
    MMUNIREP_BENCH_TIME_BUDGET_S=$(( limit - 15 )) timeout "$limit" "$@" >>"$log" 2>&1
    rc=$?
    echo "$name: exit $rc in $(( $(date +%s) - t0 )) s" | tee -a "$summary"
    return $rc
  }
  # dependencies: unpack the wheels of the modules that do not import
  missing=()
  for spec in $DEPS; do
    "$PY" -c "import ${spec%%:*}" 2>/dev/null || missing+=("${spec#*:}")
  done
  echo "gpu_session: unpacking ${missing[*]:-nothing} into $SITE" | tee -a "$summary"
  "$PY" - "$WHEELS" "$SITE" "${missing[@]}" <<'EOF' || exit 1
import glob, os, re, sys, zipfile
wheels, site, dists = sys.argv[1], sys.argv[2], sys.argv[3:]
for dist in dists:
    name = re.split('[=<>]', dist)[0].replace('-', '_').lower()
    found = [w for w in glob.glob(os.path.join(wheels, '*.whl'))
             if os.path.basename(w).lower().startswith(name + '-')]
    if not found:
        sys.exit(f'gpu_session: no wheel of {dist} in {wheels} (run `prepare` where pip can reach PyPI)')
    zipfile.ZipFile(sorted(found)[-1]).extractall(site)
EOF
  if ! "$PY" -c "import cv2" 2>/dev/null; then
    mkdir -p "$SITE/cv2"
    cat >"$SITE/cv2/__init__.py" <<'EOF'
"""Stub: mmengine imports cv2 for its visualizer; the GPU session never draws."""
def __getattr__(name):
    raise ImportError(f'cv2.{name}: OpenCV is not installed on this machine (stub module)')
EOF
  fi
  step device "$OUT/device.txt" 60 bash -c "nvidia-smi; \"$PY\" -c 'import torch, timm, mmengine; print(\"torch\", torch.__version__, \"CUDA\", torch.version.cuda, \"cudnn\", torch.backends.cudnn.version(), \"timm\", timm.__version__, \"mmengine\", mmengine.__version__); print(torch.cuda.get_device_name(), torch.cuda.get_device_capability())'"
  arch=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null)
  # no GPU answering (a dry run on a CPU machine): the first architecture asked for
  [[ -n "$arch" ]] || { arch=${TORCH_CUDA_ARCH_LIST:-}; arch=${arch%%;*}; arch=${arch%%+*}; }
  step build "$OUT/build.txt" 240 env PYTHON="$PY" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$arch}" \
    MAX_JOBS="${MAX_JOBS:-$(nproc)}" bash tools/build_ops.sh
  build_rc=$?  # 0 also when the build is not selected
  # the other steps need the extension: this call's build, or (build not selected) an earlier
  # call's on this machine; never a stale one left by a build that failed
  if (( build_rc == 0 )) &&
      "$PY" -c 'from mmunirep.ops import ext_available; assert ext_available()' 2>/dev/null; then
    step sass "$OUT/build.txt" 60 "$PY" benchmarks/sass_report.py --arch "sm_${arch/./}" \
      --out "$OUT/sass.md"
    step tests "$OUT/tests.txt" 150 "$PY" -m pytest tests/test_ops.py -q -rs -p no:cacheprovider
    # the *_ARGS are word lists: unquoted on purpose
    step dwconv "$OUT/bench.log" 240 "$PY" benchmarks/dwconv_benchmark.py \
      ${DWCONV_ARGS:-} --out "$OUT/dwconv.md"
    step train_step "$OUT/bench.log" 150 "$PY" benchmarks/train_step_benchmark.py \
      ${TRAIN_STEP_ARGS:---precision fp32 bf16 fp16} --out "$OUT/train_step.md"
    # the training step with cudnn.benchmark on, cuDNN timing its algorithms, and the op its
    # kernel variants per shape (MMUNIREP_DWCONV_AUTOTUNE=1, mmunirep/ops/autotune.py); its table
    # goes to bench.log only
    step train_step_autotune "$OUT/bench.log" 120 env MMUNIREP_DWCONV_AUTOTUNE=1 \
      "$PY" benchmarks/train_step_benchmark.py \
      --cudnn-benchmark ${TRAIN_STEP_AUTOTUNE_ARGS:---precision fp32 bf16}
    # the training step in half precision with the tensor-core kernels on the op's side; its
    # table goes to bench.log only (a call returns at most 8 files from OUT)
    step train_step_tc "$OUT/bench.log" 120 env MMUNIREP_DWCONV_WGRAD_TC=1 MMUNIREP_DWCONV_FWD_TC=1 \
      "$PY" benchmarks/train_step_benchmark.py ${TRAIN_STEP_TC_ARGS:---precision bf16 fp16}
    # clocks not locked: KINDS.md saw ncu read counters on these machines with --clock-control none
    step profile "$OUT/bench.log" 120 "${NCU:-ncu}" --clock-control none \
      -k 'regex:depthwise_conv2d_(forward|weight_grad)_(k|tc|pipelined)_kernel' \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      --section SchedulerStats \
      "$PY" benchmarks/profile_kernels.py ${PROFILE_ARGS:-}
    # the training step again with the pipelined kernels on the op's side (the weight gradient;
    # in fp32 the forward and input gradient too); its table goes to bench.log only
    step train_step_pipelined "$OUT/bench.log" 120 env MMUNIREP_DWCONV_PIPELINE=1 \
      MMUNIREP_DWCONV_FWD_PIPELINE=1 \
      "$PY" benchmarks/train_step_benchmark.py ${TRAIN_STEP_PIPELINED_ARGS:---precision fp32 bf16}
    # the weight gradient by parts per channel, against the op's rule (weight_grad_parts); its
    # table goes to bench.log only
    step parts_sweep "$OUT/bench.log" 120 "$PY" benchmarks/dwconv_benchmark.py --parts-sweep \
      ${PARTS_SWEEP_ARGS:---dtypes fp32 bf16}
    # the training step and deploy forward with both models compiled by Inductor (last: the
    # compilation takes a minute or more); its table goes to bench.log only
    step train_step_compile "$OUT/bench.log" 150 "$PY" benchmarks/train_step_benchmark.py \
      --compile ${TRAIN_STEP_COMPILE_ARGS:---precision bf16}
  else
    echo "gpu_session: no usable build of mmunirep._ext (build exit $build_rc, or no CUDA in it);" \
      "no step after the build ran" | tee -a "$summary"
  fi
  cat "$summary"
  ;;
*)
  sed -n '2,/^set -uo pipefail/{/^set -uo/!p}' "$0"
  exit 2
  ;;
esac
