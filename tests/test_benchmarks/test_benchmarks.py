"""The benchmark scripts run end to end (the GPU ones on the CPU, as smoke runs, so that a script
error is found before GPU time is spent; their figures here mean nothing: the op falls back)."""

import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from mmunirep.ops import depthwise_conv as dw_module

from helpers import ROOT, recording_backend, tiny_dino_config

pytestmark = pytest.mark.slow  # runs the benchmark scripts


def run(*args, check=True):
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f'{args} failed:\n{proc.stdout}\n{proc.stderr}')
    return proc


def table_rows(path):
    with open(path) as f:
        return [line.strip('|\n').split('|') for line in f if re.match(r'\| [^-]', line)][1:]


def half_ulp(text: str) -> float:
    """Half a unit of the last printed digit of a number as the report prints it."""
    text = text.strip().rstrip('x')
    decimals = len(text.split('.')[1]) if '.' in text else 0
    return 0.5 * 10**-decimals


def assert_ratio_of_rounded(ratio: str, num: str, den: str) -> None:
    """The report prints times and their ratio rounded, the ratio computed from the unrounded
    times: it must lie in the interval that the printed times allow (each off by at most half its
    last digit), widened by half the ratio's own last digit. A fixed relative tolerance would be
    too loose for long times and could fail on short ones (0.012 ms is 4% off at worst)."""
    r, a, b = float(ratio.strip().rstrip('x')), float(num), float(den)
    da, db, dr = half_ulp(num), half_ulp(den), half_ulp(ratio)
    assert b - db > 0, (num, den)
    lo, hi = max(a - da, 0) / (b + db) - dr, (a + da) / (b - db) + dr
    assert lo <= r <= hi, (ratio, num, den, lo, hi)


def test_assert_ratio_of_rounded_holds_the_interval():
    assert_ratio_of_rounded('1.50x', '0.015', '0.010')
    assert_ratio_of_rounded('1.60x', '0.015', '0.010')  # 0.0155 / 0.0095 = 1.63 is possible
    for wrong in ('1.30x', '1.70x'):
        with pytest.raises(AssertionError):
            assert_ratio_of_rounded(wrong, '0.015', '0.010')
    with pytest.raises(AssertionError):
        assert_ratio_of_rounded('2.00x', '10.000', '4.000')  # 2.50: long times, narrow interval


def test_paired_ratio_is_the_median_of_each_repeats_ratio():
    """Repeats whose ratios are 2, 3 and 1.5 give 2 (the ratio of the medians, 3 / 2, would
    be 1.5); unequal or empty lists are refused."""
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    from bench_utils import paired_ratio

    assert paired_ratio([2.0, 9.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(2.0, rel=1e-12)
    for bad in (([1.0], [1.0, 2.0]), ([], [])):
        with pytest.raises(ValueError, match='equal, non-empty'):
            paired_ratio(*bad)


def test_each_repeat_starts_one_run_later():
    """Every run is timed once per repeat (warm-ups not kept), and no run always follows the
    same other one."""
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    from bench_utils import time_each_repeat

    calls = []
    runs = {name: (lambda n=name: calls.append(n)) for name in 'abc'}
    times = time_each_repeat(runs, repeats=4, warmup=1)
    assert {n: len(t) for n, t in times.items()} == {'a': 4, 'b': 4, 'c': 4}
    assert all(t >= 0 for ts in times.values() for t in ts)
    assert ''.join(calls) == 'abcbcacababcbca'


def test_time_each_repeat_waits_before_each_call_when_asked_to():
    """With ``settle``, every call starts at least that long after the previous one ended (the
    pause is not part of the time kept)."""
    import time

    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    from bench_utils import time_each_repeat

    spans = []

    def run():
        start = time.perf_counter()
        time.sleep(0.002)
        spans.append((start, time.perf_counter()))

    times = time_each_repeat(dict(a=run, b=run), repeats=2, warmup=1, settle=0.05)
    gaps = [nxt[0] - prev[1] for prev, nxt in zip(spans, spans[1:])]
    assert len(gaps) == 5 and min(gaps) >= 0.05, gaps
    assert all(0.002 <= t < 0.05 for ts in times.values() for t in ts), times


SHARED_POOL_SCRIPT = """
import sys
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper
import bench_utils

node = helper.make_node('Relu', ['x'], ['y'])
graph = helper.make_graph(
    [node], 'relu', [helper.make_tensor_value_info('x', TensorProto.FLOAT, [4])],
    [helper.make_tensor_value_info('y', TensorProto.FLOAT, [4])])
model = helper.make_model(graph).SerializeToString()
x = np.array([-1.5, 2.0, -0.5, 3.0], np.float32)
for _ in range(2):
    options = bench_utils.shared_thread_pool_options(2)
    assert options.use_per_session_threads is False
    session = ort.InferenceSession(model, options, providers=['CPUExecutionProvider'])
    assert session.run(None, {'x': x})[0].tolist() == [0.0, 2.0, 0.0, 3.0]
bench_utils.shared_thread_pool_options(3)
"""


def test_onnxruntime_sessions_share_one_thread_pool():
    """Sessions made with the shared options run on the process's global pool (no pool of their
    own) and give the model's result; a later request for another number of threads is refused.
    In a process of its own: onnxruntime's global pool is made once per process."""
    result = subprocess.run(
        [sys.executable, '-c', SHARED_POOL_SCRIPT],
        cwd=os.path.join(ROOT, 'benchmarks'), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        'ValueError: the global onnxruntime pool has 2 threads, got a request for 3'
    )


@pytest.mark.parametrize(
    'argv, message',
    [
        (['--arch', 'zz'], "--arch must be one of ['a', 'b', 'f', 'l', 'n', 'p', 's', 't', 'xl'], "
         "got 'zz'"),
        (['--threads', '0'], '--threads and --repeats must be >= 1'),
        (['--sizes', '224', '16'], '--sizes >= 32'),
    ],
)  # fmt: skip
def test_cpu_benchmark_args_refuse_what_cannot_run(monkeypatch, capsys, argv, message):
    """The CPU benchmarks' shared options: a usage error that names the option, before any model
    is built; the defaults otherwise."""
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    from bench_utils import cpu_benchmark_parser, parse_cpu_benchmark_args

    monkeypatch.setattr(sys, 'argv', ['bench.py', *argv])
    with pytest.raises(SystemExit) as exit_info:
        parse_cpu_benchmark_args(cpu_benchmark_parser('bench', repeats=5, warmup=1))
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    monkeypatch.setattr(sys, 'argv', ['bench.py'])
    args = parse_cpu_benchmark_args(cpu_benchmark_parser('bench', repeats=5, warmup=1))
    assert (args.arch, args.sizes, args.threads, args.repeats, args.warmup, args.out) == (
        's',
        [224, 512],
        2,
        5,
        1,
        None,
    )


def test_train_step_benchmark_smoke(tmp_path):
    out = tmp_path / 'train_step.md'
    run(
        'benchmarks/train_step_benchmark.py',
        '--device',
        'cpu',
        '--arch',
        'a',
        '--size',
        '64',
        '96',
        '--repeats',
        '1',
        '--warmup',
        '0',
        '--precision',
        'fp32',
        'bf16',
        '--out',
        str(out),
    )
    rows = table_rows(out)
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [
        ('training step', 'fp32'),
        ('inference (deploy)', 'fp32'),
        ('training step', 'bf16'),
        ('inference (deploy)', 'bf16'),
    ]
    for r in rows:
        assert float(r[2]) > 0 and float(r[3]) > 0
        assert_ratio_of_rounded(r[4], r[2], r[3])
    assert 'one fp32 step agrees' in out.read_text()


def test_train_step_benchmark_compile_times_the_compiled_models(monkeypatch, tmp_path):
    """--compile: both models' forward passes go through the compiler (a recording backend
    here: Inductor on 2 CPU cores would take minutes), in training and in the deploy structure,
    and the report says so."""
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    import train_step_benchmark as tsb

    backend, graphs = recording_backend()
    torch._dynamo.reset()
    out = tmp_path / 'train_step.md'
    monkeypatch.setattr(
        sys,
        'argv',
        [
            'train_step_benchmark.py',
            '--device',
            'cpu',
            '--arch',
            'a',
            '--size',
            '64',
            '64',
            '--repeats',
            '1',
            '--warmup',
            '1',
            '--precision',
            'fp32',
            '--compile',
            '--compile-backend',
            backend,
            '--out',
            str(out),
        ],
    )
    tsb.main()
    text = out.read_text()
    assert f'both backbones with compile=dict(backend={backend!r})' in text
    assert [(r[0].strip(), r[1].strip()) for r in table_rows(out)] == [
        ('training step', 'fp32'),
        ('inference (deploy)', 'fp32'),
    ]
    # four models compiled (PyTorch's and the op's, training and deploy structure): each gave the
    # backend at least one graph with convolutions
    with_conv = [
        g
        for g in graphs
        if any(n.target == torch.ops.aten.convolution.default for n in g.graph.nodes)
    ]
    assert len(with_conv) >= 4, [len(g.graph.nodes) for g in graphs]


def test_train_step_benchmark_compile_argument_errors(monkeypatch, capsys):
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    import train_step_benchmark as tsb

    for argv, message in (
        (['--compile', '--warmup', '0'], 'at least one warm-up step'),
        (['--compile-backend', 'eager'], '--compile-backend needs --compile'),
    ):
        monkeypatch.setattr(sys, 'argv', ['train_step_benchmark.py', '--device', 'cpu', *argv])
        with pytest.raises(SystemExit) as exit_info:
            tsb.parse_args()
        stderr = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in stderr, stderr


@pytest.mark.parametrize('perturb', [0.0, 1e-3])
def test_train_step_check_refuses_a_wrong_op_model(monkeypatch, perturb):
    """The agreement check passes identical models and stops on a large-kernel weight of the op's
    model that is off by 1e-3 of its scale (a kernel that is slightly wrong)."""
    import argparse

    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    import train_step_benchmark as tsb

    build = tsb.build_pair

    def build_wrong(args, deploy=False):
        ref, op = build(args, deploy)
        w = dict(op.named_parameters())['stages.1.0.dwconv.lk_origin.weight']
        with torch.no_grad():
            w.add_(torch.randn_like(w) * w.abs().max() * perturb)
        return ref, op

    monkeypatch.setattr(tsb, 'build_pair', build_wrong)
    args = argparse.Namespace(arch='a', drop_path=0.5, no_cp=False, device='cpu')
    g = torch.Generator().manual_seed(1)
    batch = torch.randn(1, 3, 64, 64, generator=g)
    projections = [
        torch.randn(1, c, 64 // s, 64 // s, generator=g)
        for c, s in ((40, 4), (80, 8), (160, 16), (320, 32))
    ]
    if perturb == 0:
        name, e_ours, e_pytorch = tsb.check_one_step(args, batch, projections)
        assert e_ours <= 4 * e_pytorch + 1e-5
    else:
        with pytest.raises(SystemExit, match='further from float64 than PyTorch'):
            tsb.check_one_step(args, batch, projections)


@pytest.mark.skipif(
    dw_module._ext is None, reason='extension not built (bash scripts/build_ops.sh)'
)
def test_dwconv_benchmark_smoke(tmp_path):
    out = tmp_path / 'dwconv.md'
    run(
        'benchmarks/dwconv_benchmark.py',
        '--device',
        'cpu',
        '--shapes',
        '2,3,20,37,7',
        '--dtypes',
        'fp32',
        'fp16',
        '--repeats',
        '1',
        '--warmup',
        '0',
        '--out',
        str(out),
    )
    rows = table_rows(out)
    assert [(r[1].strip(), r[2].strip()) for r in rows] == [
        (d, p) for d in ('fp32', 'fp16') for p in ('fwd', 'dgrad', 'wgrad', 'fwd+bwd')
    ]
    # the share of taps inside the map, counted here by convolving ones with ones
    ones = torch.ones(1, 1, 20, 37, dtype=torch.float64)
    in_map = F.conv2d(ones, torch.ones(1, 1, 7, 7, dtype=torch.float64), padding=3).sum().item()
    for r in rows:
        ours, nchw, cl = r[3:6]
        assert_ratio_of_rounded(r[6], min(nchw, cl, key=float), ours)
        assert float(r[8]) > 0  # K = 7 has compile-time kernels: the run-time-K column is there
        assert float(r[9]) == pytest.approx(in_map / (20 * 37 * 49), abs=0.005)
        assert float(r[9]) < 1


class ScaleGrad(torch.autograd.Function):
    """The identity, whose gradient comes back 1e-3 too large."""

    @staticmethod
    def forward(ctx, w):
        return w.clone()

    @staticmethod
    def backward(ctx, g):
        return g * 1.001


def dwconv_main_exit(monkeypatch, op, *argv):
    """dwconv_benchmark.main() run here with ``op`` as mmunirep's depthwise_conv2d: its exit
    status."""
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    import dwconv_benchmark

    import mmunirep.ops

    monkeypatch.setattr(mmunirep.ops, 'depthwise_conv2d', op)
    monkeypatch.setattr(sys, 'argv', ['dwconv_benchmark.py', *argv])
    # main() sets these two process-wide: restored after it
    flags = torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32
    try:
        with pytest.raises(SystemExit) as exit_info:
            dwconv_benchmark.main()
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32 = flags
    return exit_info.value.code


def test_op_overhead_benchmark(tmp_path):
    """benchmarks/op_overhead_benchmark.py times both ways into the kernels on the CPU (stub
    kernels) and writes a row per pass with each way's time and their ratio; a bad count is
    refused."""
    out = tmp_path / 'overhead.md'
    run('benchmarks/op_overhead_benchmark.py', '--calls', '20', '--repeats', '3', '--out', str(out))
    rows = table_rows(out)
    assert [r[0].strip() for r in rows] == ['forward', 'forward + backward']
    for _, eager, operator, ratio in rows:
        assert float(eager) > 0 and float(operator) > 0
        assert_ratio_of_rounded(ratio, operator, eager)
    proc = run('benchmarks/op_overhead_benchmark.py', '--calls', '0', check=False)
    assert proc.returncode != 0 and 'must be positive' in proc.stderr


def test_dwconv_benchmark_rejects_bad_shapes(monkeypatch):
    message = dwconv_main_exit(
        monkeypatch, dw_module.depthwise_conv2d, '--device', 'cpu', '--shapes', '2,3,20'
    )
    # SystemExit with the message (exit status 1), before the device and the extension are looked at
    assert isinstance(message, str) and 'five integers N,C,H,W,K' in message, message


@pytest.mark.skipif(
    dw_module._ext is None, reason='extension not built (bash scripts/build_ops.sh)'
)
def test_dwconv_benchmark_reports_a_wrong_shape_and_goes_on(tmp_path, monkeypatch):
    # an op whose weight gradient is off by 1e-3 for K = 13 only: that shape gets a WRONG row and
    # is not timed, the K = 7 shape is still timed, and the exit status is 4
    right = dw_module.depthwise_conv2d

    def wrong_for_13(x, w):
        return right(x, ScaleGrad.apply(w) if w.shape[-1] == 13 else w)

    out = tmp_path / 'dwconv.md'
    assert (
        dwconv_main_exit(
            monkeypatch,
            wrong_for_13,
            '--device',
            'cpu',
            '--shapes',
            '2,3,9,9,13',
            '2,3,20,37,7',
            '--dtypes',
            'fp32',
            '--repeats',
            '1',
            '--warmup',
            '0',
            '--out',
            str(out),
        )
        == 4
    )
    rows = table_rows(out)
    assert rows[0][:2] == [' (2, 3, 9, 9, 13) ', ' fp32 ']
    assert rows[0][2].startswith(' WRONG: weight gradient differs from fp64 F.conv2d by 1.00e-03')
    assert [r[2].strip() for r in rows[1:]] == ['fwd', 'dgrad', 'wgrad', 'fwd+bwd']
    assert all(r[0].strip() == '(2, 3, 20, 37, 7)' for r in rows[1:])


# -- benchmarks/model_zoo_complexity.py -----------------------------------------------------------
ZOO_RESULTS = os.path.join(ROOT, 'benchmarks', 'results', 'model_zoo_complexity.md')


def zoo_module():
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    import model_zoo_complexity

    return model_zoo_complexity


def test_model_zoo_complexity_smoke(tmp_path):
    """The script on the segmentation quick start at 64x64: its row holds the deploy model's
    parameter count without the auxiliary head, counted here independently."""
    from mmengine.config import Config

    from mmunirep.models import reparameterize_unireplknet
    from mmunirep.utils import build_model

    config = 'configs/segmentation/quickstart_unireplknet_a_shapes.py'
    out = tmp_path / 'zoo.md'
    proc = run(
        'benchmarks/model_zoo_complexity.py',
        '--configs',
        config,
        '--shape',
        '64',
        '64',
        '--out',
        str(out),
    )
    rows = table_rows(out)
    assert len(rows) == 1  # and stdout has the table too (among mmengine's log lines)
    assert all(line in proc.stdout.splitlines() for line in out.read_text().splitlines())
    cells = [c.strip() for c in rows[0]]
    model = reparameterize_unireplknet(build_model(Config.fromfile(config)))
    params = sum(
        p.numel() for n, p in model.named_parameters() if not n.startswith('auxiliary_head.')
    )
    assert cells[:2] == ['`quickstart_unireplknet_a_shapes.py`', '64 x 64']
    assert cells[3] == f'{params / 1e6:.2f}M' and cells[2] == cells[4] == ''  # not in the paper
    assert float(cells[6].rstrip('G')) > 0


def test_model_zoo_complexity_covers_exactly_the_zoo_configs(tmp_path):
    zoo = zoo_module()
    names = [os.path.basename(c) for c in zoo.paper_configs()]
    assert len(names) == 13 and set(names) == set(zoo.PAPER)
    assert {zoo.paper_shape(c) for c in names} == {(800, 1280), (512, 2048), (640, 2560)}
    new = [os.path.basename(c) for c in zoo.zoo_configs(new=True)]
    assert len(new) == 12 and set(new) == set(zoo.NEW) and not set(new) & set(zoo.PAPER)
    shapes = {n: zoo.zoo_shape(n) for n in new}
    assert {shapes[n] for n in new if 'mask_rcnn' in n or 'dino' in n} == {(800, 1280)}
    assert {shapes[n] for n in new if 'mask2former' in n} == {(640, 640)}
    assert {shapes[n] for n in new if 'cityscapes' in n} == {(1024, 2048)}
    for bad in ('quickstart_unireplknet_a_shapes.py', 'example_custom_dataset_upernet.py'):
        with pytest.raises(ValueError, match='no paper input shape'):
            zoo.paper_shape(f'configs/segmentation/{bad}')


def test_model_zoo_complexity_merge_keeps_the_other_rows(tmp_path, monkeypatch, capsys):
    """--merge replaces or adds the counted configs' rows and keeps the table's other rows and
    notes as they were (the paper's rows are not recounted when the new configs are)."""
    zoo = zoo_module()
    out = tmp_path / 'zoo.md'
    shutil.copy(ZOO_RESULTS, out)
    before = out.read_text()
    counted = []

    def fake_get_flops(config, shape, deploy):
        counted.append((os.path.basename(config), shape))
        return dict(params=12.345e6, flops=67.89e9, input_shape=shape)

    monkeypatch.setattr(zoo, 'get_flops', fake_get_flops)
    config = 'configs/detection/unireplknet_t_1k_mask_rcnn_1x.py'
    assert zoo.main(['--configs', config, '--merge', '--out', str(out)]) == 0
    assert counted == [('unireplknet_t_1k_mask_rcnn_1x.py', (800, 1280))]
    old_lines, new_lines = before.splitlines(), out.read_text().splitlines()
    changed = [line for line in new_lines if line not in old_lines]
    assert len(changed) == 2, changed  # the row, and a note saying what was merged
    assert changed[1] == (
        '| `unireplknet_t_1k_mask_rcnn_1x.py` | 800 x 1280 |  | 12.35M |  |  | 67.9G |  |'
    )
    assert changed[0].startswith('- ') and '--merge' in changed[0]
    kept = [line for line in old_lines if line.startswith('| `')]
    assert len([line for line in new_lines if line.startswith('| `')]) == len(kept)
    assert all(line in new_lines for line in kept if 'unireplknet_t_1k_mask_rcnn_1x' not in line)
    with pytest.raises(SystemExit) as info:
        zoo.main(['--configs', config, '--merge', '--out', str(tmp_path / 'absent.md')])
    assert info.value.code == 2
    assert '--merge needs an existing --out table' in capsys.readouterr().err


def bench_main(monkeypatch, script, *argv):
    """benchmarks/<script>.py's main() run here with ``argv``."""
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    module = __import__(script)
    monkeypatch.setattr(sys, 'argv', [f'{script}.py', *argv])
    return module.main()


def test_backbone_cpu_benchmark_smoke(tmp_path):
    """A row per size and runtime (eager, then onnxruntime on graphs exported for that size and
    with dynamic sizes): the models' times (ConvNeXt with UniRepLKNet's linear layers in
    eager only), the deploy / ConvNeXt ratios of those times, and the FLOPs of both (more for the
    larger size). In a process of its own: the script's onnxruntime sessions share the process's
    global thread pool, which every later session of that process would then have to use."""
    out = tmp_path / 'backbone.md'
    run(
        'benchmarks/backbone_cpu_benchmark.py', '--arch', 'a', '--convnext', 'convnext_tiny',
        '--sizes', '64', '128', '--repeats', '1', '--warmup', '0', '--threads', '1',
        '--out', str(out),
    )  # fmt: skip
    rows = [[c.strip() for c in r] for r in table_rows(out)]
    runtimes = [
        (size, runtime)
        for size in ('64x64', '128x128')
        for runtime in ('PyTorch eager', 'fixed size', 'dynamic batch, H, W')
    ]
    assert [(r[0], r[1].split(', ', 1)[-1]) for r in rows] == runtimes
    for r in rows:
        eager = r[1] == 'PyTorch eager'
        assert all(float(t) > 0 for t in r[2:5]), r
        assert_ratio_of_rounded(r[6], r[3], r[4])
        if eager:
            assert float(r[5]) > 0, r
            assert_ratio_of_rounded(r[7], r[3], r[5])
        else:  # the export of the fourth model is the third's graph
            assert (r[5], r[7]) == ('-', '-'), r
    small, large = (tuple(map(float, rows[i][8].split(' / '))) for i in (0, 3))
    assert all(0 <= a <= b and b > 0 for a, b in zip(small, large)), (small, large)


def test_backbone_cpu_benchmark_needs_a_linear_mlp_convnext(monkeypatch):
    with pytest.raises(SystemExit, match='MLPs are linear layers'):
        bench_main(
            monkeypatch, 'backbone_cpu_benchmark', '--arch', 'a', '--convnext', 'convnext_atto',
            '--sizes', '64', '--repeats', '1', '--no-onnx',
        )  # fmt: skip


def test_cpu_linear_benchmark_smoke(monkeypatch, tmp_path):
    """A row per block linear layer of each stage: both forms' times and their ratio."""
    out = tmp_path / 'linear.md'
    bench_main(
        monkeypatch, 'cpu_linear_benchmark', '--arch', 'a', '--sizes', '64', '--repeats', '1',
        '--warmup', '0', '--threads', '1', '--out', str(out),
    )  # fmt: skip
    rows = [[c.strip() for c in r] for r in table_rows(out)]
    assert [(r[1], r[2], r[3]) for r in rows] == [
        (str(stride), f'{side * side} x {c_in} -> {c_out}', then)
        for stride, side, c in ((4, 16, 40), (8, 8, 80), (16, 4, 160), (32, 2, 320))
        for c_in, c_out, then in ((c, 4 * c, 'GELU'), (4 * c, c, '-'))
    ]
    for r in rows:
        assert float(r[4]) > 0 and float(r[5]) > 0, r
        assert_ratio_of_rounded(r[6], r[5], r[4])


def test_cpu_depthwise_benchmark_smoke(tmp_path):
    """PyTorch: a row per stage map and memory layout, both kernels' times, their ratio, and the
    one that same_depthwise_conv2d picks (the padded kernel on channels-last maps only).
    onnxruntime: a row per stage map and kernel, both graphs' times, their ratio, and the one the
    export writes (padded apart from kernel 9 on). In a process of its own, as the backbone
    benchmark's (the global onnxruntime pool)."""
    out = tmp_path / 'dw.md'
    run(
        'benchmarks/cpu_depthwise_benchmark.py', '--arch', 'a', '--sizes', '64', '--repeats', '1',
        '--warmup', '0', '--threads', '1', '--out', str(out),
    )  # fmt: skip
    all_rows = [[c.strip() for c in r] for r in table_rows(out)]
    second_header = next(i for i, r in enumerate(all_rows) if r[0] == 'image')
    rows, onnx_rows = all_rows[:second_header], all_rows[second_header + 1 :]
    assert [(r[1], r[2]) for r in onnx_rows] == [
        (f'{c} x {s} x {s}', f'{k}x{k}')
        for c, s in ((80, 8), (160, 4), (320, 2))
        for k in (3, 7, 9, 11, 13)
    ]
    for r in onnx_rows:
        assert float(r[3]) > 0 and float(r[4]) > 0, r
        assert_ratio_of_rounded(r[5], r[3], r[4])
        assert r[6] == ('apart' if int(r[2].split('x')[0]) >= 9 else 'in the conv'), r
    assert [(r[1], r[2]) for r in rows] == [
        (f'{c} x {s} x {s}', memory)
        for c, s in ((80, 8), (160, 4), (320, 2))
        for memory in ('channels-last', 'NCHW')
    ]
    for r in rows:
        assert float(r[3]) > 0 and float(r[4]) > 0, r
        assert_ratio_of_rounded(r[5], r[3], r[4])
        assert r[6] == ('13x15' if r[2] == 'channels-last' else '13x13'), r


def test_onnx_detector_benchmark_smoke(monkeypatch, tmp_path, capsys):
    """The quick-start detector exported, then timed against PyTorch with the same number of
    detections on both sides (every one of max_per_img at score threshold 0)."""
    out = tmp_path / 'det.md'
    config = 'configs/detection/quickstart_unireplknet_a_shapes.py'
    monkeypatch.chdir(tmp_path)  # no work_dirs/ here: random weights
    bench_main(
        monkeypatch, 'onnx_detector_benchmark', os.path.join(ROOT, config) + '@64x96',
        '--repeats', '1', '--threads', '1', '--out', str(out),
    )  # fmt: skip
    (row,) = [[c.strip() for c in r] for r in table_rows(out)]
    assert row[1:4] == ['random', '64x96', '20'], row  # the quick start's max_per_img
    assert float(row[4]) > 0 and float(row[5]) > 0
    assert_ratio_of_rounded(row[6], row[4], row[5])
    assert 'score threshold 0.0' in out.read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        bench_main(monkeypatch, 'onnx_detector_benchmark', config + '@64by96')
    assert info.value.code == 2
    assert "the size after @ is HxW, e.g. 800x1333, got '64by96'" in capsys.readouterr().err


def test_onnx_segmentor_benchmark_smoke(monkeypatch, tmp_path, capsys):
    """The quick-start segmentor exported, checked to label the pixels as PyTorch does, then timed
    against PyTorch."""
    out = tmp_path / 'seg.md'
    config = 'configs/segmentation/quickstart_unireplknet_a_shapes.py'
    monkeypatch.chdir(tmp_path)  # no work_dirs/ here: random weights
    bench_main(
        monkeypatch, 'onnx_segmentor_benchmark', os.path.join(ROOT, config) + '@64x96',
        '--repeats', '1', '--threads', '1', '--out', str(out),
    )  # fmt: skip
    (row,) = [[c.strip() for c in r] for r in table_rows(out)]
    assert row[1:3] == ['random', '64x96'], row
    assert float(row[3].rstrip('%')) >= 99.0, row
    assert float(row[4]) > 0 and float(row[5]) > 0
    assert_ratio_of_rounded(row[6], row[4], row[5])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        bench_main(monkeypatch, 'onnx_segmentor_benchmark', config + '@64')
    assert info.value.code == 2
    assert "the size after @ is HxW, e.g. 512x512, got '64'" in capsys.readouterr().err


def test_detector_export_check_smoke(monkeypatch, tmp_path):
    """The check's row: every one of the top detections found on both sides, at the same rank,
    with scores within fp32 rounding."""
    out = tmp_path / 'check.md'
    bench_main(
        monkeypatch, 'detector_export_check',
        os.path.join(ROOT, 'configs/detection/quickstart_unireplknet_a_shapes.py'),
        '--size', '96', '120', '--top', '10', '--threads', '1', '--out', str(out),
    )  # fmt: skip
    (row,) = [[c.strip() for c in r] for r in table_rows(out)]
    assert row[2] == '10 / 10' and row[3:6] == ['100.0%', '100.0%', '100.0%'], row
    assert float(row[6]) <= 1e-4, row


def test_a_dino_in_the_export_check_and_the_onnx_benchmark(monkeypatch, tmp_path, capsys):
    """A DINO through both scripts: its max_per_img detections (test_cfg, not test_cfg.rcnn)
    found on both sides, and timed with as many on each side; a score threshold, which DINO's
    predict does not apply, is refused."""
    config = tiny_dino_config(tmp_path, str(tmp_path))
    out = tmp_path / 'check.md'
    bench_main(
        monkeypatch, 'detector_export_check', config,
        '--size', '160', '200', '--top', '30', '--threads', '1', '--out', str(out),
    )  # fmt: skip
    (row,) = [[c.strip() for c in r] for r in table_rows(out)]
    assert row[2] == '30 / 30' and row[3:5] == ['100.0%', '100.0%'], row
    assert float(row[6]) <= 1e-4, row
    out = tmp_path / 'bench.md'
    monkeypatch.chdir(tmp_path)
    bench_main(
        monkeypatch, 'onnx_detector_benchmark', config + '@160x200',
        '--repeats', '1', '--threads', '1', '--out', str(out),
    )  # fmt: skip
    (row,) = [[c.strip() for c in r] for r in table_rows(out)]
    assert row[1:4] == ['random', '160x200', '50'], row  # the config's max_per_img
    assert_ratio_of_rounded(row[6], row[4], row[5])
    capsys.readouterr()
    with pytest.raises(SystemExit, match='keeps its max_per_img detections whatever their score'):
        bench_main(monkeypatch, 'onnx_detector_benchmark', config + '@160x200', '--score-thr', '.3')
