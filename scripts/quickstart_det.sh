#!/usr/bin/env bash
# Detection quick start, one command, CPU is enough (about 6 minutes on 2 cores):
#
#   bash scripts/quickstart_det.sh [extra tools/train.py args, e.g. --cfg-options train_cfg.max_epochs=2]
#
# 1. generates a small COCO-format shapes dataset in data/shapes_coco (if absent),
# 2. trains Cascade Mask R-CNN + UniRepLKNet-A from scratch on it into work_dirs/quickstart_det,
# 3. evaluates the final checkpoint (COCO bbox + segm mAP) and draws the predictions on the
#    validation images into work_dirs/quickstart_det/vis.
# Environment: PYTHON (default .venv/bin/python if present, else python), WORK_DIR, DATA_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
CONFIG=configs/detection/quickstart_unireplknet_a_shapes.py
WORK_DIR=${WORK_DIR:-work_dirs/quickstart_det}
DATA_DIR=${DATA_DIR:-data/shapes_coco}
START=$(date +%s)

# regenerated when absent or written by another version of the generator
WANT=$("$PYTHON" -c "import runpy; print(runpy.run_path('tools/misc/make_shapes_coco.py')['DATASET_VERSION'])")
HAVE=$("$PYTHON" -c "import json, sys; print(json.load(open(sys.argv[1]))['info']['version'])" \
       "$DATA_DIR/annotations/instances_val.json" 2>/dev/null || echo none)
if [ "$HAVE" != "$WANT" ]; then
    echo "== generating the shapes dataset (version $WANT) in $DATA_DIR"
    rm -rf "$DATA_DIR/train" "$DATA_DIR/val" "$DATA_DIR/annotations"
    "$PYTHON" tools/misc/make_shapes_coco.py --out "$DATA_DIR"
else
    echo "== shapes dataset version $HAVE found in $DATA_DIR"
fi
DATA_ARGS=()  # the config reads data/shapes_coco; point it elsewhere if DATA_DIR says so
if [ "$DATA_DIR" != data/shapes_coco ]; then
    DATA_ARGS=(--cfg-options
               train_dataloader.dataset.data_root="$DATA_DIR/"
               val_dataloader.dataset.data_root="$DATA_DIR/"
               test_dataloader.dataset.data_root="$DATA_DIR/"
               val_evaluator.ann_file="$DATA_DIR/annotations/instances_val.json"
               test_evaluator.ann_file="$DATA_DIR/annotations/instances_val.json")
fi

echo "== training ($CONFIG) into $WORK_DIR"
"$PYTHON" tools/train.py "$CONFIG" --work-dir "$WORK_DIR" \
    "${DATA_ARGS[@]}" "$@"

# mmengine writes the path of the last saved checkpoint into WORK_DIR/last_checkpoint
CKPT=$(cat "$WORK_DIR/last_checkpoint")
echo "== evaluating $CKPT"
"$PYTHON" tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK_DIR/test" \
    --out "$WORK_DIR/test/predictions.pkl" --show-dir "$WORK_DIR/vis" \
    "${DATA_ARGS[@]}" 2>&1 | tee "$WORK_DIR/test.log"

echo
echo "== done in $(( $(date +%s) - START )) s"
echo "checkpoint:   $CKPT"
echo "train log:    $(ls -t "$WORK_DIR"/*/*.log 2>/dev/null | grep -v /test/ | head -n 1)"
echo "metrics:      $WORK_DIR/test.log"
grep -o 'coco/bbox_mAP: [0-9.]*\|coco/segm_mAP: [0-9.]*' "$WORK_DIR/test.log" | tail -n 2 \
    | sed 's/^/              /'
echo "predictions:  $WORK_DIR/test/predictions.pkl"
echo "images:       $WORK_DIR/vis/ ($(ls "$WORK_DIR/vis" | wc -l) validation images with predicted boxes and masks)"
