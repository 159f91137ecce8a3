"""Host time of one call into the depthwise-conv kernels: eager path against custom operator.

``mmunirep.ops.depthwise_conv2d`` reaches the kernels in two ways: in eager mode through the
autograd ``DepthwiseConv2dFunction``, under torch.compile / torch.export through the custom
operators ``torch.ops.mmunirep.*`` (which a compiler can trace). This script measures what each
way costs the host per call, the Python and dispatcher work around the kernels, which is why eager
mode does not take the operators. The extension is replaced by a stub that hands back tensors
allocated once, so no kernel runs and the figures are the dispatch alone, on the CPU: no GPU
needed. For each way it times N calls, R times after warm-up, and prints the median per call and
the ratio (operator / eager: > 1 means the operator costs more).

    python benchmarks/op_overhead_benchmark.py [--calls 500] [--repeats 7] [--out FILE]
"""

import argparse
import platform
import statistics
import sys
import time
import types

import torch

from mmunirep.ops import depthwise_conv as dw

from bench_utils import Report


def stub_extension(x, weight):
    """An extension whose functions do no work: they return tensors allocated here, once."""
    out, grad_x, grad_w = torch.empty_like(x), torch.empty_like(x), torch.empty_like(weight)
    return types.SimpleNamespace(
        with_cuda=True,
        variant_fields=6,
        depthwise_conv2d_forward=lambda x, w, b: out,
        depthwise_conv2d_backward=lambda g, x, w, nx, nw, nb: (
            grad_x if nx else None,
            grad_w if nw else None,
            None,
        ),
    )


def per_call_us(fn, calls, repeats, warmup=100):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times)


def measure(calls, repeats, shape=(2, 8, 16, 16), ksize=13):
    """{(way, pass): median microseconds per call} for both ways and both passes."""
    x = torch.randn(*shape, requires_grad=True)
    weight = torch.randn(shape[1], 1, ksize, ksize, requires_grad=True)
    grad_y = torch.randn(*shape)
    ways = {
        'eager (autograd.Function)': dw.DepthwiseConv2dFunction.apply,
        'custom operator': dw._forward_op,
    }
    saved = dw._ext
    dw._ext = stub_extension(x, weight)
    try:
        results = {}
        for way, fn in ways.items():

            def forward(fn=fn):
                with torch.no_grad():
                    fn(x, weight, None)

            def forward_backward(fn=fn):
                fn(x, weight, None).backward(grad_y)

            results[way, 'forward'] = per_call_us(forward, calls, repeats)
            results[way, 'forward + backward'] = per_call_us(forward_backward, calls, repeats)
        return results
    finally:
        dw._ext = saved


def host_cpu():
    try:
        with open('/proc/cpuinfo') as f:
            names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
        return f'{names[0]} ({len(names)} logical CPUs)'
    except (OSError, IndexError):
        return platform.processor() or platform.machine()


def table(results, calls, repeats):
    ways = list(dict.fromkeys(way for way, _ in results))
    passes = list(dict.fromkeys(p for _, p in results))
    lines = [
        f'host: {host_cpu()}, Python '
        f'{platform.python_version()}, torch {torch.__version__}; median of {repeats} x '
        f'{calls} calls after warm-up; microseconds per call; stub kernels (dispatch only)',
        '| pass | ' + ' | '.join(ways) + ' | ratio (operator / eager) |',
        '|---|' + '---|' * (len(ways) + 1),
    ]
    for p in passes:
        us = [results[way, p] for way in ways]
        lines.append(f'| {p} | ' + ' | '.join(f'{t:.1f}' for t in us) + f' | {us[1] / us[0]:.2f} |')
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--calls', type=int, default=500, help='calls per timed repeat')
    parser.add_argument('--repeats', type=int, default=7, help='timed repeats (the median)')
    parser.add_argument('--out', help='also write the table to this file')
    args = parser.parse_args(argv)
    if args.calls < 1 or args.repeats < 1:
        parser.error(f'--calls and --repeats must be positive, got {args.calls}, {args.repeats}')
    Report(args.out).add(*table(measure(args.calls, args.repeats), args.calls, args.repeats))
    return 0


if __name__ == '__main__':
    sys.exit(main())
