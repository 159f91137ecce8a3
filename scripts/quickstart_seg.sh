#!/usr/bin/env bash
# Segmentation quick start, one command, CPU is enough (a few minutes on 2 cores):
#
#     bash scripts/quickstart_seg.sh
#
# 1. generates a small ADE20K-format dataset of shapes in data/shapes_ade (if absent),
# 2. trains UperNet + UniRepLKNet-A from scratch with tools/train.py (400 iterations),
# 3. evaluates the last checkpoint with tools/test.py (MMSegmentation's IoUMetric: mIoU), and
# 4. draws the predictions (image | prediction, coloured by class) into WORK_DIR/show.
#
# Environment: PYTHON (default: .venv/bin/python if present, else python), WORK_DIR (default
# work_dirs/quickstart_seg), DATA (default data/shapes_ade). Extra arguments go to tools/train.py,
# e.g. `bash scripts/quickstart_seg.sh --cfg-options train_cfg.max_iters=100`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
CONFIG=configs/segmentation/quickstart_unireplknet_a_shapes.py
DATA=${DATA:-data/shapes_ade}
WORK_DIR=${WORK_DIR:-work_dirs/quickstart_seg}
DATA_OPTS=()
if [ "$DATA" != data/shapes_ade ]; then
    DATA_OPTS=(--cfg-options "train_dataloader.dataset.data_root=$DATA"
               "val_dataloader.dataset.data_root=$DATA" "test_dataloader.dataset.data_root=$DATA")
fi

echo "== [1/3] data: $DATA"
if [ -d "$DATA/annotations/validation" ] && [ -d "$DATA/images/training" ]; then
    echo "found, not regenerated"
else
    "$PYTHON" tools/misc/make_shapes_ade20k.py --out "$DATA"
fi

echo "== [2/3] training into $WORK_DIR"
"$PYTHON" tools/train.py "$CONFIG" --work-dir "$WORK_DIR" "${DATA_OPTS[@]}" "$@"
CKPT=$(cat "$WORK_DIR/last_checkpoint")

echo "== [3/3] evaluating $CKPT (mIoU) and drawing predictions into $WORK_DIR/show"
"$PYTHON" tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK_DIR/test" \
    --show-dir "$WORK_DIR/show" "${DATA_OPTS[@]}"
echo "== done: checkpoint $CKPT; predictions in $WORK_DIR/show; log in $WORK_DIR/test"
