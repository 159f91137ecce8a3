"""Check a dwconv_benchmark.py table against the op's speed targets (issue 6), as a verdict.

    python benchmarks/check_targets.py dwconv.md [--out targets.md] [--bandwidth-gbs B]

The targets, on an H100 or H200, against the faster of PyTorch's two paths (NCHW and
channels_last, i.e. cuDNN):
  1. forward at least 2x on the detection and segmentation shapes;
  2. forward at least 1.5x on the classification shapes;
  3. forward + backward at least 1.5x on all shapes;
  4. at least half of the fp32 FMA floor on the compute-bound shapes: each pass of each
     (shape, dtype) whose FMA floor (2*N*C*H*W*K*K FLOPs at the measured fp32 rate) is at least
     its memory floor (2*N*C*H*W elements read or written at the measured copy bandwidth; the
     filter is small), i.e. where K*K / (bytes per element) >= fp32 rate / bandwidth.
Each target is checked on every dtype of the table, with the op's default kernels (columns
"ours") and, where the table has them, with its autotuner on (column "ours, autotuned"). Ratios
and floor fractions are recomputed from the table's times, shapes and rates, not read from its
rounded columns. A (shape, dtype) the table lacks, or has as WRONG / ERROR, counts as not
measured, so a partial table never passes a target. The fp32 rate and the bandwidth come from the
table's first line; a table without a measured bandwidth (those before 2026-11-23) needs
--bandwidth-gbs for target 4. Prints a markdown report (and writes it with --out); exit 0 when
the table was read, whatever the verdict, 2 when it could not be.

Written here because the targets are this project's: no benchmark library knows them.
"""
import argparse
import re
import sys

DET_SEG = [(2, 192, 100, 168, 13), (2, 384, 50, 84, 13), (2, 768, 25, 42, 13),
           (8, 384, 40, 40, 13)]
CLASSIFICATION = [(64, 192, 28, 28, 13), (64, 384, 14, 14, 13), (64, 768, 7, 7, 13)]
REPLKNET = [(64, 384, 32, 32, 7), (64, 384, 32, 32, 13), (64, 384, 32, 32, 31)]
ALL_SHAPES = DET_SEG + CLASSIFICATION + REPLKNET  # the shapes (dwconv_benchmark.SHAPES)
DTYPES = ('fp32', 'fp16', 'bf16')
BYTES = dict(fp32=4, fp16=2, bf16=2)
PASSES = ('fwd', 'dgrad', 'wgrad')
# (name, shapes, pass, what is measured, at least)
TARGETS = [
    ('forward >= 2x, detection and segmentation shapes', DET_SEG, 'fwd', 'ratio', 2.0),
    ('forward >= 1.5x, classification shapes', CLASSIFICATION, 'fwd', 'ratio', 1.5),
    ('forward + backward >= 1.5x, all shapes', ALL_SHAPES, 'fwd+bwd', 'ratio', 1.5),
    ('>= 0.5 of the fp32 FMA floor, compute-bound shapes (each pass)', ALL_SHAPES, PASSES,
     'floor', 0.5),
]
FLOAT = r'(\d+(?:\.\d+)?)'


class TableError(Exception):
    """The file is not a dwconv_benchmark.py table this script can read."""


def parse_table(text):
    """(fp32 FLOP/s, bandwidth B/s or None, rows) of a dwconv_benchmark.py table. rows maps
    (shape, dtype) to {pass: {column: ms}} (columns 'ours', 'torch NCHW', 'torch CL' and, where
    present, 'autotuned'), or to the text of a WRONG / ERROR row."""
    head = next((line for line in text.splitlines() if line.startswith('device:')), None)
    if head is None:
        raise TableError('no "device: ..." line: not a dwconv_benchmark.py table')
    rate = re.search(rf'fp32 rate {FLOAT} TFLOP/s', head)
    if not rate:
        raise TableError('the "device:" line has no "fp32 rate ... TFLOP/s" (a --parts-sweep '
                         'table has none: give the main table)')
    bandwidth = re.search(rf'memory bandwidth {FLOAT} GB/s', head)
    if float(rate.group(1)) <= 0 or (bandwidth and float(bandwidth.group(1)) <= 0):
        raise TableError(f'the table\'s fp32 rate ({rate.group(1)} TFLOP/s) and bandwidth '
                         f'({bandwidth.group(1) if bandwidth else "none"} GB/s) must be positive')
    lines = [line for line in text.splitlines() if line.startswith('| ')]
    if not lines or not lines[0].startswith('| shape (N,C,H,W,K) |'):
        raise TableError('no table header "| shape (N,C,H,W,K) | dtype | pass | ours | ..."')
    names = [c.strip() for c in lines[0].strip('|').split('|')]
    need = ['shape (N,C,H,W,K)', 'dtype', 'pass', 'ours', 'torch NCHW', 'torch CL']
    if names[:6] != need:
        raise TableError(f'table columns {names[:6]}, expected {need}')
    auto = names.index('ours, autotuned') if 'ours, autotuned' in names else None
    rows = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip('|').split('|')]
        if set(cells[0]) <= set('-'):
            continue  # the separator
        shape = tuple(int(v) for v in re.findall(r'\d+', cells[0]))
        if len(shape) != 5 or cells[1] not in DTYPES:
            raise TableError(f'row {line!r}: expected a shape (N, C, H, W, K) and a dtype')
        key = (shape, cells[1])
        if cells[2].startswith(('WRONG', 'ERROR')):
            rows[key] = cells[2]
            continue
        times = {'ours': float(cells[3]), 'torch NCHW': float(cells[4]),
                 'torch CL': float(cells[5])}
        if auto is not None and cells[auto]:
            times['autotuned'] = float(re.match(FLOAT, cells[auto]).group(1))
        rows.setdefault(key, {})[cells[2]] = times
    bytes_per_s = float(bandwidth.group(1)) * 1e9 if bandwidth else None
    return float(rate.group(1)) * 1e12, bytes_per_s, rows


def compute_bound(shape, dtype, rate, bandwidth):
    """Whether a pass of ``shape`` in ``dtype`` takes longer at the FMA rate than moving its
    2*N*C*H*W elements at the bandwidth."""
    k = shape[4]
    return k * k / BYTES[dtype] >= rate / bandwidth


def check(rate, bandwidth, rows, dtypes=DTYPES):
    """Per target: (name, side -> list of (shape, dtype, pass, value or None, met)) for the
    default kernels ('ours') and the autotuner ('autotuned', where the table has it)."""
    measured = [row for row in rows.values() if isinstance(row, dict)]  # not WRONG / ERROR
    autotuned = any('autotuned' in times for row in measured for times in row.values())
    sides = ['ours', 'autotuned'] if autotuned else ['ours']
    results = []
    for name, shapes, passes, what, least in TARGETS:
        passes = passes if isinstance(passes, tuple) else (passes, )
        if what == 'floor' and bandwidth is None:
            results.append((name, least, None))  # which shapes are compute-bound is unknown
            continue
        by_side = {}
        for side in sides:
            checks = []
            for shape in shapes:
                n, c, h, w, k = shape
                floor_s = 2 * n * c * h * w * k * k / rate
                for dtype in dtypes:
                    if what == 'floor' and not compute_bound(shape, dtype, rate, bandwidth):
                        continue
                    row = rows.get((shape, dtype))
                    for p in passes:
                        value = None
                        if isinstance(row, dict) and p in row and side in row[p]:
                            t = row[p]
                            value = (floor_s * 1e3 / t[side]) if what == 'floor' else (
                                min(t['torch NCHW'], t['torch CL']) / t[side])
                        checks.append((shape, dtype, p, value,
                                       value is not None and value >= least))
            by_side[side] = checks
        results.append((name, least, by_side))
    return results


def report(results, rate, bandwidth, source):
    side_words = dict(ours='default kernels', autotuned='MMUNIREP_DWCONV_AUTOTUNE=1')
    rates = f'fp32 rate {rate / 1e12:.3g} TFLOP/s'
    if bandwidth:
        rates += (f'; memory bandwidth {bandwidth / 1e9:.0f} GB/s; compute-bound where '
                  f'K*K / (bytes per element) >= {rate / bandwidth:.1f}')
    lines = [f'# The op\'s speed targets, checked on `{source}`', '', rates, '']
    verdicts = {'ours': []}
    for name, least, by_side in results:
        lines.append(f'## {name}')
        if by_side is None:
            lines += ['- **not checked**: the table has no measured memory bandwidth, so which '
                      'shapes are compute-bound is unknown (give --bandwidth-gbs)', '']
            for side in verdicts:
                verdicts[side].append(False)
            continue
        for side, checks in by_side.items():
            missing = [c for c in checks if c[3] is None]
            failed = [c for c in checks if c[3] is not None and not c[4]]
            met = bool(checks) and not missing and not failed
            verdicts.setdefault(side, []).append(met)
            measured = [c for c in checks if c[3] is not None]
            worst = min(measured, key=lambda c: c[3]) if measured else None
            lines.append(f'- {side_words[side]}: **{"met" if met else "not met"}** '
                         f'({len(checks) - len(missing) - len(failed)} of {len(checks)} at '
                         f'least {least:g}' + (f'; lowest {worst[3]:.2f}, {worst[0]} '
                                               f'{worst[1]} {worst[2]}' if worst else '') + ')')
            short = {}  # (shape, dtype) -> the passes that miss the target, and by how much
            for shape, dtype, p, value, _ in failed + missing:
                short.setdefault((shape, dtype), []).append(
                    f'{p} {"not measured" if value is None else f"{value:.2f}"}')
            if checks and len(missing) == len(checks):
                lines.append('  - none of these measured')
                continue
            for (shape, dtype), passes in short.items():
                lines.append(f'  - {shape} {dtype}: {", ".join(passes)}')
        lines.append('')
    for side, met in verdicts.items():
        lines.append(f'All targets met with the {side_words[side]}: '
                     f'{"yes" if all(met) else "no"} ({sum(met)} of {len(met)})')
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('table', help='the --out file of benchmarks/dwconv_benchmark.py')
    parser.add_argument('--out', help='also write the report to this file')
    parser.add_argument('--bandwidth-gbs', type=float,
                        help='memory bandwidth for the compute-bound test, where the table has '
                        'no measured one')
    parser.add_argument('--dtypes', nargs='+', default=list(DTYPES), choices=DTYPES,
                        help='the dtypes each target is checked on (default: all three)')
    args = parser.parse_args(argv)
    try:
        with open(args.table) as f:
            rate, bandwidth, rows = parse_table(f.read())
        if bandwidth is None and args.bandwidth_gbs:
            bandwidth = args.bandwidth_gbs * 1e9
        results = check(rate, bandwidth, rows, args.dtypes)
    except (OSError, TableError) as e:
        print(f'check_targets: {args.table}: {e}', file=sys.stderr)
        return 2
    lines = report(results, rate, bandwidth, args.table)
    print('\n'.join(lines))
    if args.out:
        with open(args.out, 'w') as f:
            f.write('\n'.join(lines) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
