"""What the benchmark scripts share: the CPU benchmarks' options, a table written as it grows, and
interleaved timing."""

import argparse
import importlib.util
import os
import os.path as osp
import platform
import statistics
import tempfile
import time
from typing import Optional

import torch

from mmunirep.utils.fileio import write_text


def cpu_benchmark_parser(doc: str, repeats: int, warmup: int) -> argparse.ArgumentParser:
    """A parser with the options the CPU benchmarks over image sizes share: --arch, --sizes,
    --threads, --repeats, --warmup and --out; described by the first paragraph of the script's
    docstring ``doc``. Parse with :func:`parse_cpu_benchmark_args`."""
    parser = argparse.ArgumentParser(description=' '.join(doc.split('\n\n')[0].split()))
    parser.add_argument('--arch', default='s', help='UniRepLKNet variant')
    parser.add_argument('--sizes', type=int, nargs='+', default=[224, 512])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=repeats)
    parser.add_argument('--warmup', type=int, default=warmup)
    parser.add_argument('--out', help='also write the table to this file')
    return parser


def parse_cpu_benchmark_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The arguments of a :func:`cpu_benchmark_parser`, refused (a usage error) where they
    cannot make a benchmark."""
    from mmunirep.models.backbones.unireplknet import ARCH_SETTINGS

    args = parser.parse_args()
    if args.arch not in ARCH_SETTINGS:
        parser.error(f'--arch must be one of {sorted(ARCH_SETTINGS)}, got {args.arch!r}')
    if args.threads < 1 or args.repeats < 1 or args.warmup < 0 or min(args.sizes) < 32:
        parser.error('--threads and --repeats must be >= 1, --warmup >= 0, --sizes >= 32')
    return args


def cpu_host(threads: int) -> str:
    """The start of a CPU benchmark's header: the CPU, its logical CPUs, torch, the threads."""
    cpu = platform.processor() or platform.machine()
    return (
        f'host: {cpu} ({os.cpu_count()} logical CPUs), torch {torch.__version__}, {threads} threads'
    )


_ORT_POOL_THREADS = []


def shared_thread_pool_options(threads: int):
    """onnxruntime session options under which every session of the process runs on one global
    pool of ``threads`` intra-op threads (created by the first call; a later call must ask for
    the same number). Once the pool exists, onnxruntime refuses any session of the process that
    asks for threads of its own.

    Why: with a pool per session (onnxruntime's default), the threads of the sessions not being
    timed spin on after their last run and take cores from the session being timed, so that
    sessions timed in turn slow each other down, unevenly.
    """
    import onnxruntime as ort

    if not _ORT_POOL_THREADS:
        ort.set_global_thread_pool_sizes(threads, 1)
        _ORT_POOL_THREADS.append(threads)
    elif _ORT_POOL_THREADS[0] != threads:
        raise ValueError(
            f'the global onnxruntime pool has {_ORT_POOL_THREADS[0]} threads, got a request for '
            f'{threads}'
        )
    options = ort.SessionOptions()
    options.use_per_session_threads = False
    return options


class Report:
    """Lines of a table, printed as they come; the file at ``path`` (if any) is rewritten whole
    with every line, so that a run cut short leaves the rows it finished and never a torn row."""

    def __init__(self, path=None):
        self.path = path
        self.lines = []
        if path:
            write_text(path, '')

    def add(self, *lines):
        for line in lines:
            print(line, flush=True)  # a benchmark script's output is its table
        self.lines += lines
        if self.path:
            write_text(self.path, '\n'.join(self.lines) + '\n')


def time_each_repeat(runs: dict, repeats: int, warmup: int, settle: float = 0.0) -> dict:
    """Seconds of each ``run()`` in every repeat, the runs called in turn ``warmup + repeats``
    times (the warm-up calls are not kept). Each repeat starts one run later than the one before,
    so that no run always follows the same other run (whose traffic leaves the caches to it).

    ``settle``: seconds to wait before each call, for runs on different thread pools (PyTorch's
    and onnxruntime's): a pool's threads spin on after its run and take cores from the next
    run's pool until they go to sleep."""
    names = list(runs)
    times = {name: [] for name in names}
    for i in range(warmup + repeats):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            time.sleep(settle)
            start = time.perf_counter()
            runs[name]()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def time_interleaved(runs: dict, repeats: int, warmup: int) -> dict:
    """Median seconds of each ``run()``, the runs called in turn ``warmup + repeats`` times."""
    times = time_each_repeat(runs, repeats, warmup)
    return {name: statistics.median(t) for name, t in times.items()}


def paired_ratio(numerator: list, denominator: list) -> float:
    """Median over repeats of the ratio of two runs timed back to back in each repeat: on a
    machine whose speed drifts between repeats, this ratio moves far less than the ratio of the
    two medians."""
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(
            f'paired_ratio needs two equal, non-empty lists of times, got {len(numerator)} '
            f'and {len(denominator)}'
        )
    return statistics.median(a / b for a, b in zip(numerator, denominator))


ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def deployment_tool(name: str):
    """tools/deployment/<name>.py as a module (the tools are scripts, not a package)."""
    path = osp.join(ROOT, 'tools', 'deployment', f'{name}.py')
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_config_case(text: str, default_size: str, trained: Optional[dict] = None) -> dict:
    """``CONFIG[:CHECKPOINT][@HxW]`` -> config, checkpoint and (H, W). Without a checkpoint, the
    one ``trained`` names for the config where that file exists (a quick start's), else None."""
    text, _, size = text.partition('@')
    config, _, checkpoint = text.partition(':')
    try:
        h, w = (int(v) for v in (size or default_size).split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'the size after @ is HxW, e.g. {default_size}, got {size!r}'
        ) from None
    if not osp.isfile(config) or (checkpoint and not osp.isfile(checkpoint)):
        raise argparse.ArgumentTypeError(f'no such config or checkpoint: {text}')
    default = (trained or {}).get(config)
    if not checkpoint and default and osp.isfile(default):
        checkpoint = default
    return dict(config=config, checkpoint=checkpoint or None, size=(h, w))


def case_model(export, case: dict):
    """A case's model as ``export_onnx.py`` (the module ``export``) exports it, re-parameterized:
    with the case's checkpoint, or random weights drawn from seed 0, which :func:`export_case`
    draws again so that the two sides hold the same weights."""
    from mmunirep.utils import prepare_cfg

    torch.manual_seed(0)
    return export.load_deploy_model(prepare_cfg(case['config']), case['checkpoint'])[0]


def export_case(export, case: dict, part: str, path: str, shape) -> None:
    """``export_onnx.py --part part`` on a case, traced at ``shape`` (H, W), to ``path``: the
    weights of :func:`case_model`."""
    checkpoint = ['--checkpoint', case['checkpoint']] if case['checkpoint'] else []
    torch.manual_seed(0)
    export.main(
        [case['config'], *checkpoint, '--part', part, '--out', path, '--shape',
         *(str(v) for v in shape)]
    )  # fmt: skip


def onnx_against_pytorch_parser(doc: str, parse_case) -> argparse.ArgumentParser:
    """The options the benchmarks of an exported model against PyTorch share: the cases
    (``parse_case`` parses each), --threads, --repeats, --settle and --out. Parse with
    :func:`parse_onnx_against_pytorch_args`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument('cases', nargs='*', type=parse_case)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument(
        '--settle',
        type=float,
        default=0.2,
        help="seconds to wait before each timed call, longer than either side's threads spin on",
    )
    parser.add_argument('--out', help='also write the table to this file')
    return parser


def parse_onnx_against_pytorch_args(parser, defaults, parse_case) -> argparse.Namespace:
    """The arguments of an :func:`onnx_against_pytorch_parser`, the ``defaults`` cases where
    none is given; refused (a usage error) where they cannot make a benchmark."""
    args = parser.parse_args()
    args.cases = args.cases or [parse_case(c) for c in defaults]
    if args.threads < 1 or args.repeats < 1 or args.settle < 0:
        parser.error('--threads and --repeats must be at least 1, --settle at least 0')
    return args


def time_onnx_against_pytorch(run_torch, run_onnx, args) -> dict:
    """ms per call of each side (``torch``, ``onnx``; median of --repeats after a warm-up, in
    turn, each call after a pause of --settle seconds) and the median of the repeats' PyTorch /
    onnxruntime ``ratio``."""
    times = time_each_repeat(dict(torch=run_torch, onnx=run_onnx), args.repeats, 1, args.settle)
    return dict(
        ratio=paired_ratio(times['torch'], times['onnx']),
        **{k: statistics.median(v) * 1e3 for k, v in times.items()},
    )


def report_onnx_against_pytorch(
    args, check: str, time_case, check_cell, header_note: str = ''
) -> None:
    """Time each of ``args.cases`` with ``time_case(case, folder)`` (a scratch folder for the
    exported file; returns :func:`time_onnx_against_pytorch`'s dict and what the check found)
    and write the table: config, weights, image, the ``check`` column (``check_cell(result)``),
    both sides' ms and their ratio; ``header_note`` ends the table's first line."""
    import onnxruntime

    report = Report(args.out)
    report.add(
        f'{cpu_host(args.threads)}, onnxruntime {onnxruntime.__version__}, batch 1, fp32; '
        f'median of {args.repeats}, the two timed in turn, each call {args.settle} s after the '
        f"last; ms per image; the ratio is the median of the repeats' ratios{header_note}",
        '',
        f'| config | weights | image | {check} | PyTorch eager | onnxruntime '
        '| PyTorch / onnxruntime |',
        '|---|---|---|---|---|---|---|',
    )
    with tempfile.TemporaryDirectory() as folder:
        for case in args.cases:
            r = time_case(case, folder)
            h, w = case['size']
            report.add(
                f'| {case["config"]} | {"trained" if case["checkpoint"] else "random"} '
                f'| {h}x{w} | {check_cell(r)} | {r["torch"]:.0f} | {r["onnx"]:.0f} '
                f'| {r["ratio"]:.2f} |'
            )
