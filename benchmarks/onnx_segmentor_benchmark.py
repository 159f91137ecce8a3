"""An exported segmentor in onnxruntime against the same segmentor in PyTorch eager, on the CPU.

    python benchmarks/onnx_segmentor_benchmark.py [CONFIG[:CHECKPOINT][@HxW] ...]
        [--threads 2] [--repeats 7] [--settle 0.2] [--out FILE]

Default: the segmentation quick start at 128x128 (with its trained checkpoint when
work_dirs/quickstart_seg has one) and UniRepLKNet-S UperNet 160k (IN-22K, 512) at 512x512 with
random weights. Batch 1, --threads threads on both sides.

Both sides start from the same normalized image (HxW: the size after the test pipeline's resize)
and end with the label of each of its pixels: PyTorch runs MMSegmentation's ``predict`` (the
re-parameterized backbone, as ``tools/test.py``); onnxruntime runs the graph of
``tools/deployment/export_onnx.py --part segmentor`` and then the post-processing of
``tools/deployment/onnx_inference.py`` (logits resized to the image, arg-max). Before timing, the
two label maps are compared; the share of pixels labelled alike is in the table. Timed as
``benchmarks/onnx_detector_benchmark.py`` times: in turn, each call after a pause of --settle
seconds, median of --repeats after a warm-up, the ratio the median of the repeats' ratios.
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

QUICKSTART = 'configs/segmentation/quickstart_unireplknet_a_shapes.py'
QUICKSTART_CKPT = 'work_dirs/quickstart_seg/iter_400.pth'
DEFAULTS = (
    f'{QUICKSTART}@128x128',
    'configs/segmentation/unireplknet_s_22k_upernet_160k_512.py@512x512',
)
# below this share of pixels labelled alike, the export is broken, not rounding
MIN_AGREEMENT = 0.99


def parse_case(text: str) -> dict:
    """``CONFIG[:CHECKPOINT][@HxW]`` -> its parts (size default 512x512)."""
    return parse_config_case(text, '512x512', trained={QUICKSTART: QUICKSTART_CKPT})


def parse_args():
    parser = onnx_against_pytorch_parser(__doc__, parse_case)
    return parse_onnx_against_pytorch_args(parser, DEFAULTS, parse_case)


def image_batch(model, size):
    """A random image of ``size`` through the model's data pre-processor (normalized)."""
    from mmseg.structures import SegDataSample

    h, w = size
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8))
    sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w)))
    batch = model.data_preprocessor(dict(inputs=[image], data_samples=[sample]), False)
    return batch['inputs'], batch['data_samples']


def time_case(case: dict, folder: str, args, export, inference) -> dict:
    """Export the case's segmentor, then time PyTorch's predict and onnxruntime's run +
    post-processing on the same image, in turn."""
    model = case_model(export, case)
    inputs, samples = image_batch(model, case['size'])
    path = os.path.join(folder, 'seg.onnx')
    export_case(export, case, 'segmentor', path, inputs.shape[2:])
    session, meta = inference.load_model(path, args.threads)
    h, w = case['size']
    align_corners = bool(meta['postprocess'].get('align_corners', False))
    x = inputs.numpy()

    def run_torch():
        with torch.no_grad():
            return model.predict(inputs, samples)[0].pred_sem_seg.data[0].numpy()

    def run_onnx():
        logits = session.run(None, {'input': x})[0][0].transpose(1, 2, 0)[:h, :w]
        return inference.resize_logits(logits, h, w, align_corners).argmax(-1)

    agreement = float(np.mean(run_torch() == run_onnx()))
    if agreement < MIN_AGREEMENT:
        raise SystemExit(
            f'{case["config"]}: onnxruntime labels {100 * agreement:.1f}% of the pixels as '
            'PyTorch does: the export differs (tools/deployment/export_onnx.py checks it)'
        )
    timed = time_onnx_against_pytorch(run_torch, run_onnx, args)
    os.remove(path)
    return dict(timed, agreement=agreement)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    export, inference = deployment_tool('export_onnx'), deployment_tool('onnx_inference')
    report_onnx_against_pytorch(
        args,
        'pixels labelled alike',
        partial(time_case, args=args, export=export, inference=inference),
        lambda r: f'{100 * r["agreement"]:.2f}%',
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
