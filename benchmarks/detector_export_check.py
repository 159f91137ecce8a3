"""Export full-size detection configs to ONNX and compare their detections with PyTorch's.

    python benchmarks/detector_export_check.py [CONFIG ...] [--size 800 1333] [--top 100]
        [--out FILE]

Default: the six Cascade Mask R-CNN 3x configs of configs/detection; any detection config the
exporter takes can be given (Mask R-CNN, DINO). Each model is built with
random weights (as ``tools/deployment/export_onnx.py`` without ``--checkpoint``),
re-parameterized and exported by that tool at the padded size of a --size image (which the tool
also checks, on another size). Then one random image of --size, padded as the data pre-processor
pads it, goes through the exported graph in onnxruntime and through the same rewritten predict
path in PyTorch, with the score threshold at 0 so that the --top best detections are compared:
the share of each side's detections with a detection of the same class at IoU >= 0.99 on the
other side, and the largest difference of the matched scores and mask probabilities.
"""

import argparse
import glob
import os
import os.path as osp
import platform
import sys
import tempfile
import time

import numpy as np
import torch

from bench_utils import ROOT, Report, deployment_tool

WEIGHTS_SEED = 0  # the exported model and the one compared with it get the same random weights


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('configs', nargs='*')
    parser.add_argument('--size', type=int, nargs=2, default=(800, 1333), metavar=('H', 'W'))
    parser.add_argument('--top', type=int, default=100, help='detections compared per image')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--out', help='also write the table to this file')
    args = parser.parse_args()
    if not args.configs:
        args.configs = sorted(glob.glob(osp.join(ROOT, 'configs/detection/*_cascade_3x.py')))
    missing = [c for c in args.configs if not osp.isfile(c)]
    if missing:
        parser.error(f'no such config: {missing}')
    if min(args.size) < 32 or args.top < 1:
        parser.error('--size needs H and W of at least 32, --top at least 1')
    return args


def max_per_img_key(config) -> str:
    """The config key of the number of detections kept: in an R-CNN's ``test_cfg.rcnn``, in a
    DINO's ``test_cfg``."""
    from mmengine.config import Config

    rcnn = 'rcnn' in Config.fromfile(config).model.test_cfg
    return 'model.test_cfg.rcnn.max_per_img' if rcnn else 'model.test_cfg.max_per_img'


def compare(tool, config, path, size, top):
    """Detections of the exported graph and of PyTorch on one image of ``size``."""
    import onnxruntime as ort

    from mmunirep.deploy import exportable_detector
    from mmunirep.deploy.verify import matched_fraction
    from mmunirep.utils import prepare_cfg

    cfg = prepare_cfg(config, cfg_options={max_per_img_key(config): top})
    torch.manual_seed(WEIGHTS_SEED)  # the random weights that main() exported
    model, _ = tool.load_deploy_model(cfg, None)
    h, w = size
    divisor = cfg.model.data_preprocessor.get('pad_size_divisor', 1) or 1
    padded = (-(-h // divisor) * divisor, -(-w // divisor) * divisor)
    torch.manual_seed(1)
    image = torch.zeros(1, 3, *padded)
    image[..., :h, :w] = torch.randn(1, 3, h, w)
    shape, threshold = torch.tensor([h, w]), torch.zeros(1)
    with torch.no_grad():
        ref = [t.numpy() for t in exportable_detector(model).eval()(image, shape, threshold)]
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    feeds = dict(input=image.numpy(), image_shape=shape.numpy(), score_threshold=threshold.numpy())
    outs = session.run(None, feeds)
    found = (
        matched_fraction(ref[0], ref[2], outs[0], outs[2], 0.99),
        matched_fraction(outs[0], outs[2], ref[0], ref[2], 0.99),
    )
    n = min(len(ref[1]), len(outs[1]))
    order_ref, order_onnx = np.argsort(-ref[1])[:n], np.argsort(-outs[1])[:n]
    score_diff = float(np.abs(np.sort(ref[1])[::-1][:n] - np.sort(outs[1])[::-1][:n]).max())
    same_rank = float(
        (
            (np.abs(ref[0][order_ref] - outs[0][order_onnx]).max(1) < 1e-2)
            & (ref[2][order_ref] == outs[2][order_onnx])
        ).mean()
    )
    return dict(
        detections=(len(ref[1]), len(outs[1])),
        found=found,
        score_diff=score_diff,
        same_rank=same_rank,
        padded=padded,
    )


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    tool = deployment_tool('export_onnx')
    report = Report(args.out)
    report.add(
        f'host: {platform.machine()} ({os.cpu_count()} logical CPUs), torch {torch.__version__}, '
        f'{args.threads} threads; random weights; one random {args.size[0]}x{args.size[1]} image, '
        f'score threshold 0, the top {args.top} detections',
        '',
        '| config | export + check (s) | detections PyTorch / ONNX | PyTorch found in ONNX '
        '| ONNX found in PyTorch | same box and class at the same rank | max score difference |',
        '|---|---|---|---|---|---|---|',
    )
    with tempfile.TemporaryDirectory() as folder:
        for config in args.configs:
            path = osp.join(folder, 'det.onnx')
            h, w = args.size
            start = time.perf_counter()
            torch.manual_seed(WEIGHTS_SEED)
            tool.main(
                [config, '--part', 'detector', '--out', path, '--shape',
                 str(-(-h // 32) * 32), str(-(-w // 32) * 32),
                 '--cfg-options', f'{max_per_img_key(config)}={args.top}']
            )  # fmt: skip
            seconds = time.perf_counter() - start
            r = compare(tool, config, path, args.size, args.top)
            report.add(
                f'| {osp.relpath(config, ROOT)} | {seconds:.0f} | {r["detections"][0]} / '
                f'{r["detections"][1]} | {r["found"][0]:.1%} | {r["found"][1]:.1%} '
                f'| {r["same_rank"]:.1%} | {r["score_diff"]:.1e} |'
            )
            os.remove(path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
