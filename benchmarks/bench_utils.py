"""What the benchmark scripts share: the CPU benchmarks' options, a table written as it grows, and
interleaved timing."""

import argparse
import os
import platform
import statistics
import time

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
