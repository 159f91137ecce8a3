"""One training step of the UniRepLKNet backbone with and without mmunirep's CUDA op (needs a GPU).

    python benchmarks/train_step_benchmark.py [--arch s] [--batch 2] [--size 800 1333]
        [--precision fp32 bf16 fp16] [--repeats 10] [--warmup 3] [--out FILE]
        [--compile [--compile-backend inductor]]

The backbone is built as configs/detection's Cascade Mask R-CNN builds it (arch S, drop path 0.5,
gradient checkpointing, BatchNorm, which SyncBN is on one GPU), twice with the same weights:
``use_lk_op=False`` (PyTorch's convolution) and ``use_lk_op=True`` (the op). A training step is
the forward pass on a batch of --batch images of --size, a loss that is a fixed random projection
of the four output maps, the backward pass and an AdamW step. The two models are timed
alternately with CUDA events (median of --repeats after --warmup) with the same seed per step (so
the same drop-path masks), and their peak memory is recorded. The inference structure
(``deploy=True``, no_grad forward) is timed the same way.

Before timing, one fp32 step of both models (TF32 off, drop path off) is compared with the same
step in float64: the op's outputs and parameter gradients must be within 4x the error of PyTorch's
fp32 step + 1e-5 (relative to each tensor's largest value); otherwise the script stops.

With --compile both backbones are built with their ``compile`` option (torch.compile, Inductor by
default), as a config's ``model.backbone.compile=True`` builds them, so that
the op is measured against PyTorch's convolution with the norms and activations around both fused;
the warm-up steps include the compilation. The fp32 check above runs eager; the op under Inductor
is checked by tests/test_ops.py::test_cuda_op_under_torch_compile.

The neck and heads of the detector are not included, so that the script needs only torch and
timm; they add the same time to both sides, so the ratio here is the backbone's (the upper bound of
the detector's).
"""

import argparse
import copy
import math
import statistics
import sys
import time
import warnings

import torch

from bench_utils import Report

PRECISIONS = dict(fp32=None, bf16=torch.bfloat16, fp16=torch.float16)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--arch', default='s')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--size', type=int, nargs=2, default=(800, 1333), metavar=('H', 'W'))
    parser.add_argument('--drop-path', type=float, default=0.5)
    parser.add_argument('--no-cp', action='store_true', help='without gradient checkpointing')
    parser.add_argument(
        '--precision', nargs='+', default=['fp32', 'bf16'], choices=list(PRECISIONS)
    )
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--out', help='also write the table to this file')
    parser.add_argument(
        '--compile',
        action='store_true',
        help='time both backbones built with compile=dict(backend=...) (the warm-up compiles)',
    )
    parser.add_argument('--compile-backend', default='inductor')
    parser.add_argument(
        '--cudnn-benchmark',
        action='store_true',
        help="torch.backends.cudnn.benchmark on (mmengine's env_cfg.cudnn_"
        "benchmark): cuDNN times its algorithms for PyTorch's convs in the "
        'warm-up',
    )
    parser.add_argument(
        '--device',
        default='cuda',
        help='cpu: a smoke run of this script (the op falls back; for tests only)',
    )
    args = parser.parse_args()
    if args.compile and args.warmup < 1:
        parser.error(
            f'--compile needs at least one warm-up step (it compiles), got --warmup {args.warmup}'
        )
    if not args.compile and args.compile_backend != 'inductor':
        parser.error('--compile-backend needs --compile')
    return args


def build_pair(args, deploy=False, compiled=False):
    """PyTorch's and the op's backbone with the same weights; ``compiled``: both with the
    backbone's own ``compile`` option (what a config's ``model.backbone.compile`` does)."""
    from mmunirep.models import UniRepLKNet

    torch.manual_seed(0)
    kwargs = dict(
        arch=args.arch,
        drop_path_rate=0.0 if deploy else args.drop_path,
        with_cp=not args.no_cp and not deploy,
        compile=dict(backend=args.compile_backend) if compiled else False,
    )
    ref = UniRepLKNet(use_lk_op=False, **kwargs)
    # trained-like BatchNorm statistics and layer scales, so that the deploy fold is not trivial
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    op = UniRepLKNet(use_lk_op=True, **kwargs)
    op.load_state_dict(ref.state_dict())
    if deploy:
        for m in (ref, op):
            m.eval()
            m.switch_to_deploy()
    return ref.to(args.device), op.to(args.device)


def make_inference(model, batch, amp, device):
    """A no_grad forward pass (of the deploy structure) under the same autocast."""

    def run(_):
        with torch.no_grad(), torch.autocast(
            device, dtype=amp or torch.float32, enabled=amp is not None
        ):
            model(batch)

    return run


def make_step(model, batch, projections, amp_dtype):
    """A training step as mmengine's (Amp)OptimWrapper runs it: fp16 with a dynamic loss scale."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    device = batch.device.type
    scaler = torch.amp.GradScaler(device, enabled=amp_dtype == torch.float16)

    def step(seed):
        torch.manual_seed(seed)
        with torch.autocast(
            device, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        ):
            outs = model(batch)
            loss = sum((o.float() * p).mean() for o, p in zip(outs, projections))
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    return step


def time_alternating(fns, warmup, repeats, device):
    """Median ms of each callable, run alternately; peak memory (GiB) of each (CUDA only)."""
    times = {name: [] for name in fns}
    peaks = {name: float('nan') for name in fns}
    cuda = device == 'cuda'
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn(i)
                end.record()
                end.synchronize()
                ms = start.elapsed_time(end)
                peak = torch.cuda.max_memory_allocated() / 2**30
                peaks[name] = peak if math.isnan(peaks[name]) else max(peaks[name], peak)
            else:
                t0 = time.perf_counter()
                fn(i)
                ms = (time.perf_counter() - t0) * 1e3
            if i >= warmup:
                times[name].append(ms)
    return {name: statistics.median(t) for name, t in times.items()}, peaks


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


def check_one_step(args, batch, projections):
    """One step from the same weights, with the op and without it in fp32 (TF32 off), and without
    it in float64: every output and parameter gradient of the op's step must be as close to
    float64 as PyTorch's fp32 step is, within 4x its error plus 1e-5 (errors relative to each
    tensor's largest float64 value). A fixed limit on op vs PyTorch failed at random: gradients
    that are sums with cancellation differ by up to 6e-4 of their largest value between any two
    fp32 summation orders. Drop path is off here so that the float64 model draws the same masks.
    Returns the worst tensor: (name, op error, PyTorch error)."""
    prev = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    ref, op = build_pair(argparse.Namespace(**{**vars(args), 'drop_path': 0.0}))
    ref64 = copy.deepcopy(ref).double()
    results = []
    for model, dtype in ((ref64, torch.float64), (ref, torch.float32), (op, torch.float32)):
        outs = model(batch.to(dtype))
        loss = sum((o * p.to(dtype)).mean() for o, p in zip(outs, projections))
        loss.backward()
        tensors = {f'output {i}': o.detach() for i, o in enumerate(outs)}
        tensors.update((n, p.grad) for n, p in model.named_parameters() if p.grad is not None)
        results.append(tensors)
        del outs, loss
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev
    exact, pytorch, ours = results
    if not all(torch.isfinite(t).all() for t in exact.values()):
        raise SystemExit('the float64 reference step is not finite')
    if not exact.keys() == pytorch.keys() == ours.keys():
        raise SystemExit('the models with and without the op have different parameters')
    worst, failed = None, []
    for name, t in exact.items():
        e_ours, e_pytorch = rel(ours[name], t), rel(pytorch[name], t)
        if e_ours > 4 * e_pytorch + 1e-5:
            failed.append(f'{name}: {e_ours:.1e} (PyTorch fp32: {e_pytorch:.1e})')
        if worst is None or e_ours - e_pytorch > worst[1] - worst[2]:
            worst = (name, e_ours, e_pytorch)
    if failed:
        raise SystemExit(
            "with the op the fp32 step is further from float64 than PyTorch's "
            "(limit 4x PyTorch's error + 1e-5): " + '; '.join(failed[:5])
        )
    del ref, op, ref64, results
    empty_cache(args.device)
    return worst


def empty_cache(device):
    if device == 'cuda':
        torch.cuda.empty_cache()


def main():
    args = parse_args()
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    from mmunirep.ops import depthwise_conv as dw

    if args.device == 'cuda':
        if not torch.cuda.is_available():
            raise SystemExit('train_step_benchmark needs a CUDA device')
        if not dw.ext_available():
            raise SystemExit('the CUDA extension is not built: bash scripts/build_ops.sh')
        # the op must really run: its fallback warning becomes an error
        warnings.filterwarnings('error', message=".*mmunirep's CUDA depthwise op is not used")
        device_name = (
            f'{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}'
        )
    else:
        warnings.filterwarnings('ignore', message=".*mmunirep's CUDA depthwise op is not used")
        device_name = (
            f'{args.device} (smoke run: the op falls back to F.conv2d), torch {torch.__version__}'
        )

    g = torch.Generator(device=args.device).manual_seed(0)
    batch = torch.randn(args.batch, 3, *args.size, device=args.device, generator=g)
    with torch.no_grad():
        shapes = [o.shape for o in build_pair(args)[0].eval()(batch[:1])]
    projections = [torch.randn(args.batch, *s[1:], device=args.device, generator=g) for s in shapes]
    empty_cache(args.device)
    worst = check_one_step(args, batch, projections)

    report = Report(args.out)
    mode = (
        f'both backbones with compile=dict(backend={args.compile_backend!r}), the fp32 check eager'
        if args.compile
        else 'eager'
    )
    mode += f', cudnn.benchmark {torch.backends.cudnn.benchmark}'
    if args.compile:
        # PyTorch's and the op's structures, training and deploy, per precision: more compiled
        # variants of the backbone's forward than torch's default limit of 8 keeps
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 32)
    report.add(
        f'device: {device_name}; command: python {" ".join(sys.argv)}',
        f'UniRepLKNet-{args.arch.upper()} backbone, batch {args.batch}x3x{args.size[0]}x'
        f'{args.size[1]}, drop path {args.drop_path}, gradient checkpointing '
        f'{not args.no_cp}; {mode}; median of {args.repeats} after {args.warmup} warm-up, '
        f'alternating; '
        f"one fp32 step agrees with float64 as PyTorch's does (largest excess: {worst[0]}, "
        f'{worst[1]:.1e} with the op, {worst[2]:.1e} without, relative to its largest value)',
        '| what | precision | PyTorch conv (ms) | mmunirep op (ms) | speed-up | peak GiB PyTorch '
        '/ op |',
        '|---|---|---|---|---|---|',
    )
    items = [(what, p) for p in args.precision for what in ('training step', 'inference (deploy)')]
    for what, pname in items:
        amp = PRECISIONS[pname]
        if what == 'training step':
            ref, op = build_pair(args, compiled=args.compile)
            for m in (ref, op):
                m.train()
            fns = dict(
                ref=make_step(ref, batch, projections, amp),
                op=make_step(op, batch, projections, amp),
            )
        else:
            ref, op = build_pair(args, deploy=True, compiled=args.compile)
            fns = dict(
                ref=make_inference(ref, batch, amp, args.device),
                op=make_inference(op, batch, amp, args.device),
            )
        t, peak = time_alternating(fns, args.warmup, args.repeats, args.device)
        report.add(
            f'| {what} | {pname} | {t["ref"]:.1f} | {t["op"]:.1f} | '
            f'{t["ref"] / t["op"]:.2f}x | {peak["ref"]:.2f} / {peak["op"]:.2f} |'
        )
        del ref, op, fns
        empty_cache(args.device)


if __name__ == '__main__':
    main()
