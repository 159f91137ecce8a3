"""Inference speed of a detector or segmentor, training structure against deploy structure.

    python tools/benchmark.py CONFIG [--checkpoint CKPT] [--shape H W] [--batch-size N]

Both structures are timed in the same run, on the same synthetic pre-processed batch, alternating
repeat by repeat; each repeat runs --iters forward passes (predict mode, post-processing included)
after --warmup passes, with CUDA synchronization around each timed repeat on a GPU. Reports the
median images/s of each and their ratio, and the device.
"""
import argparse
import copy
import platform
import statistics
import time

import torch
from mmengine.logging import print_log

from mmunirep.models import reparameterize_unireplknet
from mmunirep.utils import build_model, framework_of, load_exactly, prepare_cfg, read_state_dict
from mmunirep.utils.config_utils import DictAction
from mmunirep.utils.dummy_inputs import dummy_batch


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Benchmark inference, training vs deploy structure')
    parser.add_argument('config', help='config file')
    parser.add_argument('--checkpoint', help='optional training-structure checkpoint')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'), default=None,
                        help='input size (default: 800 1333 for detectors, 512 512 for segmentors)')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--iters', type=int, default=3, help='forward passes per timed repeat')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--part', choices=['model', 'backbone'], default='model',
                        help='time the whole model (predict mode) or only its backbone')
    parser.add_argument('--deploy', action='store_true',
                        help='time only the deploy structure')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(argv)


def device_name(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads'


def forward(model, inputs, samples, part):
    if part == 'backbone':
        return model.backbone(inputs)
    return model(inputs, copy.deepcopy(samples), mode='predict')


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


def main(argv=None):
    args = parse_args(argv)
    cfg = prepare_cfg(args.config, cfg_options=args.cfg_options)
    framework = framework_of(cfg)
    device = torch.device(args.device)
    h, w = args.shape or ((800, 1333) if framework == 'mmdet' else (512, 512))
    train_model = build_model(cfg, deploy=False)
    if args.checkpoint:
        load_exactly(train_model, read_state_dict(args.checkpoint)[0], args.checkpoint)
    train_model = train_model.to(device).eval()
    deploy_model = reparameterize_unireplknet(copy.deepcopy(train_model))
    models = {'deploy': deploy_model} if args.deploy else {'training': train_model,
                                                           'deploy': deploy_model}
    inputs, samples = dummy_batch(framework, args.batch_size, h, w, device)
    times = {name: [] for name in models}
    with torch.no_grad():
        for name, model in models.items():
            for _ in range(args.warmup):
                forward(model, inputs, samples, args.part)
        for r in range(args.repeats):
            for name, model in models.items():
                times[name].append(time_model(model, inputs, samples, args, device))
            print_log(f'repeat {r + 1}/{args.repeats}: ' + ', '.join(
                f'{n} {t[-1] / args.iters * 1e3:.1f} ms/iter' for n, t in times.items()),
                logger='current')
    ips = {n: args.batch_size * args.iters / statistics.median(t) for n, t in times.items()}
    lines = [f'{args.config} ({args.part}) at {args.batch_size}x3x{h}x{w} on {device_name(device)}, '
             f'torch {torch.__version__}; median of {args.repeats} repeats x {args.iters} iters:']
    lines += [f'  {n:8s} {v:8.2f} images/s' for n, v in ips.items()]
    if len(ips) == 2:
        lines.append(f'  deploy / training: {ips["deploy"] / ips["training"]:.2f}x')
    print_log('\n'.join(lines), logger='current')
    return ips


if __name__ == '__main__':
    main()
