"""Benchmark mmunirep's depthwise-conv CUDA kernels against PyTorch (needs a GPU).

    python benchmarks/dwconv_benchmark.py [--dtypes fp32 fp16 bf16] [--repeats 20] [--out FILE]

For each shape (N, C, H, W, K) and dtype it times, with CUDA events, the median of --repeats runs
after --warmup runs: the forward pass, the input gradient and the weight gradient of (a) mmunirep's
op, (b) F.conv2d on NCHW (PyTorch's own depthwise kernel) and (c) F.conv2d on channels_last (cuDNN,
with ``cudnn.benchmark`` on so that it times its algorithms and takes the fastest: the strongest
PyTorch baseline), and prints each time, the ratio of the faster PyTorch path to ours, and ours as a
fraction of the fp32 FMA floor (2*N*C*H*W*K*K FLOPs at the measured fp32 rate of a large matmul with
TF32 off). That floor counts the taps that read the padding too; the op leaves out most of them on
maps near the kernel's size (a 7x7 map at K = 13 reads padding with 71% of its taps), so the last
column gives the share of taps inside the map, and the floor fraction can exceed 1 where it is
small. Needs only torch and the built extension (scripts/build_ops.sh).
Each shape's forward, input and weight gradients are first checked against an fp64 F.conv2d; a
shape that is wrong or raises gets a row that says so, the others still run, and the exit status
is 4. Rows are written as they are measured.
"""

import argparse
import contextlib
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from bench_utils import Report

SHAPES = [  # (N, C, H, W, K) and where they come from
    ((2, 192, 100, 168, 13), 'UniRepLKNet-S detection 1333x800, stage 2'),
    ((2, 384, 50, 84, 13), 'UniRepLKNet-S detection, stage 3'),
    ((2, 768, 25, 42, 13), 'UniRepLKNet-S detection, stage 4'),
    ((64, 192, 28, 28, 13), 'classification 224, stage 2'),
    ((64, 384, 14, 14, 13), 'classification 224, stage 3'),
    ((64, 768, 7, 7, 13), 'classification 224, stage 4'),
    ((64, 384, 32, 32, 7), 'RepLKNet micro-benchmark K=7'),
    ((64, 384, 32, 32, 13), 'RepLKNet micro-benchmark K=13'),
    ((64, 384, 32, 32, 31), 'RepLKNet micro-benchmark K=31'),
    ((8, 384, 40, 40, 13), 'segmentation 640, stage 3'),
]
COMPILED_K = (7, 13, 31)  # kernel sizes with compile-time kernels (mmunirep/ops/csrc)
DTYPES = dict(fp32=torch.float32, fp16=torch.float16, bf16=torch.bfloat16)
FAILED_EXIT_CODE = 4  # some shape was wrong or raised: its row says which and why


DEVICE = 'cuda'


def cuda_time(fn, warmup, repeats):
    """Median ms of ``fn`` after warm-up: CUDA events (perf_counter in a --device cpu smoke run)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if DEVICE == 'cuda':
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def fp32_rate(warmup, repeats):
    torch.backends.cuda.matmul.allow_tf32 = False
    size = 8192 if DEVICE == 'cuda' else 512
    a = torch.randn(size, size, device=DEVICE)
    ms = cuda_time(lambda: a @ a, warmup, repeats)
    return 2 * size**3 / (ms * 1e-3)


class WrongResult(Exception):
    """Ours disagrees with the fp64 reference: the shape is reported, not timed."""


def rel_err(ours, want):
    return ((ours.double() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def check_shape(shape, dtype, op, x, wt, g):
    """Ours against F.conv2d in fp64: forward, input and weight gradients, with the compile-time
    and the run-time-K kernels (timing a wrong result is pointless)."""
    n, c, h, w, k = shape
    xd, wd = x.double().requires_grad_(), wt.double().requires_grad_()
    ref = F.conv2d(xd, wd, padding=k // 2, groups=c)
    ref_dx, ref_dw = torch.autograd.grad(ref, (xd, wd), g.double())
    # the GPU tests hold fp32 to 1e-5 of the largest value; 1e-4 leaves room for the longer sums
    # of these shapes. fp16 / bf16 results are rounded to 2^-11 / 2^-8 of it
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for run_time_k in (False, True):
        with generic_kernels(run_time_k):
            xo, wo = x.detach().requires_grad_(), wt.detach().requires_grad_()
            y = op(xo, wo)
            dx, dw = torch.autograd.grad(y, (xo, wo), g)
        for name, ours, want in (
            ('forward', y, ref),
            ('input gradient', dx, ref_dx),
            ('weight gradient', dw, ref_dw),
        ):
            err = rel_err(ours, want.detach())
            if not err <= tol:  # NaN too
                raise WrongResult(
                    f'{name}{" (run-time K)" if run_time_k else ""} differs from '
                    f'fp64 F.conv2d by {err:.2e} of its largest value (> {tol})'
                )


def bench_shape(shape, dtype, args, op):
    n, c, h, w, k = shape
    x = torch.randn(n, c, h, w, device=DEVICE, dtype=dtype)
    wt = torch.randn(c, 1, k, k, device=DEVICE, dtype=dtype) / k
    g = torch.randn(n, c, h, w, device=DEVICE, dtype=dtype)
    check_shape(shape, dtype, op, x, wt, g)
    convs = {
        'ours': (lambda inp, weight: op(inp, weight), torch.contiguous_format),
        'torch_nchw': (
            lambda inp, weight: F.conv2d(inp, weight, padding=k // 2, groups=c),
            torch.contiguous_format,
        ),
        'torch_cl': (
            lambda inp, weight: F.conv2d(inp, weight, padding=k // 2, groups=c),
            torch.channels_last,
        ),
    }
    if k in COMPILED_K and dtype != torch.float64:  # ours, forcing the run-time-K kernels
        convs['ours_generic'] = convs['ours']
    result = {}
    for name, (fn, fmt) in convs.items():
        with generic_kernels(name == 'ours_generic'):
            result[name] = time_passes(fn, fmt, x, wt, g, args)
    return result


@contextlib.contextmanager
def generic_kernels(on):
    """MMUNIREP_DWCONV_GENERIC=1 (read at every launch) while the block runs."""
    if on:
        os.environ['MMUNIREP_DWCONV_GENERIC'] = '1'
    try:
        yield
    finally:
        os.environ.pop('MMUNIREP_DWCONV_GENERIC', None)


def time_passes(fn, fmt, x, wt, g, args):
    """Forward, input-gradient and weight-gradient times (ms) of conv ``fn`` on memory format
    ``fmt``."""
    inp, grad = x.contiguous(memory_format=fmt), g.contiguous(memory_format=fmt)
    with torch.no_grad():
        fwd = cuda_time(lambda: fn(inp, wt), args.warmup, args.repeats)
    # one graph per gradient, so that each pass computes only its own gradient (a custom
    # autograd Function computes every gradient whose input requires grad)
    x_req = inp.detach().requires_grad_()
    y = fn(x_req, wt)
    dgrad = cuda_time(
        lambda: torch.autograd.grad(y, x_req, grad, retain_graph=True), args.warmup, args.repeats
    )
    w_req = wt.detach().requires_grad_()
    y = fn(inp, w_req)
    wgrad = cuda_time(
        lambda: torch.autograd.grad(y, w_req, grad, retain_graph=True), args.warmup, args.repeats
    )
    return dict(fwd=fwd, dgrad=dgrad, wgrad=wgrad)


def generic(r, p=None):
    """The run-time-K time of pass ``p`` (or of the total), where there is one."""
    if 'ours_generic' not in r:
        return ''
    return f'{(r["ours_generic"][p] if p else r["ours_generic"]):.3f}'


def taps_in_map(h, w, k):
    """The share of the K*K taps of all H*W outputs that read the map, not its padding ("same"
    padding: the rows and the columns count apart, as the taps of a row are the product of both)."""

    def along(n):
        return sum(min(k, n + k // 2 - o) - max(0, k // 2 - o) for o in range(n))

    return along(h) * along(w) / (h * w * k * k)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--dtypes', nargs='+', default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--repeats', type=int, default=20)
    parser.add_argument('--out', help='also write the table to this file')
    parser.add_argument(
        '--shapes',
        nargs='+',
        metavar='N,C,H,W,K',
        help='instead of the default shapes (detection, classification, RepLKNet, '
        'segmentation), e.g. 2,192,100,168,13',
    )
    parser.add_argument(
        '--device',
        default='cuda',
        help="cpu: a smoke run of this script on the extension's CPU path (for tests only)",
    )
    parser.add_argument(
        '--no-cudnn-benchmark',
        action='store_true',
        help='let cuDNN pick its algorithm by heuristics instead of timing them '
        '(the default times them: the strongest PyTorch baseline)',
    )
    args = parser.parse_args()
    shapes = SHAPES
    if args.shapes:
        try:
            shapes = [(tuple(int(v) for v in s.split(',')), 'command line') for s in args.shapes]
        except ValueError:
            raise SystemExit(
                f'--shapes expects N,C,H,W,K with integers, got {args.shapes}'
            ) from None
        if any(len(s) != 5 for s, _ in shapes):
            raise SystemExit(f'--shapes expects five integers N,C,H,W,K each, got {args.shapes}')
    torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    global DEVICE
    DEVICE = args.device
    from mmunirep.ops import depthwise_conv as dw
    from mmunirep.ops import depthwise_conv2d, ext_available

    if DEVICE == 'cuda':
        if not torch.cuda.is_available():
            raise SystemExit('dwconv_benchmark needs a CUDA device')
        if not ext_available():
            raise SystemExit('the CUDA extension is not built: bash scripts/build_ops.sh')
        device_name = torch.cuda.get_device_name()
    elif dw._ext is None:
        raise SystemExit('the extension is not built: bash scripts/build_ops.sh')
    else:
        device_name = f"{DEVICE} (smoke run: the extension's CPU path)"
    rate = fp32_rate(args.warmup, args.repeats)
    report = Report(args.out)
    report.add(
        f'device: {device_name}, torch {torch.__version__}, '
        f'fp32 rate {rate / 1e12:.1f} TFLOP/s (matmul, TF32 off); median of '
        f'{args.repeats} after {args.warmup} warm-up; cudnn.benchmark '
        f'{torch.backends.cudnn.benchmark}; times in ms; ratio = faster PyTorch '
        'path / ours (> 1: ours faster); floor = FMA floor time / our time (each pass is '
        '2*N*C*H*W*K*K FLOPs, padding taps included); '
        'run-time K = ours with MMUNIREP_DWCONV_GENERIC=1 (sizes with compile-time '
        'kernels); '
        'in map = share of the K*K taps that read the map, not its padding',
        '| shape (N,C,H,W,K) | dtype | pass | ours | torch NCHW | torch CL | ratio | floor '
        '| ours, run-time K | in map |',
        '|---|---|---|---|---|---|---|---|---|---|',
    )
    items = [(shape, dname) for shape, _ in shapes for dname in args.dtypes]
    failed = []
    for shape, dname in items:
        n, c, h, w, k = shape
        floor_ms = 2 * n * c * h * w * k * k / rate * 1e3
        in_map = f'{taps_in_map(h, w, k):.2f}'
        try:
            r = bench_shape(shape, DTYPES[dname], args, depthwise_conv2d)
        except (WrongResult, RuntimeError) as e:
            # one wrong or failing shape is reported in its row and the others still run (after
            # a CUDA error the rest may fail alike)
            what = 'WRONG' if isinstance(e, WrongResult) else f'ERROR ({type(e).__name__})'
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ''
            report.add(f'| {shape} | {dname} | {what}: {msg.replace("|", "/")} | | | | | | | |')
            failed.append(f'{shape} {dname}')
            continue
        lines = []
        for p in ('fwd', 'dgrad', 'wgrad'):
            best = min(r['torch_nchw'][p], r['torch_cl'][p])
            frac = f'{floor_ms / r["ours"][p]:.2f}'  # every pass has the same FLOPs
            lines.append(
                f'| {shape} | {dname} | {p} | {r["ours"][p]:.3f} | '
                f'{r["torch_nchw"][p]:.3f} | {r["torch_cl"][p]:.3f} | '
                f'{best / r["ours"][p]:.2f} | {frac} | {generic(r, p)} | {in_map} |'
            )
        total = {k_: sum(r[k_].values()) for k_ in r}
        lines.append(
            f'| {shape} | {dname} | fwd+bwd | {total["ours"]:.3f} | '
            f'{total["torch_nchw"]:.3f} | {total["torch_cl"]:.3f} | '
            f'{min(total["torch_nchw"], total["torch_cl"]) / total["ours"]:.2f} | | '
            f'{generic(total)} | {in_map} |'
        )
        report.add(*lines)
    if failed:
        print(f'dwconv_benchmark: wrong or failed, not timed: {", ".join(failed)}', file=sys.stderr)
        raise SystemExit(FAILED_EXIT_CODE)


if __name__ == '__main__':
    main()
