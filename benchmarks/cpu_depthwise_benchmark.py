"""UniRepLKNet's 13x13 depthwise convs on the CPU: PyTorch's ``F.conv2d`` with the 13x13 kernel
against the same kernel zero-padded to 13x15 (what ``mmunirep.ops.same_depthwise_conv2d`` runs on
channels-last maps).

    python benchmarks/cpu_depthwise_benchmark.py [--arch s] [--sizes 224 512] [--threads 2]
        [--repeats 15] [--out FILE]

For each image size, the maps of the stages with 13x13 kernels (strides 8, 16 and 32, the arch's
widths), batch 1, fp32, inference, in channels-last and NCHW memory: both kernels timed in turn
(median of --repeats, ms) after checking that they give the same output (relative error at most
1e-5 of the largest value). The last column says which one ``same_depthwise_conv2d`` runs.
"""

import sys
from functools import partial

import torch
import torch.nn.functional as F

from bench_utils import (
    Report,
    cpu_benchmark_parser,
    cpu_host,
    parse_cpu_benchmark_args,
    time_interleaved,
)

STRIDES = (8, 16, 32)  # the stages whose blocks have 13x13 kernels


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


if __name__ == '__main__':
    main()
