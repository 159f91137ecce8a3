"""An exported detector in onnxruntime against the same detector in PyTorch eager, on the CPU.

    python benchmarks/onnx_detector_benchmark.py [CONFIG[:CHECKPOINT][@HxW] ...]
        [--threads 2] [--repeats 7] [--settle 0.2] [--out FILE]

Default: the detection quick start at 160x160, its images' size (with its trained checkpoint when
work_dirs/quickstart_det has one), and UniRepLKNet-S Cascade Mask R-CNN 3x (IN-22K) at 800x1333
with random weights. Batch 1, --threads threads on both sides.

Both sides start from the same normalized, padded image and end with detections in the image's
pixels and their masks pasted into the image: PyTorch runs MMDetection's ``predict`` (the
re-parameterized backbone, ``rescale=True``, as ``tools/test.py``); onnxruntime runs the graph of
``tools/deployment/export_onnx.py --part detector`` and then the post-processing of
``tools/deployment/onnx_inference.py`` (boxes scaled, masks pasted). The two are timed in turn,
each call after a pause of --settle seconds (each side's threads spin on for tens of
milliseconds after a run and would slow the other side's next run), median of --repeats after a
warm-up; the ratio is the median of the repeats' ratios. Both keep the detections above
--score-thr (default 0: the best max_per_img of the config, so that the mask head and the
pasting run at their heaviest, for random weights as for trained ones; the config's own
threshold with --score-thr config). A DINO keeps its max_per_img detections whatever their score,
as MMDetection's predict does: it is timed at threshold 0 only.
"""

import os
import sys
from functools import partial

import numpy as np
import torch

from bench_utils import (
    case_model,
    deployment_tool,
    export_case,
    onnx_against_pytorch_parser,
    parse_config_case,
    parse_onnx_against_pytorch_args,
    report_onnx_against_pytorch,
    time_onnx_against_pytorch,
)

QUICKSTART = 'configs/detection/quickstart_unireplknet_a_shapes.py'
QUICKSTART_CKPT = 'work_dirs/quickstart_det/epoch_8.pth'
DEFAULTS = (f'{QUICKSTART}@160x160', 'configs/detection/unireplknet_s_22k_cascade_3x.py@800x1333')


def parse_case(text: str) -> dict:
    """``CONFIG[:CHECKPOINT][@HxW]`` -> its parts (size default 800x1333)."""
    return parse_config_case(text, '800x1333', trained={QUICKSTART: QUICKSTART_CKPT})


def parse_args():
    parser = onnx_against_pytorch_parser(__doc__, parse_case)
    parser.add_argument(
        '--score-thr', default='0', help="lowest score kept, or 'config' for the config's"
    )
    args = parse_onnx_against_pytorch_args(parser, DEFAULTS, parse_case)
    if args.score_thr != 'config':
        try:
            args.score_thr = float(args.score_thr)
        except ValueError:
            parser.error(f"--score-thr is a number or 'config', got {args.score_thr!r}")
    return args


def image_batch(model, size):
    """A random image of ``size`` through the model's data pre-processor (normalized, padded)."""
    from mmdet.structures import DetDataSample

    h, w = size
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8))
    sample = DetDataSample(
        metainfo=dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0))
    )
    batch = model.data_preprocessor(dict(inputs=[image], data_samples=[sample]), False)
    return batch['inputs'], batch['data_samples']


def set_score_threshold(model, score_thr, config) -> float:
    """Set the lowest score the PyTorch model keeps (``score_thr``, or the config's with
    'config') and return it, for the exported graph's input. A DINO keeps its
    ``max_per_img`` detections whatever their score: threshold 0 only."""
    from mmunirep.deploy.dino import is_dino

    if is_dino(model):
        if score_thr not in ('config', 0.0):
            raise SystemExit(
                f'{config}: DINO keeps its max_per_img detections whatever '
                f'their score; --score-thr {score_thr} would drop some in onnxruntime only'
            )
        return 0.0
    if score_thr != 'config':
        model.roi_head.test_cfg.score_thr = score_thr
    return model.roi_head.test_cfg.score_thr


def time_case(case: dict, folder: str, args, export, inference) -> dict:
    """Export the case's detector, then time PyTorch's predict and onnxruntime's run +
    post-processing on the same image, in turn."""
    threads = args.threads
    model = case_model(export, case)
    score_thr = set_score_threshold(model, args.score_thr, case['config'])
    inputs, samples = image_batch(model, case['size'])
    path = os.path.join(folder, 'det.onnx')
    export_case(export, case, 'detector', path, inputs.shape[2:])
    session, meta = inference.load_model(path, threads)
    h, w = case['size']
    feeds = {
        'input': inputs.numpy(),
        'image_shape': np.array([h, w], np.int64),
        'score_threshold': np.array([score_thr], np.float32),
    }
    mask_thr = meta['postprocess'].get('mask_thr_binary', 0.5)

    def run_torch():
        with torch.no_grad():
            return model.predict(inputs, samples, rescale=True)[0].pred_instances

    def run_onnx():
        outs = session.run(None, feeds)
        masks = [inference.paste_mask(m, b, h, w, mask_thr)
                 for m, b in zip(outs[3], outs[0])] if len(outs) > 3 else []  # fmt: skip
        return outs, masks

    detections = len(run_torch())
    onnx_detections = len(run_onnx()[0][1])
    if onnx_detections != detections:
        raise SystemExit(
            f'{case["config"]}: PyTorch keeps {detections} detections, onnxruntime '
            f'{onnx_detections}: the export differs (tools/deployment/export_onnx.py checks it)'
        )
    timed = time_onnx_against_pytorch(run_torch, run_onnx, args)
    os.remove(path)
    return dict(timed, detections=detections)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    export, inference = deployment_tool('export_onnx'), deployment_tool('onnx_inference')
    report_onnx_against_pytorch(
        args,
        'detections',
        partial(time_case, args=args, export=export, inference=inference),
        lambda r: r['detections'],
        header_note=f'; score threshold {args.score_thr}',
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
