"""The model zoo's params and FLOPs: get_flops.py --deploy on every paper config, as a table.

    python benchmarks/model_zoo_complexity.py --out benchmarks/results/model_zoo_complexity.md
    python benchmarks/model_zoo_complexity.py \
        --configs configs/detection/unireplknet_t_1k_cascade_3x.py

Each config is counted as the paper's tables count it (tools/analysis_tools/get_flops.py says
how): the
re-parameterized model, detectors at 800x1280 (H x W) with 1000 proposals through the box heads
and 100 through the mask heads, segmentors at 512x2048 (512 crops) or 640x2560 (640 crops)
without the auxiliary head. The table puts the paper's figures beside ours, with the relative
difference; README's model zoo quotes it, and tests/test_benchmarks.py checks that the README
and this table agree. It takes about 15 minutes on 2 CPU cores (the XL models dominate).

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
HEADER = (
    '| config | input (H x W) | params paper | params ours | params diff | FLOPs paper '
    '| FLOPs ours | FLOPs diff |'
)


def paper_configs():
    names = sorted(
        glob.glob(osp.join(ROOT, 'configs', 'detection', 'unireplknet_*.py'))
        + glob.glob(osp.join(ROOT, 'configs', 'segmentation', 'unireplknet_*.py'))
    )
    found = {osp.basename(n) for n in names}
    if found != set(PAPER):
        raise RuntimeError(
            f'the paper configs changed: not in PAPER {sorted(found - set(PAPER))}, '
            f'missing from configs/ {sorted(set(PAPER) - found)}'
        )
    return names


def paper_shape(config: str):
    name = osp.basename(config)
    if 'cascade' in name:
        return 800, 1280
    if name.endswith('_512.py'):
        return 512, 2048
    if name.endswith('_640.py'):
        return 640, 2560
    raise ValueError(f'{config}: no paper input shape known (give --shape H W)')


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--configs', nargs='+', help='these configs (default: the paper configs)')
    parser.add_argument(
        '--shape',
        type=int,
        nargs=2,
        metavar=('H', 'W'),
        help="count every config at this shape (default: the paper's)",
    )
    parser.add_argument('--out', help='also write the table to this Markdown file')
    args = parser.parse_args(argv)
    configs = args.configs or paper_configs()
    lines = [
        f'# Model zoo params and FLOPs ({time.strftime("%Y-%m-%d")})',
        '',
        f'- command: `python benchmarks/model_zoo_complexity.py'
        f'{" " + " ".join(sys.argv[1:]) if argv is None and sys.argv[1:] else ""}`',
        f'- torch {torch.__version__}; each row is `tools/analysis_tools/get_flops.py CONFIG '
        '--shape H W '
        f"--deploy`: the re-parameterized model, multiply-accumulates (mmengine's "
        f'FlopAnalyzer); detectors with 1000 proposals (100 through the mask heads), '
        f'segmentors without the auxiliary head',
        '',
        HEADER,
        '|' + '---|' * HEADER.count(' | ') + '---|',
    ]
    for config in configs:
        shape = tuple(args.shape) if args.shape else paper_shape(config)
        start = time.perf_counter()
        result = get_flops(config, shape, deploy=True)
        paper = None if args.shape else PAPER.get(osp.basename(config))
        lines.append(row(config, result, paper))
        print(f'{lines[-1]}  ({time.perf_counter() - start:.0f} s)', file=sys.stderr, flush=True)
    text = '\n'.join(lines) + '\n'
    sys.stdout.write(text)
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            f.write(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
