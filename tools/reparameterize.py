"""Convert a trained detector's or segmentor's checkpoint to the inference structure.

    python tools/reparameterize.py CONFIG CHECKPOINT OUT
    python tools/test.py CONFIG OUT --cfg-options model.backbone.deploy=True   # same results

Every UniRepLKNet block's dilated branches and BatchNorms are folded into its convolutions; the
result is checked to load strictly into the config's model built with ``deploy=True``.
"""
import argparse
import os
import os.path as osp

import torch
from mmengine.logging import print_log

from mmunirep.models import reparameterize_unireplknet
from mmunirep.utils import build_model, load_exactly, prepare_cfg, read_state_dict


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Re-parameterize a UniRepLKNet checkpoint')
    parser.add_argument('config', help='the config the checkpoint was trained with')
    parser.add_argument('checkpoint', help='training-structure checkpoint')
    parser.add_argument('out', help='where to save the inference-structure checkpoint')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = prepare_cfg(args.config)
    print_log(f'[1/4] building {args.config} (training structure)', logger='current')
    model = build_model(cfg, deploy=False).eval()
    print_log(f'[2/4] loading {args.checkpoint}', logger='current')
    state, ckpt = read_state_dict(args.checkpoint)
    load_exactly(model, state, args.checkpoint)
    print_log('[3/4] re-parameterizing', logger='current')
    reparameterize_unireplknet(model)
    deploy_state = model.state_dict()
    check = build_model(cfg, deploy=True)
    load_exactly(check, deploy_state, 'the re-parameterized state dict')
    print_log(f'[4/4] saving {args.out}', logger='current')
    meta = dict(ckpt.get('meta', {}) or {})
    meta['reparameterized_from'] = osp.abspath(args.checkpoint)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    torch.save({'meta': meta, 'state_dict': deploy_state}, args.out)
    print_log(f'saved {args.out}: {len(deploy_state)} tensors (was {len(state)}); test it with '
              f'--cfg-options model.backbone.deploy=True', logger='current')


if __name__ == '__main__':
    main()
