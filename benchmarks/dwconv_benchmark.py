"""Benchmark mmunirep's depthwise-conv CUDA kernels against PyTorch (needs a GPU).

    python benchmarks/dwconv_benchmark.py [--dtypes fp32 fp16 bf16] [--repeats 20] [--out FILE]

For each shape (N, C, H, W, K) and dtype it times, with CUDA events, the median of --repeats runs
after --warmup runs (each queued behind a spin kernel, so that the events see the call's GPU work
and not the CPU's time to launch it; --timing idle counts that too): the forward pass, the input
gradient and the weight gradient of (a) mmunirep's op, (b) F.conv2d on NCHW (PyTorch's own depthwise
kernel) and (c) F.conv2d on channels_last (cuDNN, with ``cudnn.benchmark`` on so that it times its
algorithms and takes the fastest: the strongest PyTorch baseline), and prints each time, the ratio
of the faster PyTorch path to ours, and ours as a fraction of the fp32 FMA floor (2*N*C*H*W*K*K
FLOPs at the measured fp32 rate of a large matmul with TF32 off). That floor counts the taps that
read the padding too; the op leaves out most of them on maps near the kernel's size (a 7x7 map at
K = 13 reads padding with 71% of its taps), so the last column gives the share of taps inside the
map, and the floor fraction can exceed 1 where it is small. Needs only torch and the built extension
(tools/build_ops.sh).
Each shape's forward, input and weight gradients are first checked against an fp64 F.conv2d; a
shape that is wrong or raises gets a row that says so, the others still run, and the exit status
is 4. Rows are written as they are measured; with --time-budget the script stops starting rows
that would end past it (exit 3, the table names what it left out).
benchmarks/check_targets.py reads the table and says which of the op's speed targets it meets.

    python benchmarks/dwconv_benchmark.py --parts-sweep [--dtypes fp32 bf16]

instead times our weight gradient alone with each number of parts per channel (its blocks sum
their share of a channel's items, then a second kernel adds the parts; MMUNIREP_DWCONV_WGRAD_PARTS
forces the count): the op's rule (weight_grad_parts in ops/csrc/common/cuda/
depthwise_conv_launch.cuh, a model of waves of resident blocks), the rule it replaced ("legacy"),
and PARTS_SWEEP, each checked against fp64 first. Its table says how far the rule is from the
best count measured.
"""
import argparse
import functools
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from bench_utils import (FWD_PIPELINED, FWD_TILES, Report, TimeBudget, add_budget_argument,
                         autotune_applies, environ, fwd_pipelined_apply, fwd_pipelined_env,
                         fwd_tiles_apply, parse_shapes, pipelined_applies)

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
COMPILED_K = (7, 13, 31)  # kernel sizes with compile-time kernels (ops/csrc)
DTYPES = dict(fp32=torch.float32, fp16=torch.float16, bf16=torch.bfloat16)
FAILED_EXIT_CODE = 4  # some shape was wrong or raised: its row says which and why


DEVICE = 'cuda'
TIMING = 'queued'  # or 'idle' (--timing)
TIMING_WORDS = dict(queued='each call queued behind a spin kernel: its GPU work alone',
                    idle='each call on an idle GPU: its CPU launch cost included')


def cuda_time(fn, warmup, repeats):
    """Median ms of ``fn`` after warm-up: CUDA events (perf_counter in a --device cpu smoke run).

    With TIMING 'queued' (the default) each timed call is queued behind a spin kernel that keeps
    the GPU busy while the CPU enqueues the call, so the events measure the call's GPU work alone,
    as in a network whose GPU queue is full (training). Without it ('idle'), a call on an idle GPU
    also counts the CPU's time to launch it (Python, the autograd engine, the dispatcher: tens of
    us, a large share of these 40 to 300 us passes). The head start is twice the call's measured
    CPU time; a repeat whose CPU time outran it is timed again with twice the head start.
    """
    for _ in range(warmup):
        fn()
    times = []
    if DEVICE != 'cuda':
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    head_ms = 2 * (time.perf_counter() - t0) * 1e3 + 0.05
    torch.cuda.synchronize()
    while len(times) < repeats:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if TIMING == 'queued':
            torch.cuda._sleep(max(1, round(head_ms * spin_cycles_per_ms())))
        t0 = time.perf_counter()
        start.record()
        fn()
        end.record()
        cpu_ms = (time.perf_counter() - t0) * 1e3
        end.synchronize()
        if TIMING == 'queued' and cpu_ms > head_ms:  # the GPU may have waited for the CPU
            head_ms *= 2
            if head_ms > 1000:
                raise RuntimeError(f'cuda_time: the CPU took {cpu_ms:.1f} ms to enqueue one call, '
                                   'longer than any head start: does the call wait for the GPU? '
                                   '(--timing idle times it without one)')
            continue
        times.append(start.elapsed_time(end))
    return statistics.median(times)


@functools.lru_cache(maxsize=None)
def spin_cycles_per_ms():
    """The cycles of torch.cuda._sleep (a spin on the GPU's clock) per ms, measured once."""
    cycles = 1 << 22
    torch.cuda._sleep(cycles)  # first call: module load
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    rates = []
    for _ in range(3):
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        end.synchronize()
        rates.append(cycles / start.elapsed_time(end))
    return statistics.median(rates)


def fp32_rate(warmup, repeats):
    torch.backends.cuda.matmul.allow_tf32 = False
    size = 8192 if DEVICE == 'cuda' else 512
    a = torch.randn(size, size, device=DEVICE)
    ms = cuda_time(lambda: a @ a, warmup, repeats)
    return 2 * size**3 / (ms * 1e-3)


def copy_bandwidth(warmup, repeats):
    """Bytes per second read and written by a copy on the device (1 GiB of fp32 on a GPU): the rate
    of the memory floor that check_targets.py tells compute-bound shapes by."""
    n = (1 << 28) if DEVICE == 'cuda' else (1 << 20)
    a = torch.randn(n, device=DEVICE)
    b = torch.empty_like(a)
    ms = cuda_time(lambda: b.copy_(a), warmup, repeats)
    return 2 * n * a.element_size() / (ms * 1e-3)


class WrongResult(Exception):
    """Ours disagrees with the fp64 reference: the shape is reported, not timed."""


def rel_err(ours, want):
    return ((ours.double() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def check_shape(shape, dtype, op, x, wt, g):
    """Ours against F.conv2d in fp64: forward, input and weight gradients, with each variant of
    the kernels (VARIANTS; timing a wrong result is pointless)."""
    n, c, h, w, k = shape
    xd, wd = x.double().requires_grad_(), wt.double().requires_grad_()
    ref = F.conv2d(xd, wd, padding=k // 2, groups=c)
    ref_dx, ref_dw = torch.autograd.grad(ref, (xd, wd), g.double())
    # the GPU tests hold fp32 to 1e-5 of the largest value; 1e-4 leaves room for the longer sums
    # of these shapes. fp16 / bf16 results are rounded to 2^-11 / 2^-8 of it
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for variant in VARIANTS:
        if not variant_applies(variant, h, w, k, dtype):
            continue  # the same kernels as the default
        with kernel_variant(variant):
            xo, wo = x.detach().requires_grad_(), wt.detach().requires_grad_()
            y = op(xo, wo)
            dx, dw = torch.autograd.grad(y, (xo, wo), g)
        for name, ours, want in (('forward', y, ref), ('input gradient', dx, ref_dx),
                                 ('weight gradient', dw, ref_dw)):
            err = rel_err(ours, want.detach())
            if not err <= tol:  # NaN too
                raise WrongResult(f'{name}{f" ({variant})" if variant else ""} differs from '
                                  f'fp64 F.conv2d by {err:.2e} of its largest value (> {tol})')


def bench_shape(shape, dtype, args, op):
    n, c, h, w, k = shape
    x = torch.randn(n, c, h, w, device=DEVICE, dtype=dtype)
    wt = torch.randn(c, 1, k, k, device=DEVICE, dtype=dtype) / k
    g = torch.randn(n, c, h, w, device=DEVICE, dtype=dtype)
    check_shape(shape, dtype, op, x, wt, g)
    convs = {
        'ours': (lambda inp, weight: op(inp, weight), torch.contiguous_format),
        'torch_nchw': (lambda inp, weight: F.conv2d(inp, weight, padding=k // 2, groups=c),
                       torch.contiguous_format),
        'torch_cl': (lambda inp, weight: F.conv2d(inp, weight, padding=k // 2, groups=c),
                     torch.channels_last),
    }
    result = {}
    for name, (fn, fmt) in convs.items():
        result[name] = time_passes(fn, fmt, x, wt, g, args)
    if k in COMPILED_K:  # ours, forcing the run-time-K kernels
        with kernel_variant('run-time K'):
            result['ours_generic'] = time_passes(convs['ours'][0], torch.contiguous_format, x,
                                                 wt, g, args)
    if variant_applies('pipelined', h, w, k, dtype):  # ours with the pipelined weight gradient
        with kernel_variant('pipelined'):
            result['ours_pipelined'] = time_passes(convs['ours'][0], torch.contiguous_format, x,
                                                   wt, g, args, passes=('wgrad', ))
    if variant_applies('tensor cores', h, w, k, dtype):  # ours with the tensor-core kernels
        with kernel_variant('tensor cores'):
            result['ours_tc'] = time_passes(convs['ours'][0], torch.contiguous_format, x, wt, g,
                                            args)
    if variant_applies('autotuned', h, w, k, dtype):  # ours with MMUNIREP_DWCONV_AUTOTUNE=1
        with kernel_variant('autotuned'):  # (chosen in check_shape, on this shape's tensors)
            result['ours_autotuned'] = time_passes(convs['ours'][0], torch.contiguous_format, x,
                                                   wt, g, args)
        result['autotuned_choice'] = autotuned_choice(x, wt)
    # ours on the other forward tiles, and pipelined on each tile: forward and input gradient
    for tile in (*FWD_TILES, *FWD_PIPELINED):
        if variant_applies(tile, h, w, k, dtype):
            with kernel_variant(tile):
                result[tile] = time_passes(convs['ours'][0], torch.contiguous_format, x, wt, g,
                                           args, passes=('fwd', 'dgrad'))
    return result


VARIANTS = {None: {}, 'run-time K': {'MMUNIREP_DWCONV_GENERIC': '1'},
            'autotuned': {'MMUNIREP_DWCONV_AUTOTUNE': '1'},
            'pipelined': {'MMUNIREP_DWCONV_PIPELINE': '1'},
            'tensor cores': {'MMUNIREP_DWCONV_WGRAD_TC': '1', 'MMUNIREP_DWCONV_FWD_TC': '1'},
            **{t: {'MMUNIREP_DWCONV_FWD_TILE': t} for t in FWD_TILES},
            **{t: fwd_pipelined_env(t) for t in FWD_PIPELINED}}  # and how to pick them
assert len(VARIANTS) == 5 + len(FWD_TILES) + len(FWD_PIPELINED), 'two kernel variants share a name'


def variant_applies(variant, h, w, k, dtype):
    """Whether ``variant`` runs other kernels than the default for an H x W map at K in
    ``dtype``."""
    if variant == 'autotuned':
        return autotune_applies(k)
    if variant == 'pipelined':
        return pipelined_applies(h, w, k)
    if variant == 'tensor cores':  # half and bfloat16 only
        return pipelined_applies(h, w, k) and dtype in (torch.float16, torch.bfloat16)
    if variant in FWD_TILES:
        return fwd_tiles_apply(h, w, k)
    if variant in FWD_PIPELINED:
        return fwd_pipelined_apply(variant, h, w, k, dtype)
    return True


def kernel_variant(variant):
    """The op's kernels of ``variant`` while the block runs: its defaults (None), the run-time-K
    kernels, the pipelined weight gradient, the tensor-core kernels, the other forward tiles, the
    pipelined forward."""
    return environ(VARIANTS[variant])


def time_passes(fn, fmt, x, wt, g, args, passes=('fwd', 'dgrad', 'wgrad')):
    """Forward, input-gradient and weight-gradient times (ms) of conv ``fn`` on memory format
    ``fmt`` (those of ``passes``)."""
    inp, grad = x.contiguous(memory_format=fmt), g.contiguous(memory_format=fmt)
    times = {}
    if 'fwd' in passes:
        with torch.no_grad():
            times['fwd'] = cuda_time(lambda: fn(inp, wt), args.warmup, args.repeats)
    # one graph per gradient, so that each pass computes only its own gradient (a custom
    # autograd Function computes every gradient whose input requires grad)
    if 'dgrad' in passes:
        x_req = inp.detach().requires_grad_()
        y = fn(x_req, wt)
        times['dgrad'] = cuda_time(lambda: torch.autograd.grad(y, x_req, grad, retain_graph=True),
                                   args.warmup, args.repeats)
    if 'wgrad' in passes:
        w_req = wt.detach().requires_grad_()
        y = fn(inp, w_req)
        times['wgrad'] = cuda_time(lambda: torch.autograd.grad(y, w_req, grad, retain_graph=True),
                                   args.warmup, args.repeats)
    return times


def generic(r, p=None):
    """The run-time-K time of pass ``p`` (or of the total), where there is one."""
    if 'ours_generic' not in r:
        return ''
    return f'{(r["ours_generic"][p] if p else sum(r["ours_generic"].values())):.3f}'


def fwd_tiles(r, p, best):
    """The times on the other forward tiles of the fwd or dgrad row (p), with their ratios to
    the faster PyTorch path ``best``, where they apply."""
    if p not in ('fwd', 'dgrad'):
        return ''
    return ' / '.join(f'{t}: {r[t][p]:.3f} ({best / r[t][p]:.2f}x)'
                      for t in (*FWD_TILES, *FWD_PIPELINED) if t in r)


def pipelined(r, p, best):
    """The time with the pipelined weight gradient of the wgrad row (p) or of the total (None),
    and its ratio to the faster PyTorch path ``best``, where it applies."""
    if 'ours_pipelined' not in r or p not in ('wgrad', None):
        return ''
    ours = r['ours_pipelined']['wgrad']
    if p is None:
        ours += r['ours']['fwd'] + r['ours']['dgrad']
    return f'{ours:.3f} ({best / ours:.2f}x)'


def tensor_cores(r, p, best):
    """The time with the tensor-core kernels of pass p (None: the total), and its ratio to the
    faster PyTorch path ``best``, where they apply (fp16 / bf16, maps larger than 16x16; the
    forward and input gradient at K = 7 and 13 only, else the default kernels' times again)."""
    if 'ours_tc' not in r:
        return ''
    ours = r['ours_tc'][p] if p else sum(r['ours_tc'].values())
    return f'{ours:.3f} ({best / ours:.2f}x)'


def autotuned_choice(x, wt):
    """The variants the autotuner chose for this shape: 'forward variant / weight-gradient
    variant' (the forward's serves the input gradient too)."""
    from mmunirep.ops import autotune
    key = autotune.shape_key(x, wt)
    chosen = autotune.choices()
    return ' / '.join(chosen.get((p, *key), 'default') for p in ('forward', 'weight_grad'))


def autotuned(r, p, best):
    """The autotuned time of pass p (None: the total), its ratio to the faster PyTorch path
    ``best`` and (on the total's row) the variants chosen, where the autotuner has any."""
    if 'ours_autotuned' not in r:
        return ''
    ours = r['ours_autotuned'][p] if p else sum(r['ours_autotuned'].values())
    return f'{ours:.3f} ({best / ours:.2f}x{"; " + r["autotuned_choice"] if not p else ""})'


def taps_in_map(h, w, k):
    """The share of the K*K taps of all H*W outputs that read the map, not its padding ("same"
    padding: the rows and the columns count apart, as the taps of a row are the product of both)."""
    def along(n):
        return sum(min(k, n + k // 2 - o) - max(0, k // 2 - o) for o in range(n))
    return along(h) * along(w) / (h * w * k * k)


PARTS_SWEEP = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64)  # capped at a channel's items


def sweep_parts(shape, dtype, args, op):
    """Our weight gradient's time (ms) with the op's parts rule (None), the legacy rule and each
    count of PARTS_SWEEP (MMUNIREP_DWCONV_WGRAD_PARTS), each result first checked against fp64."""
    n, c, h, w, k = shape
    x = torch.randn(n, c, h, w, device=DEVICE, dtype=dtype)
    wt = torch.randn(c, 1, k, k, device=DEVICE, dtype=dtype) / k
    g = torch.randn(n, c, h, w, device=DEVICE, dtype=dtype)
    xd, wd = x.double(), wt.double().requires_grad_()
    ref_dw, = torch.autograd.grad(F.conv2d(xd, wd, padding=k // 2, groups=c), wd, g.double())
    tol = 1e-4 if dtype == torch.float32 else 2e-2  # as check_shape
    times = {}
    for parts in (None, 'legacy') + PARTS_SWEEP:
        with environ({} if parts is None else {'MMUNIREP_DWCONV_WGRAD_PARTS': str(parts)}):
            w_req = wt.detach().requires_grad_()
            y = op(x, w_req)
            dw, = torch.autograd.grad(y, w_req, g, retain_graph=True)
            err = rel_err(dw, ref_dw)
            if not err <= tol:
                raise WrongResult(f'weight gradient with parts {parts or "by the rule"} differs '
                                  f'from fp64 F.conv2d by {err:.2e} of its largest value (> {tol})')
            times[parts] = cuda_time(lambda: torch.autograd.grad(y, w_req, g, retain_graph=True),
                                     args.warmup, args.repeats)
    return times


def run_rows(args, shapes, report, budget, columns, measure):
    """The table's rows for each shape and dtype, within the time budget: ``measure(shape,
    dtype name)`` returns an item's lines. One wrong or failing item is reported in its row and
    the others still run: a GPU session has one call for all of them (after a CUDA error the rest
    may fail alike). Exit FAILED_EXIT_CODE after the last if any did."""
    items = [(shape, dname) for shape, _ in shapes for dname in args.dtypes]
    last_s, failed = 0., []
    for i, (shape, dname) in enumerate(items):
        # the next item is expected to take as long as the last
        budget.stop_if_short(report, last_s, (f'{sh} {d}' for sh, d in items[i:]))
        t0 = time.monotonic()
        try:
            lines = measure(shape, dname)
        except (WrongResult, RuntimeError) as e:
            what = 'WRONG' if isinstance(e, WrongResult) else f'ERROR ({type(e).__name__})'
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ''
            report.add(f'| {shape} | {dname} | {what}: {msg.replace("|", "/")} |' +
                       ' |' * (columns - 3))
            failed.append(f'{shape} {dname}')
        else:
            report.add(*lines)
        last_s = time.monotonic() - t0
    if failed:
        print(f'dwconv_benchmark: wrong or failed, not timed: {", ".join(failed)}',
              file=sys.stderr)
        raise SystemExit(FAILED_EXIT_CODE)


def parts_sweep_rows(args, op, shape, dname):
    t = sweep_parts(shape, DTYPES[dname], args, op)
    best = min(PARTS_SWEEP, key=lambda p: t[p])
    by_count = ', '.join(f'{p}: {t[p]:.3f}' for p in PARTS_SWEEP)
    return [f'| {shape} | {dname} | {t[None]:.3f} | {t["legacy"]:.3f} | '
            f'{t["legacy"] / t[None]:.2f} | {best} | {t[best]:.3f} | {t[best] / t[None]:.2f} | '
            f'{by_count} |']


def benchmark_rows(args, op, rate, shape, dname):
    n, c, h, w, k = shape
    floor_ms = 2 * n * c * h * w * k * k / rate * 1e3
    in_map = f'{taps_in_map(h, w, k):.2f}'
    r = bench_shape(shape, DTYPES[dname], args, op)
    lines = []
    for p in ('fwd', 'dgrad', 'wgrad'):
        best = min(r['torch_nchw'][p], r['torch_cl'][p])
        frac = f'{floor_ms / r["ours"][p]:.2f}'  # every pass has the same FLOPs
        lines.append(f'| {shape} | {dname} | {p} | {r["ours"][p]:.3f} | '
                     f'{r["torch_nchw"][p]:.3f} | {r["torch_cl"][p]:.3f} | '
                     f'{best / r["ours"][p]:.2f} | {frac} | {generic(r, p)} | '
                     f'{pipelined(r, p, best)} | {tensor_cores(r, p, best)} | '
                     f'{fwd_tiles(r, p, best)} | {autotuned(r, p, best)} | {in_map} |')
    total = {k_: sum(r[k_].values()) for k_ in ('ours', 'torch_nchw', 'torch_cl')}
    best = min(total['torch_nchw'], total['torch_cl'])
    lines.append(f'| {shape} | {dname} | fwd+bwd | {total["ours"]:.3f} | '
                 f'{total["torch_nchw"]:.3f} | {total["torch_cl"]:.3f} | '
                 f'{best / total["ours"]:.2f} | | {generic(r)} | '
                 f'{pipelined(r, None, best)} | {tensor_cores(r, None, best)} | | '
                 f'{autotuned(r, None, best)} | {in_map} |')
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--dtypes', nargs='+', default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--repeats', type=int, default=20)
    parser.add_argument('--out', help='also write the table to this file')
    parser.add_argument('--shapes', nargs='+', metavar='N,C,H,W,K',
                        help='instead of the shapes of the issue, e.g. 2,192,100,168,13')
    parser.add_argument('--device', default='cuda',
                        help='cpu: a smoke run of this script on the extension\'s CPU path '
                        '(for tests only)')
    parser.add_argument('--no-cudnn-benchmark', action='store_true',
                        help='let cuDNN pick its algorithm by heuristics instead of timing them '
                        '(the default times them: the strongest PyTorch baseline)')
    parser.add_argument('--timing', choices=('queued', 'idle'), default='queued',
                        help='queued (default): time each call\'s GPU work, queued behind a spin '
                        'kernel so that the CPU\'s launch cost is not counted; idle: time each '
                        'call on an idle GPU, launch cost included (the method of the tables '
                        'before 2026-11-23)')
    parser.add_argument('--parts-sweep', action='store_true',
                        help='time our weight gradient with each number of parts per channel '
                        'against the op\'s rule instead (see above)')
    add_budget_argument(parser)
    args = parser.parse_args()
    try:
        budget = TimeBudget(args.time_budget)
    except ValueError as e:
        raise SystemExit(str(e))
    torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    # our autotuner follows cudnn.benchmark: off, so that "ours" and each variant's column time
    # the kernels they name; the "autotuned" column turns it on
    os.environ['MMUNIREP_DWCONV_AUTOTUNE'] = '0'
    global DEVICE, TIMING
    DEVICE, TIMING = args.device, args.timing
    from mmunirep.ops import depthwise_conv2d, ext_available
    from mmunirep.ops import depthwise_conv as dw
    if DEVICE == 'cuda':
        if not torch.cuda.is_available():
            raise SystemExit('dwconv_benchmark needs a CUDA device')
        if not ext_available():
            raise SystemExit('the CUDA extension is not built: bash tools/build_ops.sh')
        device_name = torch.cuda.get_device_name()
    elif dw._ext is None:
        raise SystemExit('the extension is not built: bash tools/build_ops.sh')
    else:
        device_name = f'{DEVICE} (smoke run: the extension\'s CPU path)'
    shapes = SHAPES
    if args.shapes:
        shapes = [(s, 'command line') for s in parse_shapes(args.shapes)]
    report = Report(args.out)
    if args.parts_sweep:
        report.add(f'device: {device_name}, torch {torch.__version__}; our weight gradient by '
                   f'parts per channel (MMUNIREP_DWCONV_WGRAD_PARTS; a count past a channel\'s '
                   f'items runs one part per item); median of {args.repeats} after '
                   f'{args.warmup} warm-up; timing {args.timing} ({TIMING_WORDS[args.timing]}); '
                   'times in ms; rule = the op\'s default (weight_grad_parts), legacy = the rule '
                   'before it; ratios > 1: the rule is faster')
        report.add('| shape (N,C,H,W,K) | dtype | rule | legacy | legacy / rule | best count '
                   '| best | best / rule | ms by count |', '|---|---|---|---|---|---|---|---|---|')
        run_rows(args, shapes, report, budget, 9,
                 functools.partial(parts_sweep_rows, args, depthwise_conv2d))
        return
    rate = fp32_rate(args.warmup, args.repeats)
    bandwidth = copy_bandwidth(args.warmup, args.repeats)
    report.add(f'device: {device_name}, torch {torch.__version__}, '
               f'fp32 rate {rate / 1e12:.3g} TFLOP/s (matmul, TF32 off), memory bandwidth '
               f'{bandwidth / 1e9:.0f} GB/s (a copy on the device, read + written); median of '
               f'{args.repeats} after {args.warmup} warm-up; timing {args.timing} '
               f'({TIMING_WORDS[args.timing]}); cudnn.benchmark '
               f'{torch.backends.cudnn.benchmark}; times in ms; ratio = faster PyTorch '
               'path / ours (> 1: ours faster); floor = FMA floor time / our time (each pass is '
               '2*N*C*H*W*K*K FLOPs, padding taps included); '
               'run-time K = ours with MMUNIREP_DWCONV_GENERIC=1 (sizes with compile-time '
               'kernels); pipelined wgrad = ours with MMUNIREP_DWCONV_PIPELINE=1 (maps larger '
               'than a whole-map tile), its ratio to the faster PyTorch path in brackets; '
               'tensor cores = ours with MMUNIREP_DWCONV_WGRAD_TC=1 and MMUNIREP_DWCONV_FWD_TC=1 '
               '(the same maps in fp16 and bf16; the forward and input gradient at K = 7 and 13 '
               'only), likewise; '
               'other fwd tiles = ours with MMUNIREP_DWCONV_FWD_TILE (rows x columns x planes '
               'of a forward block; maps larger than 16x16, K = 7 and 13; default 16x32x4) '
               'and, in fp32 at K = 7 and 13, pipelined (MMUNIREP_DWCONV_FWD_PIPELINE=1: cp.async '
               'into two staging buffers, one wave of blocks walking the tiles) on the map\'s '
               'default tile and on those; '
               'autotuned = ours with MMUNIREP_DWCONV_AUTOTUNE=1 (each pass on the fastest of '
               'the variants that agree with the default kernel, chosen on this shape: the '
               'kernels above, and half or twice the weight gradient\'s parts per channel; its '
               'choice, forward / weight gradient, on the fwd+bwd row); the other columns have '
               'the autotuner off; '
               'in map = share of the K*K taps that read the map, not its padding',
               '| shape (N,C,H,W,K) | dtype | pass | ours | torch NCHW | torch CL | ratio | floor '
               '| ours, run-time K | ours, pipelined wgrad | ours, tensor cores '
               '| ours, other fwd tiles | ours, autotuned | in map |',
               '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|')
    run_rows(args, shapes, report, budget, 14,
             functools.partial(benchmark_rows, args, depthwise_conv2d, rate))


if __name__ == '__main__':
    main()
