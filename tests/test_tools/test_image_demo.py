"""demo/image_demo.py draws a detector's and a segmentor's predictions; it and tools/test.py take a
checkpoint URL."""

import os
import os.path as osp

import cv2
import mmcv
import numpy as np
import pytest
import torch

import mmunirep  # noqa: F401

from helpers import load_tool, run_test


def assert_drawn(original, png, jpg, palette=None):
    """``png`` and ``jpg`` (BGR, as read) are drawings over ``original``: each differs in most
    pixels from the input as its format would store it untouched (the PNG: the input to the bit;
    the JPEG: cv2's encoding of the input at its default quality, as mmcv.imwrite saves it, which
    alone is 2-8 off on average). With a ``palette`` (a segmentor's), most pixels of the PNG are
    the input blended with one of its colours, at MMSegmentation's opacity 0.8."""
    assert png.shape == original.shape == jpg.shape
    as_jpeg = cv2.imdecode(cv2.imencode('.jpg', original)[1], cv2.IMREAD_COLOR)
    for name, drawn, untouched in (('PNG', png, original), ('JPEG', jpg, as_jpeg)):
        changed = (np.abs(drawn.astype(int) - untouched.astype(int)).max(-1) > 10).mean()
        assert changed > 0.5, f'{name}: only {changed:.1%} of the pixels changed'
    if palette is not None:
        colour = (png.astype(float) - 0.2 * original.astype(float)) / 0.8
        bgr = np.array(palette, dtype=float)[:, ::-1]
        off = np.linalg.norm(colour[:, :, None] - bgr, axis=-1).min(-1)
        painted = (off < 4).mean()  # rounding to uint8: at most ~1.5 per channel
        # the rest: the class names' labels
        assert painted > 0.9, f'only {painted:.1%} of the pixels are painted in a class colour'


@pytest.mark.parametrize('setup', ['seg_model', 'det_model'])
def test_image_demo_draws(request, setup, tmp_path):
    s = request.getfixturevalue(setup)
    img = (
        osp.join(s['data'], 'images', 'validation')
        if setup == 'seg_model'
        else osp.join(s['data'], 'val')
    )
    img = osp.join(img, sorted(os.listdir(img))[0])
    png, jpg = str(tmp_path / 'vis.png'), str(tmp_path / 'vis.jpg')
    for out in (png, jpg):
        load_tool('image_demo').main([img, s['config'], s['ckpt'], '--out-file', out])
    # the segmentor draws its classes in the checkpoint's palette
    meta = torch.load(s['ckpt'], map_location='cpu')['meta']['dataset_meta']
    palette = meta['palette'] if setup == 'seg_model' else None
    assert_drawn(mmcv.imread(img), mmcv.imread(png), mmcv.imread(jpg), palette)


def test_the_demo_takes_a_reparameterized_checkpoint_and_refuses_a_non_image_name(
    seg_model, tmp_path, capsys
):
    """As tools/test.py does, the demo builds the backbone in a re-parameterized checkpoint's
    structure and draws what the training checkpoint draws (the same label maps within fp32
    rounding: at most 0.1% of the pixels differ)."""
    img = osp.join(seg_model['data'], 'images', 'validation')
    img = osp.join(img, sorted(os.listdir(img))[0])
    deploy_ckpt = str(tmp_path / 'deploy.pth')
    load_tool('reparameterize').main([seg_model['config'], seg_model['ckpt'], deploy_ckpt])
    demo = load_tool('image_demo')
    drawings = []
    for ckpt in (seg_model['ckpt'], deploy_ckpt):
        out = str(tmp_path / f'{osp.basename(ckpt)}.png')
        demo.main([img, seg_model['config'], ckpt, '--out-file', out])
        drawings.append(mmcv.imread(out))
    assert (drawings[0] != drawings[1]).any(-1).mean() <= 1e-3
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        demo.main([img, seg_model['config'], deploy_ckpt, '--out-file', str(tmp_path / 'vis')])
    assert info.value.code == 2
    assert '--out-file takes an image file name (.jpg, ' in capsys.readouterr().err


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
    img = osp.join(img, sorted(os.listdir(img))[0])
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
