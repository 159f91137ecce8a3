"""From a trained model to deployment: reparameterize, convert released checkpoints, ONNX,
benchmark, image demo, and the tools' errors. Quick-start-sized models on generated data."""
import os.path as osp
import pickle
import re

import mmcv
import numpy as np
import pytest
import torch
from mmengine.config import Config

import mmunirep  # noqa: F401
from mmunirep.models.backbones.unireplknet import GRN, UniRepLKNetBlock
from mmunirep.utils import build_model
from tool_utils import (load_tool, recording_backend, tiny_det_config, tiny_seg_config,
                        visualizers_restored)


def randomize_statistics(model, seed=0):
    """Random BN statistics, GRN and layer scales: re-parameterization must fold them all."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            elif isinstance(m, GRN):
                m.gamma.copy_(torch.rand(m.gamma.shape, generator=g) - 0.5)
                m.beta.copy_((torch.rand(m.beta.shape, generator=g) - 0.5) * 0.2)
            elif isinstance(m, UniRepLKNetBlock) and m.gamma is not None:
                m.gamma.copy_(torch.rand(m.gamma.shape, generator=g) * 0.5 + 0.1)
    return model


def save_checkpoint(model, path, classes):
    palette = [[220, 20, 60], [0, 170, 0], [30, 60, 255]]
    torch.save({'meta': {'dataset_meta': {'classes': classes, 'palette': palette}},
                'state_dict': model.state_dict()}, path)
    return str(path)


@pytest.fixture(scope='module')
def seg_setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('seg_deploy')
    data = str(tmp / 'data')
    load_tool('make_shapes_ade20k').generate(data, num_train=2, num_val=3, size=64, seed=3)
    config = tiny_seg_config(tmp, data)
    torch.manual_seed(0)
    model = build_model(Config.fromfile(config))
    model.init_weights()
    randomize_statistics(model)
    ckpt = save_checkpoint(model, tmp / 'seg.pth', ('circle', 'square', 'triangle'))
    return dict(tmp=tmp, data=data, config=config, ckpt=ckpt)


@pytest.fixture(scope='module')
def det_setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('det_deploy')
    data = str(tmp / 'data')
    load_tool('make_shapes_coco').main(['--out', data, '--num-train', '2', '--num-val', '2',
                                        '--size', '96', '--seed', '2'])
    config = tiny_det_config(tmp, data)
    torch.manual_seed(0)
    model = build_model(Config.fromfile(config))
    model.init_weights()
    randomize_statistics(model)
    ckpt = save_checkpoint(model, tmp / 'det.pth', ('circle', 'square', 'triangle'))
    return dict(tmp=tmp, data=data, config=config, ckpt=ckpt)


def run_test(config, ckpt, out, deploy=False):
    argv = [config, ckpt, '--out', str(out), '--work-dir', str(out) + '_work']
    if deploy:
        argv += ['--cfg-options', 'model.backbone.deploy=True']
    metrics = load_tool('test').main(argv)
    with open(out, 'rb') as f:
        return metrics, pickle.load(f)


def test_reparameterized_segmentor_gives_the_same_predictions_and_miou(seg_setup):
    s = seg_setup
    deploy_ckpt = str(s['tmp'] / 'seg_deploy.pth')
    load_tool('reparameterize').main([s['config'], s['ckpt'], deploy_ckpt])
    state = torch.load(deploy_ckpt, map_location='cpu')['state_dict']
    assert not any('origin_bn' in k or 'dil_conv' in k for k in state)
    m_train, p_train = run_test(s['config'], s['ckpt'], s['tmp'] / 'train.pkl')
    m_deploy, p_deploy = run_test(s['config'], deploy_ckpt, s['tmp'] / 'deploy.pkl', deploy=True)
    assert set(m_train) == set(m_deploy) and 'mIoU' in m_train
    for k in m_train:
        assert m_deploy[k] == pytest.approx(m_train[k], abs=1e-6), k
    assert len(p_train) == len(p_deploy) == 3
    for a, b in zip(p_train, p_deploy):
        la, lb = a['seg_logits']['data'], b['seg_logits']['data']
        assert ((la - lb).abs().max() / la.abs().max()).item() < 1e-4
        assert torch.equal(a['pred_sem_seg']['data'], b['pred_sem_seg']['data'])


def test_reparameterized_detector_gives_the_same_predictions_and_map(det_setup):
    s = det_setup
    deploy_ckpt = str(s['tmp'] / 'det_deploy.pth')
    load_tool('reparameterize').main([s['config'], s['ckpt'], deploy_ckpt])
    m_train, p_train = run_test(s['config'], s['ckpt'], s['tmp'] / 'train.pkl')
    m_deploy, p_deploy = run_test(s['config'], deploy_ckpt, s['tmp'] / 'deploy.pkl', deploy=True)
    assert 'coco/bbox_mAP' in m_train and 'coco/segm_mAP' in m_train
    for k in m_train:
        assert m_deploy[k] == pytest.approx(m_train[k], abs=1e-6), k
    assert len(p_train) == len(p_deploy) == 2
    for a, b in zip(p_train, p_deploy):
        ia, ib = a['pred_instances'], b['pred_instances']
        assert len(ia['scores']) == len(ib['scores']) > 0
        torch.testing.assert_close(ib['scores'], ia['scores'], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ib['bboxes'], ia['bboxes'], rtol=1e-4, atol=1e-3)
        assert torch.equal(ia['labels'], ib['labels'])


def test_convert_released_mmdet2_checkpoint(det_setup, tmp_path):
    """An MMDetection 2.28 Cascade Mask R-CNN checkpoint: ema_* buffers, CLASSES in meta."""
    s = det_setup
    state = torch.load(s['ckpt'], map_location='cpu')['state_dict']
    ema = {'ema_' + k.replace('.', '_'): v + 1.0 for k, v in state.items()
           if v.is_floating_point()}
    released = {'meta': {'CLASSES': ('circle', 'square', 'triangle'), 'mmcv_version': '1.5.0',
                         'mmdet_version': '2.28.2', 'epoch': 36, 'config': '...'},
                'state_dict': {**state, **ema},
                'optimizer': {'state': {}, 'param_groups': [{'lr': 1e-6}]}}
    src, dst = tmp_path / 'released.pth', tmp_path / 'converted.pth'
    torch.save(released, src)
    load_tool('convert_checkpoint').main([str(src), str(dst), '--config', s['config']])
    converted = torch.load(dst, map_location='cpu')
    assert converted['meta']['dataset_meta']['classes'] == ('circle', 'square', 'triangle')
    assert set(converted['state_dict']) == set(state)  # every key lands (checked against the config)
    for k, v in state.items():
        assert torch.equal(converted['state_dict'][k], v)
    ema_dst = tmp_path / 'converted_ema.pth'
    load_tool('convert_checkpoint').main([str(src), str(ema_dst), '--weights', 'ema-buffers'])
    ema_state = torch.load(ema_dst, map_location='cpu')['state_dict']
    k = 'backbone.stages.0.0.pwconv1.1.weight'
    torch.testing.assert_close(ema_state[k], state[k] + 1.0, rtol=0, atol=0)


def test_convert_released_mmseg0_checkpoint(seg_setup, tmp_path):
    s = seg_setup
    state = torch.load(s['ckpt'], map_location='cpu')['state_dict']
    released = {'meta': {'CLASSES': ('circle', 'square', 'triangle'),
                         'PALETTE': [[1, 2, 3], [4, 5, 6], [7, 8, 9]], 'iter': 160000},
                'state_dict': {'module.' + k: v for k, v in state.items()}}
    src, dst = tmp_path / 'released.pth', tmp_path / 'converted.pth'
    torch.save(released, src)
    load_tool('convert_checkpoint').main([str(src), str(dst), '--config', s['config']])
    converted = torch.load(dst, map_location='cpu')
    assert set(converted['state_dict']) == set(state)
    assert converted['meta']['dataset_meta']['palette'][2] == [7, 8, 9]
    # a checkpoint of another variant does not fit the config: said clearly
    other = {k.replace('decode_head', 'decode_hed'): v for k, v in state.items()}
    torch.save({'state_dict': other}, src)
    with pytest.raises(RuntimeError, match='does not fit'):
        load_tool('convert_checkpoint').main([str(src), str(dst), '--config', s['config']])


@pytest.mark.parametrize('part', ['backbone', 'segmentor'])
def test_export_onnx_matches_pytorch(seg_setup, tmp_path, part):
    import onnx
    s = seg_setup
    out = str(tmp_path / f'{part}.onnx')
    errors = load_tool('export_onnx').main([s['config'], '--checkpoint', s['ckpt'], '--out', out,
                                            '--part', part, '--shape', '64', '96'])
    assert max(errors) <= 1e-4
    ops = {n.op_type for n in onnx.load(out).graph.node}
    assert 'Conv' in ops and not {n.domain for n in onnx.load(out).graph.node} - {''}


def test_matmul_adaptive_pool_equals_torch():
    export_onnx = load_tool('export_onnx')
    x = torch.randn(2, 5, 13, 22)
    for size in (1, 2, 3, 6, (4, 7)):
        torch.testing.assert_close(export_onnx.MatmulAdaptiveAvgPool2d(size)(x),
                                   torch.nn.functional.adaptive_avg_pool2d(x, size),
                                   rtol=1e-5, atol=1e-6)


def test_export_onnx_refuses_a_detector(det_setup, tmp_path):
    with pytest.raises(ValueError, match='MMSegmentation config'):
        load_tool('export_onnx').main([det_setup['config'], '--out', str(tmp_path / 'x.onnx'),
                                       '--part', 'segmentor'])


@pytest.mark.parametrize('part', ['backbone', 'model'])
def test_benchmark_compares_both_structures(seg_setup, part, tmp_path):
    out = tmp_path / 'report.md'
    if part == 'model':  # --out appends to what the file holds
        out.write_text('# earlier runs\n')
    argv = [seg_setup['config'], '--checkpoint', seg_setup['ckpt'], '--shape', '64', '64',
            '--warmup', '1', '--iters', '1', '--repeats', '2', '--part', part, '--out', str(out)]
    ips = load_tool('benchmark').main(argv)
    assert set(ips) == {'training', 'deploy'} and all(v > 0 for v in ips.values())
    report = out.read_text()
    assert report.startswith('# earlier runs\n' if part == 'model' else
                             '# tools/benchmark.py reports\n'), report
    assert f"`python tools/benchmark.py {' '.join(argv)}`" in report
    for name, value in ips.items():
        assert re.search(rf'^  {name} +{value:.2f} images/s$', report, re.M), (name, report)
    ratio = ips['deploy'] / ips['training']
    assert f'deploy / training: {ratio:.2f}x' in report


@pytest.mark.parametrize('part, amp', [('model', None), ('backbone', None), ('model', 'bf16')])
def test_benchmark_times_a_compiled_twin_of_each_structure(seg_setup, part, amp):
    torch._dynamo.reset()
    backend, graphs = recording_backend()
    ips = load_tool('benchmark').main([seg_setup['config'], '--checkpoint', seg_setup['ckpt'],
                                       '--shape', '64', '64', '--warmup', '1', '--iters', '1',
                                       '--repeats', '2', '--part', part, '--compile',
                                       '--compile-backend', backend] +
                                      (['--amp', amp] if amp else []))
    # the convolutions' dtypes as traced: autocast's with --amp (it wraps every structure)
    dtypes = {n.meta['val'].dtype for g in graphs for n in g.graph.nodes
              if n.target == torch.ops.aten.convolution.default}
    assert dtypes == {torch.bfloat16 if amp else torch.float32}, dtypes
    assert set(ips) == {'training', 'deploy', 'training+compile', 'deploy+compile'}
    assert all(v > 0 for v in ips.values())
    # both twins went through the compiler, and what it got holds the backbone's convolutions
    # (the neck's too for the whole model); the eager structures did not
    convs = [sum(n.target == torch.ops.aten.convolution.default for n in g.graph.nodes)
             for g in graphs]
    assert len(graphs) >= 2 and sum(convs) > 0, (len(graphs), convs)


def test_benchmark_refuses_a_compiled_twin_that_computes_something_else(seg_setup):
    torch._dynamo.reset()

    def perturb(outputs):  # 1% of each output's largest magnitude added: beyond --rtol 1e-3
        return type(outputs)(o + 0.01 * o.abs().max() if isinstance(o, torch.Tensor) else o
                             for o in outputs)
    backend, _ = recording_backend(wrap_outputs=perturb)
    with pytest.raises(RuntimeError, match=r'training\+compile: compiled feature 0 differs from '
                                           r'eager by 1\.0\de-02'):
        load_tool('benchmark').main([seg_setup['config'], '--shape', '64', '64', '--warmup', '1',
                                     '--iters', '1', '--repeats', '1', '--part', 'backbone',
                                     '--compile', '--compile-backend', backend])


@pytest.mark.parametrize('argv, message', [
    (['--compile-mode', 'max-autotune'], '--compile-mode and --compile-backend need --compile'),
    (['--compile', '--warmup', '0'], 'at least one warm-up pass'),
])
def test_benchmark_compile_argument_errors(seg_setup, argv, message, capsys):
    benchmark = load_tool('benchmark')
    with pytest.raises(SystemExit) as info:
        benchmark.main([seg_setup['config']] + argv)
    assert info.value.code == 2  # argparse's error
    assert message in capsys.readouterr().err


@pytest.mark.parametrize('setup', ['seg_setup', 'det_setup'])
def test_image_demo_draws(request, setup, tmp_path):
    s = request.getfixturevalue(setup)
    img = osp.join(s['data'], 'images', 'validation') if setup == 'seg_setup' else \
        osp.join(s['data'], 'val')
    img = osp.join(img, sorted(__import__('os').listdir(img))[0])
    out = str(tmp_path / 'vis.jpg')
    load_tool('image_demo').main([img, s['config'], s['ckpt'], '--out-file', out])
    drawn, original = mmcv.imread(out), mmcv.imread(img)
    assert drawn.shape[:2] == original.shape[:2]
    assert np.abs(drawn.astype(int) - original.astype(int)).mean() > 0.5  # something was drawn


def test_tools_take_a_checkpoint_url(seg_setup, tmp_path, monkeypatch):
    """tools/test.py and tools/image_demo.py with CONFIG http://.../model.pth, as MMDetection's
    tools: mmengine fetches it (here from a server on this machine, into a private torch hub
    folder), and the metrics and the drawing are the local file's."""
    import functools
    import http.server
    import threading
    s = seg_setup
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(s['tmp']))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    img = osp.join(s['data'], 'images', 'validation')
    img = osp.join(img, sorted(__import__('os').listdir(img))[0])
    with visualizers_restored():
        try:
            url = f'http://127.0.0.1:{server.server_address[1]}/seg.pth'
            m_url, p_url = run_test(s['config'], url, tmp_path / 'url.pkl')
            load_tool('image_demo').main([img, s['config'], url, '--out-file',
                                          str(tmp_path / 'url.jpg')])
        finally:
            server.shutdown()
            server.server_close()
        assert osp.isfile(tmp_path / 'torch_home' / 'hub' / 'checkpoints' / 'seg.pth')
        m_file, p_file = run_test(s['config'], s['ckpt'], tmp_path / 'file.pkl')
        load_tool('image_demo').main([img, s['config'], s['ckpt'], '--out-file',
                                      str(tmp_path / 'file.jpg')])
    assert 'mIoU' in m_url and m_url == m_file
    assert len(p_url) == len(p_file) > 0
    for a, b in zip(p_url, p_file):
        assert torch.equal(a['seg_logits']['data'], b['seg_logits']['data'])
    assert np.array_equal(mmcv.imread(str(tmp_path / 'url.jpg')),
                          mmcv.imread(str(tmp_path / 'file.jpg')))


def test_tools_fail_clearly_on_bad_paths_and_checkpoints(seg_setup, tmp_path):
    s = seg_setup
    with pytest.raises(FileNotFoundError, match='config file not found'):
        load_tool('reparameterize').main(['nope.py', s['ckpt'], str(tmp_path / 'o.pth')])
    with pytest.raises(FileNotFoundError, match='not found'):
        load_tool('test').main([s['config'], str(tmp_path / 'missing.pth')])
    with pytest.raises(FileNotFoundError, match='not found'):
        load_tool('reparameterize').main([s['config'], str(tmp_path / 'missing.pth'),
                                          str(tmp_path / 'o.pth')])
    # a detector's checkpoint for a segmentor config
    torch.save({'state_dict': {'backbone.foo': torch.randn(2)}}, tmp_path / 'wrong.pth')
    with pytest.raises(RuntimeError, match='does not fit'):
        load_tool('reparameterize').main([s['config'], str(tmp_path / 'wrong.pth'),
                                          str(tmp_path / 'o.pth')])
