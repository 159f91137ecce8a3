"""The model zoo's params and FLOPs: get_flops.py --deploy on every zoo config, as a table.

    python benchmarks/model_zoo_complexity.py --out benchmarks/results/model_zoo_complexity.md
    python benchmarks/model_zoo_complexity.py \
        --configs configs/detection/unireplknet_t_1k_cascade_3x.py
    python benchmarks/model_zoo_complexity.py --new --merge \
        --out benchmarks/results/model_zoo_complexity.md

Each config is counted as its family's papers count it (tools/analysis_tools/get_flops.py says
how), on the re-parameterized model:

* the paper's configs as the paper's tables: Cascade Mask R-CNN at 800x1280 (H x W) with 1000
  proposals through the box heads and 100 through the mask heads; UperNet at 512x2048 (512 crops)
  or 640x2560 (640 crops) without the auxiliary head;
* the configs beyond the paper (their paper columns are empty): Mask R-CNN as Cascade (800x1280,
  1000 / 100 proposals: ConvNeXt's and Swin's Mask R-CNN tables count at 1280x800); DINO at
  800x1280 too, ``forward(mode='tensor')`` with its 900 queries (DETR-family papers average
  over the first 100 COCO val2017 images instead, so theirs differ); Mask2Former at its 640x640
  crop, every decoder layer's predictions, no post-processing; UperNet on Cityscapes on the whole
  1024x2048 image it is tested on, without the auxiliary head.

The table puts the paper's figures beside ours, with the relative difference; the README's and
docs/en/model_zoo.md's zoo tables quote it, and tests/test_benchmarks/test_benchmarks.py checks
that they agree. The paper's 13 configs take about 15 minutes on 2 CPU cores (the XL models
dominate); ``--new`` counts the others, ``--merge`` replaces or adds their rows in an existing
``--out`` table and leaves the other rows as they are.

--shape H W counts every config at that shape instead (a smoke run; the paper columns are then
left empty, as they are for a config the paper does not list).
"""

import argparse
import glob
import os
import os.path as osp
import sys
import time

import torch
from mmengine.config import Config

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'tools', 'analysis_tools'))

from get_flops import get_flops  # noqa: E402

# config -> the paper's params (M) and FLOPs (G), from its COCO and ADE20K tables
PAPER = {
    'unireplknet_t_1k_cascade_3x.py': (89, 749),
    'unireplknet_s_1k_cascade_3x.py': (113, 835),
    'unireplknet_s_22k_cascade_3x.py': (113, 835),
    'unireplknet_b_22k_cascade_3x.py': (155, 978),
    'unireplknet_l_22k_cascade_3x.py': (276, 1385),
    'unireplknet_xl_22k_cascade_3x.py': (443, 1952),
    'unireplknet_t_1k_upernet_160k_512.py': (61, 946),
    'unireplknet_s_1k_upernet_160k_512.py': (86, 1036),
    'unireplknet_s_22k_upernet_160k_512.py': (86, 1036),
    'unireplknet_s_22k_upernet_160k_640.py': (86, 1618),
    'unireplknet_b_22k_upernet_160k_640.py': (130, 1850),
    'unireplknet_l_22k_upernet_160k_640.py': (254, 2507),
    'unireplknet_xl_22k_upernet_160k_640.py': (425, 3420),
}
# the zoo's configs that the paper does not have (untrained)
NEW = (
    'unireplknet_t_1k_mask_rcnn_1x.py',
    'unireplknet_t_1k_mask_rcnn_3x.py',
    'unireplknet_s_1k_mask_rcnn_1x.py',
    'unireplknet_s_1k_mask_rcnn_3x.py',
    'unireplknet_b_22k_dino_12e.py',
    'unireplknet_b_22k_dino_36e.py',
    'unireplknet_l_22k_dino_12e.py',
    'unireplknet_l_22k_dino_36e.py',
    'unireplknet_b_22k_mask2former_160k_640.py',
    'unireplknet_l_22k_mask2former_160k_640.py',
    'unireplknet_t_1k_upernet_80k_cityscapes_512x1024.py',
    'unireplknet_s_1k_upernet_80k_cityscapes_512x1024.py',
)
HEADER = (
    '| config | input (H x W) | params paper | params ours | params diff | FLOPs paper '
    '| FLOPs ours | FLOPs diff |'
)


def zoo_configs(new: bool = False):
    """The paper's configs (or, with ``new``, the others of the zoo), checked against the
    configs/ folders."""
    names = sorted(
        glob.glob(osp.join(ROOT, 'configs', 'detection', 'unireplknet_*.py'))
        + glob.glob(osp.join(ROOT, 'configs', 'segmentation', 'unireplknet_*.py'))
    )
    found, known = {osp.basename(n) for n in names}, set(PAPER) | set(NEW)
    if found != known:
        raise RuntimeError(
            f'the zoo configs changed: not in PAPER or NEW {sorted(found - known)}, '
            f'missing from configs/ {sorted(known - found)}'
        )
    wanted = set(NEW) if new else set(PAPER)
    return [n for n in names if osp.basename(n) in wanted]


def paper_configs():
    return zoo_configs(new=False)


def zoo_shape(config: str):
    """The input (H, W) its family's tables count at (see the module's docstring)."""
    name = osp.basename(config)
    if any(k in name for k in ('cascade', 'mask_rcnn', 'dino')):
        return 800, 1280
    if 'cityscapes' in name:
        return 1024, 2048
    if 'mask2former' in name and name.endswith('_640.py'):
        return 640, 640
    if 'upernet' in name and name.endswith('_512.py'):
        return 512, 2048
    if 'upernet' in name and name.endswith('_640.py'):
        return 640, 2560
    raise ValueError(f'{config}: no paper input shape known (give --shape H W)')


paper_shape = zoo_shape


def row(config: str, result: dict, paper) -> str:
    params, flops = result['params'] / 1e6, result['flops'] / 1e9
    h, w = result['input_shape']
    cells = [f'`{osp.basename(config)}`', f'{h} x {w}']
    for ours, ref, unit, digits in (
        (params, paper and paper[0], 'M', 2),
        (flops, paper and paper[1], 'G', 1),
    ):
        cells += [
            f'{ref}{unit}' if ref else '',
            f'{ours:.{digits}f}{unit}',
            f'{100 * (ours - ref) / ref:+.1f}%' if ref else '',
        ]
    return '| ' + ' | '.join(cells) + ' |'


def split_table(text: str):
    """(the lines before the table, {config cell: row line}) of a table this script wrote."""
    lines = text.rstrip('\n').split('\n')
    start = lines.index(HEADER)
    rows = {}
    for line in lines[start + 2 :]:
        if line.startswith('| `'):
            rows[line.split(' | ')[0][2:]] = line
    return lines[:start], rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--configs', nargs='+', help='these configs (default: the paper configs)')
    parser.add_argument(
        '--new', action='store_true', help="the zoo's configs that are not in the paper"
    )
    parser.add_argument(
        '--shape',
        type=int,
        nargs=2,
        metavar=('H', 'W'),
        help="count every config at this shape (default: the paper's)",
    )
    parser.add_argument('--out', help='also write the table to this Markdown file')
    parser.add_argument(
        '--merge',
        action='store_true',
        help="with --out: replace or add these configs' rows in the existing table, keeping "
        'its other rows and notes',
    )
    args = parser.parse_args(argv)
    if args.merge and not (args.out and osp.isfile(args.out)):
        parser.error('--merge needs an existing --out table')
    configs = args.configs or zoo_configs(new=args.new)
    given = sys.argv[1:] if argv is None else list(argv)
    command = f'`python benchmarks/model_zoo_complexity.py{"".join(" " + a for a in given)}`'
    start_all = time.perf_counter()
    rows, counted = [], {}
    for config in configs:
        shape = tuple(args.shape) if args.shape else zoo_shape(config)
        start = time.perf_counter()
        # configs that differ only in their schedule (1x / 3x, 12e / 36e) build the same model
        key = (repr(Config.fromfile(config).model.to_dict()), shape)
        if key not in counted:
            counted[key] = get_flops(config, shape, deploy=True)
        result = counted[key]
        paper = None if args.shape else PAPER.get(osp.basename(config))
        rows.append(row(config, result, paper))
        print(f'{rows[-1]}  ({time.perf_counter() - start:.0f} s)', file=sys.stderr, flush=True)
    wall = time.perf_counter() - start_all
    if args.merge:
        with open(args.out) as f:
            notes, table = split_table(f.read())
        while notes and not notes[-1]:
            notes.pop()
        notes.append(
            f'- {time.strftime("%Y-%m-%d")}: {command} (torch {torch.__version__}) counted '
            f'{len(rows)} configs in {wall:.0f} s and merged their rows'
        )
        for line in rows:
            table[line.split(' | ')[0][2:]] = line
        order = [f'`{osp.basename(c)}`' for c in zoo_configs() + zoo_configs(new=True)]
        merged = [table[k] for k in order if k in table]
        merged += [v for k, v in table.items() if k not in order]
        lines = notes + ['', HEADER, '|' + '---|' * HEADER.count(' | ') + '---|'] + merged
    else:
        lines = [
            f'# Model zoo params and FLOPs ({time.strftime("%Y-%m-%d")})',
            '',
            f'- command: {command}',
            f'- torch {torch.__version__}; each row is `tools/analysis_tools/get_flops.py CONFIG '
            '--shape H W '
            f"--deploy`: the re-parameterized model, multiply-accumulates (mmengine's "
            f'FlopAnalyzer); detectors with 1000 proposals (100 through the mask heads), '
            f'segmentors without the auxiliary head',
            '',
            HEADER,
            '|' + '---|' * HEADER.count(' | ') + '---|',
        ] + rows
    text = '\n'.join(lines) + '\n'
    sys.stdout.write(text)
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            f.write(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
