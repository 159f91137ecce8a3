"""Inference speed of a detector or segmentor, training structure against deploy structure.

    python tools/analysis_tools/benchmark.py CONFIG [--checkpoint CKPT] [--shape H W]
                              [--batch-size N]
                              [--amp {fp16,bf16}]
                              [--compile [--compile-mode MODE] [--compile-backend BACKEND]]
                              [--out results.md]

Both structures are timed in the same run, on the same synthetic pre-processed batch, alternating
repeat by repeat; each repeat runs --iters forward passes (predict mode, post-processing included)
after --warmup passes, with CUDA synchronization around each timed repeat on a GPU. Reports the
median images/s of each and their ratio, and the device.

--compile adds a torch.compile'd twin of each structure to the same run: its feature extractor
(backbone and neck; the backbone alone with --part backbone) compiled, the heads' post-processing
(NMS, RoI ops, resizing) left eager, as their data-dependent shapes only break the graph. Before
timing, each twin's features must match its eager structure's on the benchmark's batch (--rtol of
the largest magnitude), and the report gives compiled / eager for each structure. The warm-up
passes include the compilation.

--out appends the report to a Markdown file, with the command line and the date, so that the runs
behind a table of figures are kept together (benchmarks/results/cpu.md).
"""

import argparse
import copy
import datetime
import os.path as osp
import platform
import shlex
import statistics
import sys
import time

import torch
from mmengine.config import DictAction
from mmengine.logging import print_log

from mmunirep.models import reparameterize_unireplknet
from mmunirep.utils import (
    build_model,
    framework_of,
    load_model_weights,
    model_state_dict,
    prepare_cfg,
    read_checkpoint,
)
from mmunirep.utils.checkpoint import backbone_structure
from mmunirep.utils.dummy_inputs import dummy_batch
from mmunirep.utils.fileio import write_text

AMP_DTYPES = dict(fp16=torch.float16, bf16=torch.bfloat16)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Benchmark inference, training vs deploy structure'
    )
    parser.add_argument('config', help='config file')
    parser.add_argument(
        '--checkpoint', help='optional checkpoint (training or deploy structure, file or URL)'
    )
    parser.add_argument(
        '--shape',
        type=int,
        nargs=2,
        metavar=('H', 'W'),
        default=None,
        help='input size (default: 800 1333 for detectors, 512 512 for segmentors)',
    )
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--iters', type=int, default=3, help='forward passes per timed repeat')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument(
        '--part',
        choices=['model', 'backbone'],
        default='model',
        help='time the whole model (predict mode) or only its backbone',
    )
    parser.add_argument('--deploy', action='store_true', help='time only the deploy structure')
    parser.add_argument(
        '--compile',
        action='store_true',
        help='also time each structure with its feature extractor torch.compiled',
    )
    parser.add_argument(
        '--compile-mode',
        default=None,
        choices=['default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs'],
        help="torch.compile's mode (default: torch's default)",
    )
    parser.add_argument(
        '--compile-backend', default='inductor', help="torch.compile's backend (default: inductor)"
    )
    parser.add_argument(
        '--amp',
        choices=list(AMP_DTYPES),
        help='run every structure under torch.autocast with this dtype',
    )
    parser.add_argument(
        '--rtol',
        type=float,
        default=None,
        help='with --compile: max |compiled - eager| / max |eager| of the features '
        '(default 1e-3, 2e-2 with --amp)',
    )
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    parser.add_argument('--out', help='append the report to this Markdown file')
    args = parser.parse_args(argv)
    if not args.compile and (args.compile_mode is not None or args.compile_backend != 'inductor'):
        parser.error('--compile-mode and --compile-backend need --compile')
    if args.compile and args.warmup < 1:
        parser.error(
            f'--compile needs at least one warm-up pass (it compiles), got --warmup {args.warmup}'
        )
    if args.shape is not None and min(args.shape) < 32:
        parser.error(f'--shape takes H W of at least 32 each, got {list(args.shape)}')
    for name in ('batch_size', 'iters', 'repeats'):
        if getattr(args, name) < 1:
            parser.error(
                f'--{name.replace("_", "-")} must be at least 1, got {getattr(args, name)}'
            )
    if args.warmup < 0:
        parser.error(f'--warmup must be 0 or more, got {args.warmup}')
    if args.rtol is None:
        args.rtol = 2e-2 if args.amp else 1e-3
    elif not args.rtol > 0:
        parser.error(f'--rtol must be positive, got {args.rtol}')
    return args


def device_name(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads'


def forward(model, inputs, samples, part):
    if part == 'backbone':
        return model.backbone(inputs)
    return model(inputs, copy.deepcopy(samples), mode='predict')


def features(model, inputs, part):
    """What --compile compiles: the backbone's outputs, or the model's extract_feat."""
    return model.backbone(inputs) if part == 'backbone' else model.extract_feat(inputs)


def compiled_twin(model, args):
    """A copy of ``model`` whose feature extractor goes through torch.compile.

    A copy, so that the eager structure timed beside it stays eager. The model's own forward in
    predict mode calls ``self.extract_feat`` (MMDetection's and MMSegmentation's models alike), so
    the compiled bound method set on the instance is what predict runs; the heads stay eager.
    """
    twin = copy.deepcopy(model)
    kwargs = dict(backend=args.compile_backend, mode=args.compile_mode)
    if args.part == 'backbone':
        twin.backbone = torch.compile(twin.backbone, **kwargs)
    else:
        twin.extract_feat = torch.compile(twin.extract_feat, **kwargs)
    return twin


def check_twin(name, eager, compiled, inputs, args):
    """The compiled twin's features against its eager structure's; raise beyond --rtol."""
    with torch.no_grad():
        ref = features(eager, inputs, args.part)
        out = features(compiled, inputs, args.part)
    ref, out, errors = list(ref), list(out), []
    if len(ref) != len(out):
        raise RuntimeError(f'{name}: compiled model gave {len(out)} feature maps, eager {len(ref)}')
    for i, (r, o) in enumerate(zip(ref, out)):
        if r.shape != o.shape:
            raise RuntimeError(
                f'{name}: feature {i} has shape {tuple(o.shape)} compiled, {tuple(r.shape)} eager'
            )
        r, o = r.float(), o.float()
        scale = r.abs().max().item()
        err = (o - r).abs().max().item() / max(scale, 1e-12)
        if not err <= args.rtol:  # also catches NaN
            raise RuntimeError(
                f'{name}: compiled feature {i} differs from eager by {err:.2e} of '
                f'its largest magnitude {scale:.3g} (--rtol {args.rtol})'
            )
        errors.append(err)
    return max(errors)


def time_model(model, inputs, samples, args, device) -> float:
    """Seconds for ``args.iters`` forward passes (one repeat)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(args.iters):
        forward(model, inputs, samples, args.part)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def build_structures(cfg, args) -> dict:
    """{'training': ..., 'deploy': ...} (only 'deploy' with --deploy or a deploy-structure
    checkpoint), in eval mode, with the checkpoint's weights if one is given."""
    deploy_ckpt = False
    if args.checkpoint:
        ckpt = read_checkpoint(args.checkpoint)
        keys = [k for k in model_state_dict(ckpt, args.checkpoint) if k.startswith('backbone.')]
        deploy_ckpt = backbone_structure(keys)[0] == 'deploy'
    model = build_model(cfg, deploy=deploy_ckpt)
    if args.checkpoint:
        load_model_weights(
            model, ckpt, source=args.checkpoint, cfg_hint='--cfg-options model.backbone.'
        )
    model.eval()
    if deploy_ckpt:
        return {'deploy': model}
    deploy_model = reparameterize_unireplknet(copy.deepcopy(model))
    return {'deploy': deploy_model} if args.deploy else {'training': model, 'deploy': deploy_model}


def main(argv=None):
    args = parse_args(argv)
    cfg = prepare_cfg(args.config, cfg_options=args.cfg_options)
    framework = framework_of(cfg)
    device = torch.device(args.device)
    h, w = args.shape or ((800, 1333) if framework == 'mmdet' else (512, 512))
    models = build_structures(cfg, args)
    for model in models.values():
        model.to(device)
    inputs, samples = dummy_batch(next(iter(models.values())), framework, args.batch_size, h, w)
    if args.compile:
        models.update({f'{n}+compile': compiled_twin(m, args) for n, m in list(models.items())})
    times = {name: [] for name in models}
    errors = {}
    amp = torch.autocast(device.type, dtype=AMP_DTYPES.get(args.amp), enabled=bool(args.amp))
    with torch.no_grad(), amp:
        for name, model in models.items():
            for _ in range(args.warmup):
                forward(model, inputs, samples, args.part)
            if name.endswith('+compile'):
                errors[name] = check_twin(
                    name, models[name[: -len('+compile')]], model, inputs, args
                )
        for r in range(args.repeats):
            for name, model in models.items():
                times[name].append(time_model(model, inputs, samples, args, device))
            print_log(
                f'repeat {r + 1}/{args.repeats}: '
                + ', '.join(
                    f'{n} {t[-1] / args.iters * 1e3:.1f} ms/iter' for n, t in times.items()
                ),
                logger='current',
            )
    ips = {n: args.batch_size * args.iters / statistics.median(t) for n, t in times.items()}
    lines = [
        f'{args.config} ({args.part}) at {args.batch_size}x3x{h}x{w} on {device_name(device)}, '
        f'torch {torch.__version__}, {args.amp + " autocast" if args.amp else "fp32"}; '
        f'median of {args.repeats} repeats x {args.iters} iters:'
    ]
    lines += [f'  {n:16s} {v:8.2f} images/s' for n, v in ips.items()]
    if 'training' in ips and 'deploy' in ips:
        lines.append(f'  deploy / training: {ips["deploy"] / ips["training"]:.2f}x')
    for name, err in errors.items():
        eager = name[: -len('+compile')]
        lines.append(
            f'  {name} / {eager}: {ips[name] / ips[eager]:.2f}x (features within '
            f'{err:.1e} of eager; backend {args.compile_backend}, mode '
            f'{args.compile_mode or "default"})'
        )
    print_log('\n'.join(lines), logger='current')
    if args.out:
        append_report(args.out, argv, lines)
    return ips


def append_report(path: str, argv, lines) -> None:
    """Append ``lines`` to the Markdown file ``path`` under the command that produced them (the
    whole file rewritten beside it and renamed into place)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = 'python tools/analysis_tools/benchmark.py ' + shlex.join(argv)
    text = ''
    if osp.isfile(path):
        with open(path) as f:
            text = f.read()
    if not text:
        text = '# tools/analysis_tools/benchmark.py reports\n'
    text += (
        f'\n## {datetime.date.today().isoformat()}: `{command}`\n\n```\n'
        + '\n'.join(lines)
        + '\n```\n'
    )
    write_text(path, text)


if __name__ == '__main__':
    main()
