"""UniRepLKNet's large depthwise convs on the CPU: in PyTorch, ``F.conv2d`` with the 13x13 kernel
against the same kernel zero-padded to 13x15 (what ``mmunirep.ops.same_depthwise_conv2d`` runs on
channels-last maps); in onnxruntime, the conv with its zero padding against the padding done by a
1x1 depthwise conv of its own and the conv unpadded (what an ONNX export writes for large kernels).

    python benchmarks/cpu_depthwise_benchmark.py [--arch s] [--sizes 224 512] [--threads 2]
        [--repeats 15] [--out FILE]

For each image size, the maps of the stages with 13x13 kernels (strides 8, 16 and 32, the arch's
widths), batch 1, fp32, inference. PyTorch: channels-last and NCHW memory, both kernels timed in
turn (median of --repeats, ms) after checking that they give the same output (relative error at
most 1e-5 of the largest value); the last column says which one ``same_depthwise_conv2d`` runs.
onnxruntime: kernels 3 to 13, the two graphs (exported with a dynamic size, as
``tools/deployment/export_onnx.py`` exports; sessions on one shared pool of --threads threads)
checked the same way, then timed in turn, each repeat 20 runs; the last column says which one the
export writes.
"""

import os.path as osp
import sys
import tempfile
from functools import partial

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench_utils import (
    Report,
    cpu_benchmark_parser,
    cpu_host,
    parse_cpu_benchmark_args,
    shared_thread_pool_options,
    time_interleaved,
)

STRIDES = (8, 16, 32)  # the stages whose blocks have 13x13 kernels
ONNX_KERNELS = (3, 7, 9, 11, 13)
ONNX_RUNS_PER_REPEAT = 20


class PaddedInside(nn.Module):
    """A depthwise "same" conv as one ONNX ``Conv`` with its padding."""

    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        c = self.conv
        return F.conv2d(x, c.weight, c.bias, padding=c.padding, groups=c.groups)


class PaddedApart(PaddedInside):
    """The same conv after a 1x1 depthwise conv by ones that does the padding."""

    def forward(self, x):
        from mmunirep.ops.cpu_depthwise_conv import zero_pad_as_conv

        c = self.conv
        return F.conv2d(
            zero_pad_as_conv(x, c.weight, *c.padding), c.weight, c.bias, groups=c.groups
        )


def onnx_session(module, channels, folder, threads):
    import onnxruntime as ort

    path = osp.join(folder, f'{type(module).__name__}.onnx')
    with torch.no_grad():
        torch.onnx.export(
            module, (torch.randn(1, channels, 16, 16),), path, dynamo=False, opset_version=17,
            input_names=['x'], dynamic_axes={'x': {0: 'batch', 2: 'height', 3: 'width'}},
        )  # fmt: skip
    session = ort.InferenceSession(
        path, shared_thread_pool_options(threads), providers=['CPUExecutionProvider']
    )
    return lambda x: session.run(None, {'x': x})[0]


def repeated(run, x):
    for _ in range(ONNX_RUNS_PER_REPEAT):
        run(x)


def onnxruntime_table(args, dims, report):
    import onnxruntime

    from mmunirep.ops import SameDepthwiseConv2d
    from mmunirep.ops.cpu_depthwise_conv import SEPARATELY_PADDED_KERNEL

    report.add(
        '',
        f'{cpu_host(args.threads)}, onnxruntime {onnxruntime.__version__} (one shared pool), '
        f'batch 1, fp32; median of {args.repeats} after {args.warmup} warm-up, the two timed in '
        f'turn, {ONNX_RUNS_PER_REPEAT} runs each; ms per run',
        '',
        '| image | map (C x H x W) | kernel | padding in the conv | padded apart '
        '| in the conv / apart | the export writes |',
        '|---|---|---|---|---|---|---|',
    )
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            for stride, channels in zip(STRIDES, dims):
                side = -(-size // stride)
                x = np.random.default_rng(0).standard_normal((1, channels, side, side))
                x = x.astype(np.float32)
                for kernel in ONNX_KERNELS:
                    conv = SameDepthwiseConv2d(channels, kernel, bias=True).eval()
                    inside = onnx_session(PaddedInside(conv), channels, folder, args.threads)
                    apart = onnx_session(PaddedApart(conv), channels, folder, args.threads)
                    ref = inside(x)
                    err = np.abs(apart(x) - ref).max() / np.abs(ref).max()
                    if err > 1e-5:
                        sys.exit(f'the separately padded conv differs by {err:.1e} (> 1e-5)')

                    runs = {
                        name: partial(repeated, run, x)
                        for name, run in (('inside', inside), ('apart', apart))
                    }
                    seconds = time_interleaved(runs, args.repeats, args.warmup)
                    ms = {k: v * 1e3 / ONNX_RUNS_PER_REPEAT for k, v in seconds.items()}
                    writes = 'apart' if kernel >= SEPARATELY_PADDED_KERNEL else 'in the conv'
                    report.add(
                        f'| {size}x{size} | {channels} x {side} x {side} | {kernel}x{kernel} '
                        f'| {ms["inside"]:.3f} | {ms["apart"]:.3f} '
                        f'| {ms["inside"] / ms["apart"]:.2f} | {writes} |'
                    )


def parse_args():
    parser = cpu_benchmark_parser(__doc__, repeats=15, warmup=3)
    return parse_cpu_benchmark_args(parser)


def main():
    args = parse_args()
    from mmunirep.models.backbones.unireplknet import ARCH_SETTINGS
    from mmunirep.ops.cpu_depthwise_conv import takes_wider_kernel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dims = ARCH_SETTINGS[args.arch]['dims'][1:]
    report = Report(args.out)
    report.add(
        f'{cpu_host(args.threads)}, batch 1, fp32, inference; '
        f'median of {args.repeats} after {args.warmup} warm-up, the two timed in turn; ms',
        '',
        '| image | map (C x H x W) | memory | 13x13 | 13x15 (zero-padded) '
        '| 13x13 / 13x15 | same_depthwise_conv2d runs |',
        '|---|---|---|---|---|---|---|',
    )
    for size in args.sizes:
        for stride, channels in zip(STRIDES, dims):
            side = -(-size // stride)
            weight = torch.randn(channels, 1, 13, 13)
            wide = F.pad(weight, (1, 1))
            for memory in ('channels-last', 'NCHW'):
                x = torch.randn(1, channels, side, side)
                if memory == 'channels-last':
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.no_grad():
                    ref = F.conv2d(x, weight, padding=6, groups=channels)
                    err = ((F.conv2d(x, wide, padding=(6, 7), groups=channels) - ref).abs().max()
                           / ref.abs().max()).item()  # fmt: skip
                    if err > 1e-5:
                        sys.exit(f'the padded kernel differs by {err:.1e} (> 1e-5)')
                    runs = {
                        '13': partial(F.conv2d, x, weight, padding=6, groups=channels),
                        '15': partial(F.conv2d, x, wide, padding=(6, 7), groups=channels),
                    }
                    seconds = time_interleaved(runs, args.repeats, args.warmup)
                    picks = '13x15' if takes_wider_kernel(x, weight) else '13x13'
                narrow, wide_ms = seconds['13'] * 1e3, seconds['15'] * 1e3
                report.add(
                    f'| {size}x{size} | {channels} x {side} x {side} | {memory} '
                    f'| {narrow:.3f} | {wide_ms:.3f} | {narrow / wide_ms:.2f} | {picks} |'
                )
    onnxruntime_table(args, dims, report)


if __name__ == '__main__':
    main()
