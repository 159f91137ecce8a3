"""Reliability: exact resume after SIGKILL, two training processes, clear errors on bad input,
tiny inputs. Quick-start-sized segmentation model on generated data, CPU."""

import math
import os
import os.path as osp
import pickle
import re
import signal
import subprocess
import sys
from contextlib import contextmanager

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper

import mmunirep  # noqa: F401
from mmunirep.models import UniRepLKNet
from mmunirep.utils import build_model, leave_process_group

from helpers import ROOT, load_tool, tiny_det_config, tiny_seg_config

KILLER = '''
"""Test helper: SIGKILL this training process mid-run, after leaving a torn checkpoint file."""
import os
import signal

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class KillAtIterHook(Hook):

    def __init__(self, at_iter):
        self.at_iter = at_iter

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter == self.at_iter:
            good = os.path.join(runner.work_dir, f'iter_{self.at_iter}.pth')
            with open(good, 'rb') as f:
                head = f.read(1000)
            # as if the process had died while writing the next checkpoint
            with open(os.path.join(runner.work_dir, f'iter_{self.at_iter + 1}.pth'), 'wb') as f:
                f.write(head)
            os.kill(os.getpid(), signal.SIGKILL)
'''


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('rel_data') / 'shapes')
    load_tool('make_shapes_ade20k').generate(root, num_train=8, num_val=2, size=64, seed=5)
    return root


def run_train(config, work_dir, *extra, env=None, check=True):
    cmd = [
        sys.executable,
        osp.join(ROOT, 'tools', 'train.py'),
        config,
        '--work-dir',
        str(work_dir),
        *extra,
    ]
    full_env = dict(os.environ, OMP_NUM_THREADS='1', **(env or {}))
    proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_sigkill_then_resume_ends_with_the_same_weights(data, tmp_path):
    (tmp_path / 'killer.py').write_text(KILLER)
    common = dict(
        max_iters=6,
        train_cfg=dict(max_iters=6, val_interval=6),
        default_hooks=dict(checkpoint=dict(interval=2, max_keep_ckpts=-1)),
        model=dict(backbone=dict(drop_path_rate=0.2)),  # the resumed run must redraw the same masks
        randomness=dict(seed=123),
        custom_hooks=[dict(type='ReproducibleResumeHook')],
    )
    config = tiny_seg_config(tmp_path, data, **common)
    straight_log = run_train(config, tmp_path / 'straight')

    killed_dir = tmp_path / 'killed'
    killer_cfg = tmp_path / 'killer_cfg.py'
    killer_cfg.write_text(f"""_base_ = [{config!r}]
custom_imports = dict(imports=['mmunirep', 'killer'], allow_failed_imports=False)
custom_hooks = [dict(type='ReproducibleResumeHook'), dict(type='KillAtIterHook', at_iter=4)]
""")
    proc = run_train(str(killer_cfg), killed_dir, env={'PYTHONPATH': str(tmp_path)}, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (killed_dir / 'iter_5.pth').exists() and not (killed_dir / 'iter_6.pth').exists()
    assert (killed_dir / 'last_checkpoint').read_text().strip().endswith('iter_4.pth')

    proc = run_train(config, killed_dir, '--resume')
    resumed_log = proc.stdout + proc.stderr
    assert 'resumed' in resumed_log.lower() and 'iter_4.pth' in resumed_log
    straight = torch.load(
        tmp_path / 'straight' / 'iter_6.pth', map_location='cpu', weights_only=False
    )
    resumed = torch.load(killed_dir / 'iter_6.pth', map_location='cpu', weights_only=False)
    assert resumed['meta']['iter'] == straight['meta']['iter'] == 6
    for k, v in straight['state_dict'].items():
        torch.testing.assert_close(resumed['state_dict'][k], v, rtol=1e-5, atol=1e-6, msg=k)
    # and the evaluation at the end gives the same mIoU
    a = re.findall(r'mIoU: ([0-9.]+)', straight_log.stdout + straight_log.stderr)
    b = re.findall(r'mIoU: ([0-9.]+)', resumed_log)
    assert a and b and float(a[-1]) == pytest.approx(float(b[-1]), abs=1e-6)


@pytest.mark.slow
def test_two_processes_train_and_test(data, tmp_path):
    """tools/dist_train.sh / dist_test.sh with 2 CPU processes (gloo; SyncBN becomes BN)."""
    config = tiny_seg_config(
        tmp_path,
        data,
        train_cfg=dict(max_iters=2, val_interval=2),
        default_hooks=dict(checkpoint=dict(interval=2)),
    )
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHON=sys.executable, PORT='29517')
    work = tmp_path / 'dist'
    proc = subprocess.run(
        ['bash', 'tools/dist_train.sh', config, '2', '--work-dir', str(work)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert 'of 2 joined the process group over gloo' in out and (work / 'iter_2.pth').exists()
    proc = subprocess.run(
        [
            'bash',
            'tools/dist_test.sh',
            config,
            str(work / 'iter_2.pth'),
            '2',
            '--work-dir',
            str(tmp_path / 'dist_test'),
            '--out',
            str(tmp_path / 'dist.pkl'),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    # each process evaluates one of the 2 images; the gathered result equals one process's on both
    dist_miou = float(re.findall(r'mIoU: ([0-9.]+)', out)[-1])
    single = load_tool('test').main(
        [config, str(work / 'iter_2.pth'), '--work-dir', str(tmp_path / 'single_test')]
    )
    assert dist_miou == pytest.approx(single['mIoU'], abs=0.01)
    # --out holds both images' predictions, which only the first process writes
    with open(tmp_path / 'dist.pkl', 'rb') as f:
        assert len(pickle.load(f)) == 2


def test_tools_leave_the_process_group_before_exit(data, tmp_path, monkeypatch):
    """tools/train.py and test.py destroy the process group after a run (their ``__main__`` then
    ends the process without the interpreter's finalization, where gloo's worker threads aborted
    the 2-process test above about once in five runs: SIGABRT after a successful run; see the
    test below). Here each tool's ``main`` runs in a 1-process gloo group."""
    import torch.distributed as dist

    from mmunirep.utils import config_utils

    monkeypatch.setattr(config_utils, '_left_a_process_group', False)
    leave_process_group()  # no group: nothing to do, and nothing to end
    config_utils.end_distributed_process()  # returns: this pytest process goes on
    assert not config_utils._left_a_process_group
    config = tiny_seg_config(
        tmp_path,
        data,
        train_cfg=dict(max_iters=1, val_interval=1),
        default_hooks=dict(checkpoint=dict(interval=1)),
    )
    work = tmp_path / 'work'
    for tool, argv in (
        ('train', [config, '--work-dir', str(work)]),
        ('test', [config, str(work / 'iter_1.pth'), '--work-dir', str(tmp_path / 'test')]),
    ):
        monkeypatch.setattr(config_utils, '_left_a_process_group', False)
        dist.init_process_group(
            'gloo', init_method=f'file://{tmp_path / tool}.store', rank=0, world_size=1
        )
        try:
            load_tool(tool).main(argv)
            assert not dist.is_initialized(), f'{tool}.py left the process group standing'
            assert config_utils._left_a_process_group, tool
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()


END_SCRIPT = """
import atexit, logging, sys, torch, torch.distributed as dist
from mmunirep.utils import end_distributed_process, leave_process_group
log = logging.getLogger('end_test')
log.addHandler(logging.FileHandler(sys.argv[1] + '.log', delay=True))
log.setLevel(logging.INFO)
atexit.register(lambda: open(sys.argv[1] + '.atexit', 'w').write('ran'))
dist.init_process_group('gloo', init_method='tcp://127.0.0.1:29532', rank=0, world_size=1)
ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 4))
ddp(torch.randn(2, 4)).sum().backward()
metrics = [{'mIoU': 1.0}]
dist.broadcast_object_list(metrics)
log.info('metrics %s', metrics)
print('stdout before the end', end='')  # no newline: only a flush writes it
leave_process_group()
end_distributed_process()
sys.exit(3)  # not reached
"""


@pytest.mark.slow
def test_end_distributed_process_runs_atexit_and_flushes_then_exits_0(tmp_path):
    stem = str(tmp_path / 'end')
    script = tmp_path / 'end.py'
    script.write_text(END_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONUNBUFFERED'}  # buffered stdout
    proc = subprocess.run(
        [sys.executable, str(script), stem],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(env, PYTHONPATH=ROOT),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.endswith('stdout before the end')
    with open(stem + '.atexit') as f:
        assert f.read() == 'ran'
    with open(stem + '.log') as f:
        assert "metrics [{'mIoU': 1.0}]" in f.read()


LINGERING_THREAD = """
import threading

# a non-daemon thread that never ends: an interpreter that finalizes waits for it forever
threading.Thread(target=threading.Event().wait, name='lingering').start()
"""


@pytest.mark.slow
def test_tools_end_their_process_once_they_left_the_group(data, tmp_path):
    """tools/train.py and test.py in a 1-process group (torchrun's environment, --launcher
    pytorch) end their process after a successful run without the interpreter's finalization:
    they exit 0 though a non-daemon thread (started by a module of the config's custom_imports)
    is still running, which finalization would wait for."""
    import socket

    (tmp_path / 'lingering.py').write_text(LINGERING_THREAD)
    config = tiny_seg_config(
        tmp_path,
        data,
        train_cfg=dict(max_iters=1, val_interval=1),
        default_hooks=dict(checkpoint=dict(interval=1)),
        custom_imports=dict(imports=['mmunirep', 'lingering'], allow_failed_imports=False),
    )
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    env = dict(
        os.environ, PYTHONPATH=str(tmp_path), OMP_NUM_THREADS='1', RANK='0', LOCAL_RANK='0',
        WORLD_SIZE='1', MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port),
    )  # fmt: skip
    work = tmp_path / 'work'
    for tool, argv in (
        ('train', [config, '--work-dir', str(work)]),
        ('test', [config, str(work / 'iter_1.pth'), '--work-dir', str(tmp_path / 'test')]),
    ):
        try:
            proc = subprocess.run(
                [sys.executable, osp.join(ROOT, 'tools', f'{tool}.py'), *argv, '--launcher',
                 'pytorch'],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f'{tool}.py did not end its process in {e.timeout} s') from e
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-3000:]
        assert 'rank 0 of 1 joined the process group over gloo' in out, out[-3000:]
        assert 'mIoU' in out, out[-3000:]  # the run's last log lines came out: flushed


def test_missing_dataset_path_is_named(tmp_path):
    config = tiny_seg_config(
        tmp_path, str(tmp_path / 'no_such_dataset'), train_cfg=dict(max_iters=1, val_interval=1)
    )
    missing = tmp_path / 'no_such_dataset' / 'images' / 'training'
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"No such file or directory: '{missing}'")
    ):
        load_tool('train').main([config, '--work-dir', str(tmp_path / 'w')])


def test_corrupt_image_fails_with_its_path(data, tmp_path):
    """mmcv's LoadImageFromFile raises on an unreadable image (ignore_empty=False), naming the
    file; in test mode mmengine passes the error on instead of fetching another image."""
    import shutil

    root = tmp_path / 'shapes'
    shutil.copytree(data, root)
    val_dir = root / 'images' / 'validation'
    victim = sorted(val_dir.iterdir())[0]
    victim.write_bytes(b'not a jpeg')
    config = tiny_seg_config(tmp_path, str(root))
    model = build_model(Config.fromfile(config))
    ckpt = tmp_path / 'm.pth'
    torch.save({'state_dict': model.state_dict()}, ckpt)
    with pytest.raises(AssertionError, match=re.escape(f'failed to load image: {victim}')):
        load_tool('test').main([config, str(ckpt), '--work-dir', str(tmp_path / 'w')])


@pytest.mark.parametrize('size', [(13, 13), (7, 100)])
def test_tiny_inputs(size):
    """Inputs so small that every stage's map is smaller than the 13x13 kernels, down to 1 pixel
    (odd sides in general: test_unireplknet.py)."""
    model = UniRepLKNet(arch='a').eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    h, w = size
    assert len(outs) == 4
    for o, s in zip(outs, (4, 8, 16, 32)):
        assert o.shape[-2:] == (-(-h // s), -(-w // s)) and torch.isfinite(o).all()


@pytest.mark.skipif(torch.cuda.is_available(), reason='the conversion is for CPU processes')
def test_batch_one_training_with_syncbn_on_one_process(data, tmp_path):
    """SyncBN in a config becomes plain BN when the tools read it on a CPU process (prepare_cfg);
    the backbone trains on batch 1, every parameter getting a finite, non-zero gradient."""
    from mmunirep.utils import prepare_cfg

    syncbn = dict(type='SyncBN', requires_grad=True)
    config = tiny_seg_config(
        tmp_path,
        data,
        model=dict(backbone=dict(norm_cfg=syncbn), decode_head=dict(norm_cfg=syncbn)),
    )
    assert Config.fromfile(config).model.backbone.norm_cfg.type == 'SyncBN'
    model = build_model(prepare_cfg(config))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(type(m) is torch.nn.BatchNorm2d for m in norms), {type(m) for m in norms}
    backbone = model.backbone.train()
    torch.manual_seed(0)
    outs = backbone(torch.randn(1, 3, 96, 96))  # stage 4 is 3x3: BN has 9 values per channel
    # random weights on each output: a plain mean of a normalized output has no gradient
    sum((o * torch.randn_like(o)).sum() for o in outs).backward()
    params = dict(backbone.named_parameters())
    missing = [n for n, p in params.items() if p.grad is None]
    assert not missing, f'parameters without a gradient: {missing}'
    bad = [n for n, p in params.items() if not torch.isfinite(p.grad).all() or not p.grad.any()]
    assert not bad, f'zero or non-finite gradients: {bad}'


# ------------------------------------------------------------------------------------------------
# fp16 mixed precision
# ------------------------------------------------------------------------------------------------
class CpuFp16OptimWrapper(OptimWrapper):
    """What ``--amp`` (mmengine's AmpOptimWrapper, loss_scale='dynamic') does on a GPU, on the CPU.

    mmengine's AmpOptimWrapper refuses to run without a GPU and its CPU autocast allows bf16 only,
    so this test wrapper does the same three things by hand: fp16 autocast around the forward,
    a dynamic loss scale (torch.amp.GradScaler), and unscaling before gradient clipping. fp16's
    range (max 65504, smallest normal 6e-5) is the same on every device, so overflow in the
    model's activations shows here as it would on a GPU.
    """

    def __init__(self, optimizer, clip_grad=None, autocast_model=True):
        super().__init__(optimizer, clip_grad=clip_grad)
        self.autocast_model = autocast_model
        self.scaler = torch.amp.GradScaler('cpu')  # AmpOptimWrapper's 'dynamic': init 2**16
        self.skipped = []

    def backward(self, loss, **kwargs):
        self.scaler.scale(loss).backward(**kwargs)
        self._inner_count += 1

    def step(self, **kwargs):
        if self.clip_grad_kwargs:
            self.scaler.unscale_(self.optimizer)
            self._clip_grad()
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer, **kwargs)
        self.scaler.update()
        self.skipped.append(self.scaler.get_scale() < scale)  # inf/NaN gradients: step skipped

    @contextmanager
    def optim_context(self, model):
        with super().optim_context(model), torch.autocast(
            'cpu', dtype=torch.float16, enabled=self.autocast_model
        ):
            yield


def _autocast_forward(module):
    """Run ``module`` under fp16 autocast and hand fp32 outputs to what follows."""
    forward = module.forward

    def wrapped(*args, **kwargs):
        with torch.autocast('cpu', dtype=torch.float16):
            outs = forward(*args, **kwargs)
        return tuple(o.float() for o in outs)

    module.forward = wrapped


def _fp16_train(cfg, steps, parts=None):
    """``steps`` training iterations of ``cfg``'s model under fp16 autocast; returns the losses,
    the dtypes the backbone's convolutions and linear layers computed in, the wrapper and the
    fraction of floating-point weights and buffers that changed. ``parts``: names of the
    submodules to autocast instead of the whole model."""
    from mmengine.runner import Runner

    torch.manual_seed(0)
    model = build_model(cfg)
    model.init_weights()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    wrapper = CpuFp16OptimWrapper(
        optimizer, clip_grad=dict(max_norm=10.0), autocast_model=parts is None
    )
    for name in parts or ():
        _autocast_forward(getattr(model, name))
    dtypes = set()
    hooks = [
        m.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))
        for m in model.backbone.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    loader = Runner.build_dataloader(cfg.train_dataloader, seed=0)
    losses = []
    before = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    while len(losses) < steps:
        for batch in loader:
            log = model.train_step(batch, wrapper)
            losses.append(float(log['loss'].detach()))
            if len(losses) == steps:
                break
    for h in hooks:
        h.remove()
    moved = sum(not torch.equal(v, before[k]) for k, v in model.state_dict().items() if k in before)
    return losses, dtypes, wrapper, moved / len(before)


@pytest.mark.slow
def test_fp16_training_of_the_quick_starts_has_no_nan(data, tmp_path):
    """fp16 autocast training of both quick-start models on 64 px (seg) and 96 px (det) images,
    where stages 3-4 are smaller than the 13x13 kernels (2x2 .. 5x5 maps): every loss is finite,
    the convolutions really ran in fp16, the dynamic loss scale settles (from 2**16 it backs off
    a few times, as it does on a GPU: the stem's bias gradient, summed over every pixel, reaches
    ~4, i.e. 2**18 scaled) and at most half of the steps are skipped, and the weights moved. What
    protects it: GRN's spatial norm in fp32 (test_unireplknet.py),
    LayerNorm / BatchNorm kept in fp32 by autocast, the dynamic loss scale, gradients unscaled
    before clipping."""
    seg_cfg = Config.fromfile(tiny_seg_config(tmp_path, data))
    det_root = tmp_path / 'coco'
    load_tool('make_shapes_coco').main(
        [
            '--out',
            str(det_root),
            '--num-train',
            '4',
            '--num-val',
            '1',
            '--size',
            '96',
            '--seed',
            '3',
        ]
    )
    det_cfg = Config.fromfile(tiny_det_config(tmp_path, str(det_root)))
    # the detector: backbone and neck in fp16, as mmcv's CPU NMS needs boxes and scores of one
    # dtype (the RPN would hand it fp16 boxes with fp32 scores)
    for name, cfg, steps, parts in (
        ('seg', seg_cfg, 6, None),
        ('det', det_cfg, 6, ('backbone', 'neck')),
    ):
        losses, dtypes, wrapper, moved = _fp16_train(cfg, steps, parts)
        assert all(map(math.isfinite, losses)), f'{name}: non-finite fp16 losses {losses}'
        assert torch.float16 in dtypes, f'{name}: autocast did not reach the backbone: {dtypes}'
        skipped = wrapper.skipped
        assert sum(skipped) <= steps // 2, f'{name}: overflowing steps {skipped}'
        assert wrapper.scaler.get_scale() >= 2.0**8, (
            f'{name}: loss scale {wrapper.scaler.get_scale()}'
        )
        assert moved > 0.5, f'{name}: only {moved:.0%} of the weights and buffers changed'


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message given without a GPU')
def test_amp_without_a_gpu_is_refused_up_front(data, tmp_path):
    with pytest.raises(SystemExit, match='needs a CUDA GPU'):
        load_tool('train').main(
            [tiny_seg_config(tmp_path, data), '--amp', '--work-dir', str(tmp_path / 'w')]
        )


@pytest.mark.parametrize('backend, replaced', [(None, True), ('nccl', True), ('gloo', False)])
def test_cpu_adaptation_says_what_it_changed(monkeypatch, backend, replaced):
    """Without a GPU the tools turn SyncBN into BN and NCCL into gloo, and log each change."""
    from mmunirep.utils import config_utils

    logged = []
    monkeypatch.setattr(config_utils, 'print_log', lambda msg, **kw: logged.append(msg))
    env = dict(dist_cfg=dict(backend=backend)) if backend else dict(dist_cfg=dict())
    cfg = Config(
        dict(
            model=dict(
                backbone=dict(norm_cfg=dict(type='SyncBN')),
                neck=dict(norm_cfg=dict(type='SyncBN', requires_grad=True)),
            ),
            env_cfg=env,
        )
    )
    config_utils.adapt_to_cpu(cfg)
    assert cfg.model.backbone.norm_cfg.type == 'BN' and cfg.model.neck.norm_cfg == dict(
        type='BN', requires_grad=True
    )
    assert cfg.env_cfg.dist_cfg.backend == ('gloo' if replaced else backend)
    assert any('2 SyncBN norm configs replaced by BN' in m for m in logged), logged
    assert any('nccl replaced by gloo' in m for m in logged) == replaced, logged
