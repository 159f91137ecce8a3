"""demo/image_demo.py draws a detector's and a segmentor's predictions; it and tools/test.py take a
checkpoint URL."""

import os.path as osp
import pickle

import mmcv
import numpy as np
import pytest
import torch

import mmunirep  # noqa: F401

from helpers import load_tool


def run_test(config, ckpt, out, deploy=False):
    argv = [config, ckpt, '--out', str(out), '--work-dir', str(out) + '_work']
    if deploy:
        argv += ['--cfg-options', 'model.backbone.deploy=True']
    metrics = load_tool('test').main(argv)
    with open(out, 'rb') as f:
        return metrics, pickle.load(f)


@pytest.mark.parametrize('setup', ['seg_model', 'det_model'])
def test_image_demo_draws(request, setup, tmp_path):
    s = request.getfixturevalue(setup)
    img = (
        osp.join(s['data'], 'images', 'validation')
        if setup == 'seg_model'
        else osp.join(s['data'], 'val')
    )
    img = osp.join(img, sorted(__import__('os').listdir(img))[0])
    out = str(tmp_path / 'vis.jpg')
    load_tool('image_demo').main([img, s['config'], s['ckpt'], '--out-file', out])
    drawn, original = mmcv.imread(out), mmcv.imread(img)
    assert drawn.shape[:2] == original.shape[:2]
    assert np.abs(drawn.astype(int) - original.astype(int)).mean() > 0.5  # something was drawn


@pytest.mark.slow
def test_tools_take_a_checkpoint_url(seg_model, tmp_path, monkeypatch):
    """tools/test.py and demo/image_demo.py with CONFIG http://.../model.pth, as MMDetection's
    tools: mmengine fetches it (here from a server on this machine, into a private torch hub
    folder), and the metrics and the drawing are the local file's."""
    import functools
    import http.server
    import threading

    s = seg_model
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(s['tmp']))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    img = osp.join(s['data'], 'images', 'validation')
    img = osp.join(img, sorted(__import__('os').listdir(img))[0])
    try:
        url = f'http://127.0.0.1:{server.server_address[1]}/seg.pth'
        m_url, p_url = run_test(s['config'], url, tmp_path / 'url.pkl')
        load_tool('image_demo').main(
            [img, s['config'], url, '--out-file', str(tmp_path / 'url.jpg')]
        )
    finally:
        server.shutdown()
        server.server_close()
    assert osp.isfile(tmp_path / 'torch_home' / 'hub' / 'checkpoints' / 'seg.pth')
    m_file, p_file = run_test(s['config'], s['ckpt'], tmp_path / 'file.pkl')
    load_tool('image_demo').main(
        [img, s['config'], s['ckpt'], '--out-file', str(tmp_path / 'file.jpg')]
    )
    assert 'mIoU' in m_url and m_url == m_file
    assert len(p_url) == len(p_file) > 0
    for a, b in zip(p_url, p_file):
        assert torch.equal(a['seg_logits']['data'], b['seg_logits']['data'])
    assert np.array_equal(
        mmcv.imread(str(tmp_path / 'url.jpg')), mmcv.imread(str(tmp_path / 'file.jpg'))
    )
