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
threshold with --score-thr config).
"""

import argparse
import importlib.util
import os
import os.path as osp
import statistics
import sys
import tempfile

import numpy as np
import torch

from bench_utils import Report, cpu_host, paired_ratio, time_each_repeat

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
QUICKSTART = 'configs/detection/quickstart_unireplknet_a_shapes.py'
QUICKSTART_CKPT = 'work_dirs/quickstart_det/epoch_8.pth'
DEFAULTS = (f'{QUICKSTART}@160x160', 'configs/detection/unireplknet_s_22k_cascade_3x.py@800x1333')


def load_tool(name):
    path = osp.join(ROOT, 'tools', 'deployment', f'{name}.py')
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_case(text: str) -> dict:
    """``CONFIG[:CHECKPOINT][@HxW]`` -> its parts (size default 800x1333)."""
    text, _, size = text.partition('@')
    config, _, checkpoint = text.partition(':')
    try:
        h, w = (int(v) for v in (size or '800x1333').split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'the size after @ is HxW, e.g. 800x1333, got {size!r}'
        ) from None
    if not osp.isfile(config) or (checkpoint and not osp.isfile(checkpoint)):
        raise argparse.ArgumentTypeError(f'no such config or checkpoint: {text}')
    if config == QUICKSTART and not checkpoint and osp.isfile(QUICKSTART_CKPT):
        checkpoint = QUICKSTART_CKPT
    return dict(config=config, checkpoint=checkpoint or None, size=(h, w))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('cases', nargs='*', type=parse_case)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument(
        '--settle',
        type=float,
        default=0.2,
        help="seconds to wait before each timed call, longer than either side's threads spin on",
    )
    parser.add_argument(
        '--score-thr', default='0', help="lowest score kept, or 'config' for the config's"
    )
    parser.add_argument('--out', help='also write the table to this file')
    args = parser.parse_args()
    if args.score_thr != 'config':
        try:
            args.score_thr = float(args.score_thr)
        except ValueError:
            parser.error(f"--score-thr is a number or 'config', got {args.score_thr!r}")
    args.cases = args.cases or [parse_case(c) for c in DEFAULTS]
    if args.threads < 1 or args.repeats < 1 or args.settle < 0:
        parser.error('--threads and --repeats must be at least 1, --settle at least 0')
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


def time_case(case: dict, folder: str, args, export, inference) -> dict:
    """Export the case's detector, then time PyTorch's predict and onnxruntime's run +
    post-processing on the same image, in turn."""
    from mmunirep.utils import prepare_cfg

    threads, repeats = args.threads, args.repeats
    torch.manual_seed(0)  # without a checkpoint, the same random weights as the export's below
    model, _ = export.load_deploy_model(prepare_cfg(case['config']), case['checkpoint'])
    if args.score_thr != 'config':
        model.roi_head.test_cfg.score_thr = args.score_thr
    inputs, samples = image_batch(model, case['size'])
    path = osp.join(folder, 'det.onnx')
    ckpt = ['--checkpoint', case['checkpoint']] if case['checkpoint'] else []
    torch.manual_seed(0)
    export.main(
        [case['config'], *ckpt, '--part', 'detector', '--out', path, '--shape',
         *(str(v) for v in inputs.shape[2:])]
    )  # fmt: skip
    session, meta = inference.load_model(path, threads)
    h, w = case['size']
    feeds = {
        'input': inputs.numpy(),
        'image_shape': np.array([h, w], np.int64),
        'score_threshold': np.array([model.roi_head.test_cfg.score_thr], np.float32),
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
    times = time_each_repeat(dict(torch=run_torch, onnx=run_onnx), repeats, 1, args.settle)
    os.remove(path)
    return dict(
        detections=detections,
        ratio=paired_ratio(times['torch'], times['onnx']),
        **{k: statistics.median(v) * 1e3 for k, v in times.items()},
    )


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    export, inference = load_tool('export_onnx'), load_tool('onnx_inference')
    import onnxruntime

    report = Report(args.out)
    report.add(
        f'{cpu_host(args.threads)}, onnxruntime {onnxruntime.__version__}, batch 1, fp32; '
        f'median of {args.repeats}, the two timed in turn, each call {args.settle} s after the '
        f"last; ms per image; the ratio is the median of the repeats' ratios; "
        f'score threshold {args.score_thr}',
        '',
        '| config | weights | image | detections | PyTorch eager | onnxruntime '
        '| PyTorch / onnxruntime |',
        '|---|---|---|---|---|---|---|',
    )
    with tempfile.TemporaryDirectory() as folder:
        for case in args.cases:
            r = time_case(case, folder, args, export, inference)
            h, w = case['size']
            report.add(
                f'| {case["config"]} | {"trained" if case["checkpoint"] else "random"} '
                f'| {h}x{w} | {r["detections"]} | {r["torch"]:.0f} | {r["onnx"]:.0f} '
                f'| {r["ratio"]:.2f} |'
            )
    return 0


if __name__ == '__main__':
    sys.exit(main())
