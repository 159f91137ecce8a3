"""UniRepLKNet's linear layers on the CPU: PyTorch's ``F.linear`` (MKL's sgemm) against oneDNN's
product (what ``mmunirep.ops.cpu_linear`` runs in fp32 inference), each alone and with the GELU
that follows a block's first linear layer.

    python benchmarks/cpu_linear_benchmark.py [--arch s] [--sizes 224 512] [--threads 2]
        [--repeats 15] [--out FILE]

For each image size, both linear layers of a block of each stage (the arch's widths, the map at
the stage's stride), batch 1, fp32, inference: the two forms timed in turn (median of --repeats,
ms; each repeat starting with the other) after checking that they give the same output (relative
error at most 1e-5 of the largest value), and the ratio (median of the repeats' ratios).
"""

import statistics
import sys
from functools import partial

import torch
import torch.nn.functional as F

from bench_utils import (
    Report,
    cpu_benchmark_parser,
    cpu_host,
    paired_ratio,
    parse_cpu_benchmark_args,
    time_each_repeat,
)

STRIDES = (4, 8, 16, 32)


def parse_args():
    parser = cpu_benchmark_parser(__doc__, repeats=15, warmup=3)
    return parse_cpu_benchmark_args(parser)


def layer_cases(dims, size):
    """(stride, pixels, in, out, gelu) of each block linear layer at this image size."""
    for stride, channels in zip(STRIDES, dims):
        pixels = (-(-size // stride)) ** 2
        yield stride, pixels, channels, 4 * channels, True
        yield stride, pixels, 4 * channels, channels, False


def plain_linear(x, weight, bias, gelu):
    out = F.linear(x, weight, bias)
    return F.gelu(out) if gelu else out


def main():
    args = parse_args()
    from mmunirep.models.backbones.unireplknet import ARCH_SETTINGS
    from mmunirep.ops import cpu_linear, takes_onednn_linear

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    probe = torch.randn(2, 2)
    with torch.no_grad():
        if not takes_onednn_linear(probe, probe):
            sys.exit('this torch has no oneDNN linear operator: cpu_linear runs F.linear')
    report = Report(args.out)
    report.add(
        f'{cpu_host(args.threads)}, batch 1, fp32, inference; '
        f'median of {args.repeats} after {args.warmup} warm-up, the two timed in turn; ms',
        '',
        '| image | stride | pixels x in -> out | then | F.linear | oneDNN (cpu_linear) '
        '| oneDNN / F.linear |',
        '|---|---|---|---|---|---|---|',
    )
    dims = ARCH_SETTINGS[args.arch]['dims']
    for size in args.sizes:
        for stride, pixels, c_in, c_out, gelu in layer_cases(dims, size):
            x = torch.randn(1, pixels, c_in)
            weight = torch.randn(c_out, c_in) / c_in**0.5
            bias = torch.randn(c_out)
            plain = partial(plain_linear, x, weight, bias, gelu)
            onednn = partial(cpu_linear, x, weight, bias, gelu)
            with torch.no_grad():
                ref = plain()
                err = ((onednn() - ref).abs().max() / ref.abs().max()).item()
                if err > 1e-5:
                    sys.exit(f'oneDNN differs from F.linear by {err:.1e} (> 1e-5)')
                times = time_each_repeat(
                    {'F.linear': plain, 'oneDNN': onednn}, args.repeats, args.warmup
                )
            medians = {name: statistics.median(t) * 1e3 for name, t in times.items()}
            report.add(
                f'| {size}x{size} | {stride} | {pixels} x {c_in} -> {c_out} '
                f'| {"GELU" if gelu else "-"} | {medians["F.linear"]:.3f} '
                f'| {medians["oneDNN"]:.3f} '
                f'| {paired_ratio(times["oneDNN"], times["F.linear"]):.2f} |'
            )


if __name__ == '__main__':
    main()
