"""The UniRepLKNet backbone against timm's ConvNeXt on the CPU, in PyTorch eager and onnxruntime.

    python benchmarks/backbone_cpu_benchmark.py [--arch s] [--convnext convnext_small]
        [--sizes 224 512] [--threads 2] [--repeats 7] [--no-onnx] [--onnx-shapes fixed dynamic]
        [--out FILE]

Models with random weights, batch 1, inference (``torch.no_grad``): UniRepLKNet in its training
structure, the same network re-parameterized (the deploy structure, which export and
``tools/analysis_tools/benchmark.py`` use), timm's ConvNeXt (``features_only``, the four stages, as
a detector's backbone) as timm runs it, and, in PyTorch eager only, the same ConvNeXt with its MLPs'
linear layers and GELU run as UniRepLKNet's blocks run theirs (``mmunirep.ops.cpu_linear``): the
comparison of the two architectures on equal terms. Each forward pass is timed in turn with the
others, so that a busy machine slows all of them alike, and each repeat starts with the next
model, so that none always runs after the same one. The table gives the median of --repeats, the
ratios of the deploy backbone to both ConvNeXts (the median of the repeats' ratios, which a drift
of the machine's speed between repeats moves far less than the ratio of the medians), and the
FLOPs of the deploy backbone and ConvNeXt (mmengine's analysis). With onnxruntime the first three
models are exported (opset 17) and timed the same way, their sessions sharing one global pool of
--threads intra-op threads, as one session in a process would have: once exported for the timed
image size alone (``fixed``), once with a dynamic batch, height and width as
``tools/deployment/export_onnx.py --part backbone`` exports them (``dynamic``), each its own row.

Before timing, the deploy structure's features are checked against the training structure's, and
the two ConvNeXts' against each other (relative error at most 1e-4 of each map's largest value);
otherwise the script stops.
"""

import copy
import os
import statistics
import sys
import tempfile

import torch

from bench_utils import (
    Report,
    cpu_benchmark_parser,
    cpu_host,
    paired_ratio,
    parse_cpu_benchmark_args,
    shared_thread_pool_options,
    time_each_repeat,
)

# the kinds of exported graph the onnxruntime rows time, and their labels
ONNX_SHAPES = dict(fixed='fixed size', dynamic='dynamic batch, H, W')


def parse_args():
    parser = cpu_benchmark_parser(__doc__, repeats=7, warmup=2)
    parser.add_argument('--convnext', default='convnext_small', help='timm model name')
    parser.add_argument('--no-onnx', action='store_true', help='PyTorch eager only')
    parser.add_argument(
        '--onnx-shapes',
        nargs='+',
        choices=ONNX_SHAPES,
        default=list(ONNX_SHAPES),
        help='the exported graphs to time: for the timed size only, or with dynamic sizes',
    )
    return parse_cpu_benchmark_args(parser)


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
        f'{convnext}, cpu_linear': with_cpu_linear(copy.deepcopy(reference)),
    }


class CpuLinearMlp(torch.nn.Module):
    """A timm ``Mlp`` (Linear, GELU, Linear) run as UniRepLKNet's blocks run their linear layers."""

    def __init__(self, mlp):
        super().__init__()
        from timm.layers.activations import GELU

        exact = isinstance(mlp.act, GELU) or getattr(mlp.act, 'approximate', None) == 'none'
        if not exact:  # timm's GELU is the exact one (F.gelu); nn.GELU is when not approximate
            sys.exit(f'expected an MLP with the exact GELU, got {mlp.act}')
        self.fc1, self.fc2 = mlp.fc1, mlp.fc2

    def forward(self, x):
        from mmunirep.ops import cpu_linear

        x = cpu_linear(x, self.fc1.weight, self.fc1.bias, gelu=True)
        return cpu_linear(x, self.fc2.weight, self.fc2.bias)


def with_cpu_linear(model):
    from timm.layers import Mlp

    mlps = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, Mlp) and isinstance(m.fc1, torch.nn.Linear)
    ]
    if not mlps:  # the small ConvNeXts (atto to nano) run their MLPs as 1x1 convs
        sys.exit('--convnext must name a ConvNeXt whose MLPs are linear layers (tiny and larger)')
    for name, mlp in mlps:
        parent, _, child = name.rpartition('.')
        setattr(model.get_submodule(parent), child, CpuLinearMlp(mlp))
    return model


def check_equal(a_model, b_model, size: int, what: str) -> None:
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        worst = 0.0
        for a, b in zip(a_model(x), b_model(x)):
            worst = max(worst, ((a - b).abs().max() / a.abs().max()).item())
    if worst > 1e-4:
        sys.exit(f'{what} differ by {worst:.2e} (> 1e-4)')


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


def onnx_runs(models: dict, size: int, threads: int, folder: str, shapes: str) -> dict:
    import numpy as np
    import onnxruntime as ort

    from mmunirep.deploy.segmentor import backbone_export_axes

    x = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
    options = shared_thread_pool_options(threads)
    runs = {}
    for i, (name, model) in enumerate(models.items()):
        path = os.path.join(folder, f'{i}_{size}_{shapes}.onnx')
        example = torch.from_numpy(x)
        outputs, axes = None, None
        with torch.no_grad():
            if shapes == 'dynamic':
                outputs, axes = backbone_export_axes(len(model(example)))
            torch.onnx.export(
                model, (example,), path, dynamo=False, opset_version=17,
                input_names=['input'], output_names=outputs, dynamic_axes=axes,
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
        f'{cpu_host(args.threads)}, batch 1, fp32; '
        f'median of {args.repeats} after {args.warmup} warm-up, the models timed in turn '
        f'(each repeat starting with the next); ms; '
        f"the ratios are the medians of the {args.repeats} repeats' ratios",
        '',
        f'| size | runtime | {" | ".join(names)} | deploy / {names[2]} | deploy / {names[3]} '
        f'| GFLOPs deploy / {names[2]} |',
        '|---|---|---|---|---|---|---|---|---|',
    )
    # None: PyTorch eager; otherwise the kind of onnxruntime graph
    runtimes = [None] + ([] if args.no_onnx else args.onnx_shapes)
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            check_equal(models[names[0]], models[names[1]], size, 'the two structures')
            check_equal(models[names[2]], models[names[3]], size, 'the two ConvNeXts')
            gflops = (flops(models[names[1]], size), flops(models[names[2]], size))
            for shapes in runtimes:
                if shapes is None:
                    runtime = 'PyTorch eager'
                    runs = eager_runs(models, size)
                else:
                    import onnxruntime

                    runtime = f'onnxruntime {onnxruntime.__version__}, {ONNX_SHAPES[shapes]}'
                    timed = names[:3]  # the export of the fourth is the third's graph
                    runs = onnx_runs(
                        {n: models[n] for n in timed}, size, args.threads, folder, shapes
                    )
                times = time_each_repeat(runs, args.repeats, args.warmup)
                cells = [
                    f'{statistics.median(times[n]) * 1e3:.1f}' if n in times else '-' for n in names
                ]
                ratios = [
                    f'{paired_ratio(times[names[1]], times[n]):.2f}' if n in times else '-'
                    for n in names[2:]
                ]
                report.add(
                    f'| {size}x{size} | {runtime} | {" | ".join(cells)} | {" | ".join(ratios)} '
                    f'| {gflops[0]:.1f} / {gflops[1]:.1f} |'
                )


if __name__ == '__main__':
    main()
