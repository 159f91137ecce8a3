"""tools/analysis_tools: get_flops counts what the paper's tables count; benchmark times the
training and deploy structures (and compiled twins) on the same batch."""

import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmunirep  # noqa: F401
from mmunirep.models import UniRepLKNet

from helpers import ROOT, load_tool, recording_backend

QUICKSTART = osp.join(ROOT, 'configs', 'segmentation', 'quickstart_unireplknet_a_shapes.py')


def build_segmentor(cfg):
    from mmseg.registry import MODELS

    init_default_scope('mmseg')
    cfg.model.backbone.init_cfg = None  # nothing is downloaded
    cfg.model.pretrained = None
    return MODELS.build(cfg.model)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_get_flops_segmentor():
    get_flops = load_tool('get_flops')
    res = get_flops.main([QUICKSTART, '--shape', '64', '96', '--json'])
    model = build_segmentor(Config.fromfile(QUICKSTART))
    assert res['framework'] == 'mmseg' and res['input_shape'] == (64, 96)
    assert res['params'] == n_params(model) - n_params(model.auxiliary_head)
    assert res['aux_head_params'] == n_params(model.auxiliary_head)
    assert res['backbone_params'] == n_params(model.backbone)
    assert res['flops'] > 0
    dep = get_flops.get_flops(QUICKSTART, (64, 96), deploy=True)
    assert dep['params'] < res['params'] and 0.9 * res['flops'] < dep['flops'] < res['flops']
    # a config that compiles its backbone is counted as the eager one (a compiled forward cannot
    # be traced)
    compiled = get_flops.get_flops(QUICKSTART, (64, 96), {'model.backbone.compile': True})
    assert (compiled['params'], compiled['flops']) == (res['params'], res['flops'])


def test_get_flops_detector():
    get_flops = load_tool('get_flops')
    config = osp.join(ROOT, 'configs', 'detection', 'unireplknet_t_1k_cascade_3x.py')
    res = get_flops.main(
        [
            config,
            '--shape',
            '96',
            '128',
            '--json',
            '--num-proposals',
            '8',
            '--num-mask-rois',
            '4',
            '--cfg-options',
            'model.backbone.arch=a',
            'model.neck.in_channels=[40,80,160,320]',
        ]
    )
    assert res['framework'] == 'mmdet' and res['input_shape'] == (96, 128)
    assert res['counted'] == ('backbone + neck + RPN head + RoI heads on 8 proposals (masks on 4)')
    assert res['flops'] > 0 and res['params'] > res['backbone_params'] > 0


def test_get_flops_counts_the_large_kernel_op_like_conv2d(monkeypatch):
    """With use_lk_op=True the tool counts the model with nn.Conv2d in the op's place (the op's
    CUDA path is opaque to the tracer): the same parameters and FLOPs as without the op."""
    from mmunirep.ops import DepthWiseConv2dImplicitGEMM

    get_flops = load_tool('get_flops')
    built = []
    build = get_flops.build_model
    monkeypatch.setattr(get_flops, 'build_model', lambda cfg: built.append(build(cfg)) or built[-1])
    plain = get_flops.get_flops(QUICKSTART, (64, 64))
    with_op = get_flops.get_flops(
        QUICKSTART, (64, 64), cfg_options={'model.backbone.use_lk_op': True}
    )
    assert len(built) == 2
    assert not any(isinstance(m, DepthWiseConv2dImplicitGEMM) for m in built[1].modules())
    assert with_op['flops'] == plain['flops'] and with_op['params'] == plain['params']
    # on its traceable path (the CPU fallback) the op counts as the convolution it computes
    from mmengine.analysis import FlopAnalyzer

    x = torch.randn(1, 3, 64, 64)
    counts = [
        FlopAnalyzer(UniRepLKNet(arch='a', use_lk_op=op).eval(), (x,)).total()
        for op in (False, True)
    ]
    assert counts[0] == counts[1] > 0, counts


@pytest.mark.parametrize('part', ['backbone', 'model'])
def test_benchmark_compares_both_structures(seg_model, part, tmp_path):
    out = tmp_path / 'report.md'
    if part == 'model':  # --out appends to what the file holds
        out.write_text('# earlier runs\n')
    argv = [
        seg_model['config'],
        '--checkpoint',
        seg_model['ckpt'],
        '--shape',
        '64',
        '64',
        '--warmup',
        '1',
        '--iters',
        '1',
        '--repeats',
        '2',
        '--part',
        part,
        '--out',
        str(out),
    ]
    ips = load_tool('benchmark').main(argv)
    assert set(ips) == {'training', 'deploy'} and all(v > 0 for v in ips.values())
    report = out.read_text()
    assert report.startswith(
        '# earlier runs\n' if part == 'model' else '# tools/analysis_tools/benchmark.py reports\n'
    ), report
    assert f'`python tools/analysis_tools/benchmark.py {" ".join(argv)}`' in report
    for name, value in ips.items():
        assert re.search(rf'^  {name} +{value:.2f} images/s$', report, re.M), (name, report)
    ratio = ips['deploy'] / ips['training']
    assert f'deploy / training: {ratio:.2f}x' in report


@pytest.mark.slow
@pytest.mark.parametrize('part, amp', [('backbone', None), ('model', 'bf16')])
def test_benchmark_times_a_compiled_twin_of_each_structure(seg_model, part, amp):
    torch._dynamo.reset()
    backend, graphs = recording_backend()
    ips = load_tool('benchmark').main(
        [
            seg_model['config'],
            '--checkpoint',
            seg_model['ckpt'],
            '--shape',
            '64',
            '64',
            '--warmup',
            '1',
            '--iters',
            '1',
            '--repeats',
            '2',
            '--part',
            part,
            '--compile',
            '--compile-backend',
            backend,
        ]
        + (['--amp', amp] if amp else [])
    )
    # the convolutions' dtypes as traced: autocast's with --amp (it wraps every structure)
    dtypes = {
        n.meta['val'].dtype
        for g in graphs
        for n in g.graph.nodes
        if n.target == torch.ops.aten.convolution.default
    }
    assert dtypes == {torch.bfloat16 if amp else torch.float32}, dtypes
    assert set(ips) == {'training', 'deploy', 'training+compile', 'deploy+compile'}
    assert all(v > 0 for v in ips.values())
    # both twins went through the compiler, and what it got holds the backbone's convolutions
    # (the neck's too for the whole model); the eager structures did not
    convs = [
        sum(n.target == torch.ops.aten.convolution.default for n in g.graph.nodes) for g in graphs
    ]
    assert len(graphs) >= 2 and sum(convs) > 0, (len(graphs), convs)


@pytest.mark.slow
def test_benchmark_refuses_a_compiled_twin_that_computes_something_else(seg_model):
    torch._dynamo.reset()

    def perturb(outputs):  # 1% of each output's largest magnitude added: beyond --rtol 1e-3
        return type(outputs)(
            o + 0.01 * o.abs().max() if isinstance(o, torch.Tensor) else o for o in outputs
        )

    backend, _ = recording_backend(wrap_outputs=perturb)
    with pytest.raises(
        RuntimeError,
        match=r'training\+compile: compiled feature 0 differs from '
        r'eager by 1\.0\de-02',
    ):
        load_tool('benchmark').main(
            [
                seg_model['config'],
                '--shape',
                '64',
                '64',
                '--warmup',
                '1',
                '--iters',
                '1',
                '--repeats',
                '1',
                '--part',
                'backbone',
                '--compile',
                '--compile-backend',
                backend,
            ]
        )


@pytest.mark.parametrize(
    'argv, message',
    [
        (['--compile-mode', 'max-autotune'], '--compile-mode and --compile-backend need --compile'),
        (['--compile', '--warmup', '0'], 'at least one warm-up pass'),
    ],
)
def test_benchmark_compile_argument_errors(seg_model, argv, message, capsys):
    benchmark = load_tool('benchmark')
    with pytest.raises(SystemExit) as info:
        benchmark.main([seg_model['config']] + argv)
    assert info.value.code == 2  # argparse's error
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    'argv, message',
    [
        (['--shape', '0', '64'], '--shape takes H W of at least 32 each'),
        (['--batch-size', '0'], '--batch-size must be at least 1, got 0'),
        (['--iters', '-2'], '--iters must be at least 1, got -2'),
        (['--repeats', '0'], '--repeats must be at least 1'),
        (['--warmup', '-1'], '--warmup must be 0 or more'),
    ],
)
def test_benchmark_arguments_are_checked_up_front(seg_model, argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        load_tool('benchmark').main([seg_model['config']] + argv)
    assert info.value.code == 2 and message in capsys.readouterr().err
