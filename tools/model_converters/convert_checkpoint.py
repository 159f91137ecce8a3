"""Convert the authors' released COCO / ADE20K checkpoints (MMDetection 2.28 / MMSegmentation 0.x)
for mmunirep's configs.

    python tools/model_converters/convert_checkpoint.py IN.pth OUT.pth \
        --config configs/detection/unireplknet_s_22k_cascade_3x.py

Key names of Cascade Mask R-CNN, FPN, UperNet, the FCN auxiliary head and the backbone are the same
in those frameworks and in MMDetection 3 / MMSegmentation 1, so the state dict is kept as it is,
minus what the new frameworks do not have:
- ``ema_*`` buffers: MMDetection 2's EMA hooks keep one copy of every parameter as a buffer named
  ``ema_<name with dots as underscores>``. Its ExpMomentumEMAHook swaps the averaged weights into
  the model before the checkpoint is saved, so the main keys hold what was evaluated (the EMA
  weights) and the ``ema_*`` buffers the raw ones. ``--weights ema-buffers`` takes the buffers.
- ``module.`` prefixes of distributed wrappers.
The class names in ``meta['CLASSES']`` move to ``meta['dataset_meta']['classes']``. With
``--config`` the result is loaded into that config's model, and every key must land (without it
the keys are not checked). The weights must be finite; OUT is written whole or not at all.
"""

import argparse
import os.path as osp

from mmengine.config import DictAction
from mmengine.logging import print_log

from mmunirep.utils import (
    build_model,
    check_finite,
    load_model_weights,
    model_state_dict,
    prepare_cfg,
    read_checkpoint,
    refuse_overwriting_input,
    save_checkpoint,
)
from mmunirep.utils.checkpoint import backbone_structure


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert an MMDetection 2 / MMSegmentation 0.x '
        'UniRepLKNet checkpoint for MMDetection 3 / MMSegmentation 1'
    )
    parser.add_argument('src', help='the released checkpoint')
    parser.add_argument('dst', help='where to save the converted checkpoint')
    parser.add_argument('--config', help="check that every key lands in this config's model")
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, help='with --config: override its settings'
    )
    parser.add_argument(
        '--weights',
        choices=['main', 'ema-buffers'],
        default='main',
        help='main keys (what MMDetection 2 evaluated) or the ema_* buffers',
    )
    parser.add_argument(
        '--overwrite-input',
        action='store_true',
        help='allow DST to be SRC (replaced once the new file is complete)',
    )
    args = parser.parse_args(argv)
    if args.cfg_options and not args.config:
        parser.error('--cfg-options needs --config')
    return args


def convert_state_dict(state: dict, weights: str = 'main') -> dict:
    """Drop or apply MMDetection 2's ``ema_*`` buffers; keep every other key as it is."""
    ema = {k: v for k, v in state.items() if k.startswith('ema_')}
    main = {k: v for k, v in state.items() if not k.startswith('ema_')}
    if weights == 'ema-buffers':
        if not ema:
            raise ValueError('--weights ema-buffers: the checkpoint has no ema_* buffers')
        by_ema_name = {'ema_' + k.replace('.', '_'): k for k in main}
        unknown = sorted(set(ema) - set(by_ema_name))
        if unknown:
            raise ValueError(f'ema_* buffers that match no parameter: {unknown[:5]}')
        for ema_name, tensor in ema.items():
            main[by_ema_name[ema_name]] = tensor
    return main


def main(argv=None):
    args = parse_args(argv)
    refuse_overwriting_input(args.dst, [args.src], allowed=args.overwrite_input)
    print_log(f'[1/3] reading {args.src}', logger='current')
    ckpt = read_checkpoint(args.src)
    state = model_state_dict(ckpt, args.src)
    converted = convert_state_dict(state, args.weights)
    check_finite(converted, args.src)
    print_log(
        f'[2/3] {len(state)} keys in, {len(converted)} out '
        f'({len(state) - len(converted)} ema_* buffers dropped, weights: {args.weights})',
        logger='current',
    )
    meta = dict(ckpt.get('meta', {}) or {})
    classes, palette = meta.pop('CLASSES', None), meta.pop('PALETTE', None)
    if classes is not None:
        meta.setdefault('dataset_meta', {})['classes'] = tuple(classes)
    if palette is not None:
        meta.setdefault('dataset_meta', {})['palette'] = [list(c) for c in palette]
    meta['converted_from'] = osp.abspath(args.src) if '://' not in args.src else args.src
    if args.config:
        cfg = prepare_cfg(args.config, cfg_options=args.cfg_options)
        deploy = backbone_structure(k for k in converted if k.startswith('backbone.'))[0]
        model = build_model(cfg, deploy=deploy == 'deploy')
        load_model_weights(
            model,
            {'state_dict': converted},
            source=args.src,
            inference=False,
            cfg_hint='--cfg-options model.backbone.',
        )
    else:
        print_log(
            'without --config the keys are not checked against a model', logger='current', level=30
        )
    print_log(f'[3/3] saving {args.dst}', logger='current')
    save_checkpoint({'meta': meta, 'state_dict': converted}, args.dst)


if __name__ == '__main__':
    main()
