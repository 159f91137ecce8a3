"""Convert a trained detector's or segmentor's checkpoint to the inference structure.

    python tools/model_converters/reparameterize.py CONFIG CHECKPOINT OUT [--cfg-options ...]
    python tools/test.py CONFIG OUT --cfg-options model.backbone.deploy=True   # same results

Every UniRepLKNet block's dilated branches and BatchNorms are folded into its convolutions. The
result is checked before it is written: the backbone's features agree with the training
structure's on a random image, and the state dict loads strictly into the config's model built
with ``deploy=True``. OUT is written whole or not at all.
"""

import argparse
import copy
import os.path as osp

import torch
from mmengine.config import DictAction
from mmengine.logging import print_log

from mmunirep.models import reparameterize_unireplknet
from mmunirep.utils import (
    CheckpointError,
    build_model,
    load_model_weights,
    model_state_dict,
    prepare_cfg,
    read_checkpoint,
    refuse_overwriting_input,
    save_checkpoint,
)
from mmunirep.utils.checkpoint import backbone_structure, fit_problems


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Re-parameterize a UniRepLKNet checkpoint')
    parser.add_argument('config', help='the config the checkpoint was trained with')
    parser.add_argument('checkpoint', help='training-structure checkpoint (file or URL)')
    parser.add_argument('out', help='where to save the inference-structure checkpoint')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, e.g. model.backbone.arch=s',
    )
    parser.add_argument(
        '--overwrite-input',
        action='store_true',
        help='allow OUT to be CHECKPOINT (replaced once the new file is complete)',
    )
    return parser.parse_args(argv)


def check_same_features(before, after, rtol: float = 1e-4) -> float:
    """The backbones' features on one random image must agree to ``rtol`` of their largest
    magnitude (and be finite); returns the largest relative difference."""
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, got = before(x), after(x)
    worst = 0.0
    for i, (a, b) in enumerate(zip(ref, got)):
        err = ((b - a).abs().max() / a.abs().max().clamp_min(1e-12)).item()
        if not err <= rtol:  # NaN too
            raise RuntimeError(
                f're-parameterized backbone differs from the trained one: feature '
                f'{i} by {err:.2e} of its largest magnitude (> {rtol})'
            )
        worst = max(worst, err)
    return worst


def main(argv=None):
    args = parse_args(argv)
    refuse_overwriting_input(args.out, [args.checkpoint], allowed=args.overwrite_input)
    cfg = prepare_cfg(args.config, cfg_options=args.cfg_options)
    print_log(f'[1/4] reading {args.checkpoint}', logger='current')
    ckpt = read_checkpoint(args.checkpoint)
    state = model_state_dict(ckpt, args.checkpoint)
    if backbone_structure(k for k in state if k.startswith('backbone.'))[0] == 'deploy':
        raise CheckpointError(
            f'{args.checkpoint} is already re-parameterized (deploy '
            'structure): use it as it is, with --cfg-options '
            'model.backbone.deploy=True'
        )
    print_log(
        f'[2/4] building {args.config} (training structure) and loading the checkpoint',
        logger='current',
    )
    model = build_model(cfg, deploy=False).eval()
    load_model_weights(
        model,
        ckpt,
        source=args.checkpoint,
        inference=False,
        cfg_hint='--cfg-options model.backbone.',
    )
    print_log('[3/4] re-parameterizing and checking', logger='current')
    trained = copy.deepcopy(model.backbone)
    reparameterize_unireplknet(model)
    err = check_same_features(trained, model.backbone)
    deploy_state = model.state_dict()
    problems = fit_problems(
        build_model(cfg, deploy=True),
        deploy_state,
        'the re-parameterized state dict',
        inference=False,
    )
    if problems:
        raise RuntimeError(problems)
    print_log(f'[4/4] saving {args.out}', logger='current')
    meta = dict(ckpt.get('meta', {}) or {})
    meta['reparameterized_from'] = (
        osp.abspath(args.checkpoint) if '://' not in args.checkpoint else args.checkpoint
    )
    save_checkpoint({'meta': meta, 'state_dict': deploy_state}, args.out)
    print_log(
        f'saved {args.out}: {len(deploy_state)} tensors (was {len(state)}), features within '
        f"{err:.1e} of the training structure's; test it with --cfg-options "
        'model.backbone.deploy=True',
        logger='current',
    )


if __name__ == '__main__':
    main()
