"""The UniRepLKNet backbone against timm's ConvNeXt on the CPU, in PyTorch eager and onnxruntime.

    python benchmarks/backbone_cpu_benchmark.py [--arch s] [--convnext convnext_small]
        [--sizes 224 512] [--threads 2] [--repeats 7] [--no-onnx] [--out FILE]

Three models with random weights, batch 1, inference (``torch.no_grad``): UniRepLKNet in its
training structure, the same network re-parameterized (the deploy structure, which export and
``tools/analysis_tools/benchmark.py`` use), and timm's ConvNeXt (``features_only``, the four
stages, as a detector's backbone). Each forward pass is timed in turn with the others, so that a
busy machine slows all of them alike, and each repeat starts with the next model, so that none
always runs after the same one. The table gives the median of --repeats, the ratio of the deploy
backbone to ConvNeXt (the median of the repeats' ratios, which a drift of the machine's speed
between repeats moves far less than the ratio of the medians), and both models' FLOPs (mmengine's
analysis). With onnxruntime each model is exported (opset 17) and timed the same way, with
--threads intra-op threads.

Before timing, the deploy structure's features are checked against the training structure's
(relative error at most 1e-4 of each map's largest value); otherwise the script stops.
"""

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile

import torch

from bench_utils import Report, paired_ratio, time_each_repeat


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--arch', default='s', help='UniRepLKNet variant')
    parser.add_argument('--convnext', default='convnext_small', help='timm model name')
    parser.add_argument('--sizes', type=int, nargs='+', default=[224, 512])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--no-onnx', action='store_true', help='PyTorch eager only')
    parser.add_argument('--out', help='also write the table to this file')
    args = parser.parse_args()
    if args.threads < 1 or args.repeats < 1 or args.warmup < 0 or min(args.sizes) < 32:
        parser.error('--threads and --repeats must be >= 1, --warmup >= 0, --sizes >= 32')
    return args


def build_models(arch: str, convnext: str) -> dict:
    import timm

    from mmunirep.models import UniRepLKNet, reparameterize_unireplknet

    torch.manual_seed(0)
    training = UniRepLKNet(arch).eval()
    training.init_weights()
    with torch.no_grad():  # the layer scales, GRNs and BatchNorms far from their identity
        for name, param in training.named_parameters():
            if name.endswith(('gamma', 'beta')):
                param.normal_(0, 0.5)
        for m in training.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    deploy = reparameterize_unireplknet(copy.deepcopy(training))
    reference = timm.create_model(convnext, features_only=True, pretrained=False).eval()
    return {
        f'UniRepLKNet-{arch.upper()} training': training,
        f'UniRepLKNet-{arch.upper()} deploy': deploy,
        convnext: reference,
    }


def check_deploy(models: dict, size: int) -> float:
    training, deploy = list(models.values())[:2]
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        worst = 0.0
        for a, b in zip(training(x), deploy(x)):
            worst = max(worst, ((a - b).abs().max() / a.abs().max()).item())
    if worst > 1e-4:
        sys.exit(f'the deploy structure differs from the training one by {worst:.2e} (> 1e-4)')
    return worst


def flops(model, size: int) -> float:
    from mmengine.analysis import FlopAnalyzer

    with torch.no_grad():
        analyzer = FlopAnalyzer(model, torch.randn(1, 3, size, size))
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        return analyzer.total() / 1e9


def eager_runs(models: dict, size: int) -> dict:
    x = torch.randn(1, 3, size, size)

    def run(model):
        def call():
            with torch.no_grad():
                model(x)

        return call

    return {name: run(model) for name, model in models.items()}


def onnx_runs(models: dict, size: int, threads: int, folder: str) -> dict:
    import numpy as np
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    runs = {}
    for i, (name, model) in enumerate(models.items()):
        path = os.path.join(folder, f'{i}_{size}.onnx')
        with torch.no_grad():
            torch.onnx.export(
                model, (torch.from_numpy(x),), path, dynamo=False, opset_version=17,
                input_names=['input'],
            )  # fmt: skip
        session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
        runs[name] = lambda s=session: s.run(None, {'input': x})
    return runs


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    models = build_models(args.arch, args.convnext)
    names = list(models)
    report = Report(args.out)
    report.add(
        f'host: {platform.processor() or platform.machine()} ({os.cpu_count()} logical CPUs), '
        f'torch {torch.__version__}, {args.threads} threads, batch 1, fp32; '
        f'median of {args.repeats} after {args.warmup} warm-up, the models timed in turn '
        f'(each repeat starting with the next); ms; '
        f"the ratio is the median of the {args.repeats} repeats' ratios",
        '',
        f'| size | runtime | {names[0]} | {names[1]} | {names[2]} | deploy / {names[2]} '
        f'| GFLOPs deploy / {names[2]} |',
        '|---|---|---|---|---|---|---|',
    )
    runtimes = ['PyTorch eager'] + ([] if args.no_onnx else ['onnxruntime'])
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            check_deploy(models, size)
            gflops = (flops(models[names[1]], size), flops(models[names[2]], size))
            for runtime in runtimes:
                if runtime == 'PyTorch eager':
                    runs = eager_runs(models, size)
                else:
                    import onnxruntime

                    runtime = f'onnxruntime {onnxruntime.__version__}'
                    runs = onnx_runs(models, size, args.threads, folder)
                times = time_each_repeat(runs, args.repeats, args.warmup)
                ms = [statistics.median(times[n]) * 1e3 for n in names]
                ratio = paired_ratio(times[names[1]], times[names[2]])
                report.add(
                    f'| {size}x{size} | {runtime} | {ms[0]:.1f} | {ms[1]:.1f} | {ms[2]:.1f} '
                    f'| {ratio:.2f} | {gflops[0]:.1f} / {gflops[1]:.1f} |'
                )


if __name__ == '__main__':
    main()
