"""What both GPU benchmark scripts need to finish inside a device call's time limit.

A lent GPU machine runs one command for at most 600 s, and `gpu_session.sh` gives each step a part
of that. These scripts therefore write their table as it grows, with each row flushed, so a run
that is cut short keeps the rows it finished. They also stop starting new work once the next item
would overrun their time budget, and they say in the table what was left out. Neither torch nor
mmengine offers this: their benchmark helpers time one callable, they do not budget a whole
table. The shape parser and the kernel variants' switches serve dwconv_benchmark.py and
profile_kernels.py.
"""
import contextlib
import os
import time

BUDGET_ENV = 'MMUNIREP_BENCH_TIME_BUDGET_S'
STOPPED_EXIT_CODE = 3  # the table is valid but partial: the time budget ran out


def add_budget_argument(parser):
    default = os.environ.get(BUDGET_ENV)
    parser.add_argument(
        '--time-budget', type=float, default=float(default) if default else None, metavar='S',
        help='stop starting new rows once the next would end after S seconds (default: '
        f'${BUDGET_ENV}, which gpu_session.sh sets from its step limit, else no limit)')


class Report:
    """Lines of a table: printed and appended to ``path`` (if any) at once, flushed."""

    def __init__(self, path=None):
        self.path = path
        if path:
            open(path, 'w').close()

    def add(self, *lines):
        for line in lines:
            print(line, flush=True)  # a benchmark script's output is its table
            if self.path:
                with open(self.path, 'a') as f:
                    f.write(line + '\n')


class TimeBudget:
    """Seconds since creation against a budget (None: unlimited)."""

    def __init__(self, seconds):
        if seconds is not None and seconds <= 0:
            raise ValueError(f'--time-budget must be positive seconds, got {seconds}')
        self.seconds = seconds
        self.start = time.monotonic()

    def elapsed(self):
        return time.monotonic() - self.start

    def allows(self, estimate_s):
        """Whether work expected to take ``estimate_s`` seconds still ends inside the budget."""
        return self.seconds is None or self.elapsed() + estimate_s <= self.seconds

    def stop_if_short(self, report, estimate_s, left_out):
        """Before an item expected to take ``estimate_s`` seconds: if it would overrun, say in
        ``report`` what is left out and exit with STOPPED_EXIT_CODE."""
        if not self.allows(estimate_s):
            report.add(f'stopped after {self.elapsed():.0f} s of the {self.seconds:g} s time '
                       f'budget; not run: {", ".join(left_out)}')
            raise SystemExit(STOPPED_EXIT_CODE)


def parse_shapes(values):
    """The (N, C, H, W, K) tuples of a --shapes argument ('2,192,100,168,13' ...); SystemExit with
    what was expected and what was given otherwise."""
    try:
        shapes = [tuple(int(v) for v in s.split(',')) for s in values]
    except ValueError:
        raise SystemExit(f'--shapes expects N,C,H,W,K with integers, got {values}')
    if any(len(s) != 5 for s in shapes):
        raise SystemExit(f'--shapes expects five integers N,C,H,W,K each, got {values}')
    return shapes


# MMUNIREP_DWCONV_FWD_TILE's forward tiles (rows x columns x planes of a forward block)
FWD_TILES = ('16x32x2', '32x32x2')
# the pipelined forward (MMUNIREP_DWCONV_FWD_PIPELINE=1, fp32) on the map's default tile and on
# the other tiles: name -> its MMUNIREP_DWCONV_FWD_TILE (the names differ from dwconv_benchmark's
# 'pipelined', the pipelined weight gradient)
FWD_PIPELINED = {'default pipelined': '', '16x32x2 pipelined': '16x32x2',
                 '32x32x2 pipelined': '32x32x2'}


def fwd_pipelined_env(name):
    """The environment that runs the pipelined forward ``name`` (FWD_PIPELINED)."""
    return {'MMUNIREP_DWCONV_FWD_PIPELINE': '1', 'MMUNIREP_DWCONV_FWD_TILE': FWD_PIPELINED[name]}


def fwd_pipelined_apply(name, h, w, k, dtype):
    """Whether the pipelined forward ``name`` (FWD_PIPELINED) runs another kernel than the
    default for an H x W map at K in ``dtype``: fp32 at K = 7 and 13, on the default tile of any
    map, on the other tiles where they apply."""
    from mmunirep.ops.autotune import pipelined_forward_applies
    return pipelined_forward_applies(k, dtype) and (not FWD_PIPELINED[name] or
                                                    fwd_tiles_apply(h, w, k))


def fwd_tiles_apply(h, w, k):
    """Whether MMUNIREP_DWCONV_FWD_TILE (or MMUNIREP_DWCONV_FWD_TC, or in fp32
    MMUNIREP_DWCONV_FWD_PIPELINE) changes the forward kernel of an H x W map at K: the
    autotuner's rule (K = 7 and 13, maps larger than 16x16)."""
    from mmunirep.ops.autotune import forward_variants_apply
    return forward_variants_apply(h, w, k)


@contextlib.contextmanager
def environ(variables):
    """Environment variables set (the op reads its switches at every launch) while the block
    runs; after it, each has its value from before again (or is removed)."""
    before = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def autotune_applies(k):
    """Whether MMUNIREP_DWCONV_AUTOTUNE=1 has variants to choose among at K: its weight
    gradient's parts counts, wherever K is compiled (7, 13, 31)."""
    from mmunirep.ops.autotune import COMPILED_KERNELS
    return k in COMPILED_KERNELS


def pipelined_applies(h, w, k):
    """Whether MMUNIREP_DWCONV_PIPELINE=1 (or MMUNIREP_DWCONV_WGRAD_TC=1) changes the
    weight-gradient kernel of an H x W map at K: the autotuner's rule (compile-time K and a map
    too large for a whole-map tile)."""
    from mmunirep.ops.autotune import weight_grad_variants_apply
    return weight_grad_variants_apply(h, w, k)
