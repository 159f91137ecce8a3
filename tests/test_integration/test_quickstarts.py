"""The README's quick-start commands, end to end and shortened: data generation, training,
evaluation with the real metric, drawings. (How well they learn at full length is measured in the
README; here they run a few iterations so that CI proves the scripts work.)"""

import json
import os
import os.path as osp
import re
import subprocess
import sys

import pytest

from helpers import ROOT

pytestmark = pytest.mark.slow  # the quick-start scripts, training in subprocesses


def run_script(name, env, *args):
    full_env = dict(os.environ, OMP_NUM_THREADS='1', **env)
    proc = subprocess.run(
        ['bash', osp.join(ROOT, 'scripts', name), *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def test_detection_quickstart_script(tmp_path):
    data, work = tmp_path / 'coco', tmp_path / 'work'
    # a dataset of the old generator version is replaced, not silently reused
    (data / 'annotations').mkdir(parents=True)
    (data / 'annotations' / 'instances_val.json').write_text(
        json.dumps(dict(info=dict(version='1.0'), images=[], annotations=[], categories=[]))
    )
    train_args = (
        '--cfg-options',
        'train_cfg.max_epochs=1',
        'train_cfg.val_begin=2',  # no validation in training: the script's test step scores it
        'default_hooks.checkpoint.interval=1',
    )
    out = run_script(
        'quickstart_det.sh',
        dict(DATA_DIR=str(data), WORK_DIR=str(work)),
        *train_args,
        'train_dataloader.dataset.indices=8',
    )
    assert 'generating the shapes dataset (version 2.0)' in out
    with open(data / 'annotations' / 'instances_val.json') as f:
        val = json.load(f)
    assert val['info']['version'] == '2.0' and len(val['images']) == 40
    # progress lines of the training, then the COCO metric of the evaluation
    assert re.search(r'Epoch\(train\) \[1\]\[\s*2/2\]', out), out[-3000:]
    metrics = dict(re.findall(r'(coco/(?:bbox|segm)_mAP): ([0-9.]+)', out))
    assert set(metrics) == {'coco/bbox_mAP', 'coco/segm_mAP'}, out[-3000:]
    assert osp.isfile(work / 'test' / 'predictions.pkl')
    assert len(os.listdir(work / 'vis')) == 40
    # a dataset of the current version is kept (here a smaller one, made by the same generator)
    small = tmp_path / 'small'
    subprocess.run(
        [
            sys.executable,
            osp.join(ROOT, 'tools', 'misc', 'make_shapes_coco.py'),
            '--out',
            str(small),
            '--num-train',
            '4',
            '--num-val',
            '2',
        ],
        check=True,
        capture_output=True,
    )
    out = run_script(
        'quickstart_det.sh', dict(DATA_DIR=str(small), WORK_DIR=str(work / 'again')), *train_args
    )
    assert 'shapes dataset version 2.0 found' in out
    assert len(os.listdir(work / 'again' / 'vis')) == 2


def test_segmentation_quickstart_script(tmp_path):
    iters = 4
    data, work = tmp_path / 'ade', tmp_path / 'work'
    out = run_script(
        'quickstart_seg.sh',
        dict(DATA=str(data), WORK_DIR=str(work)),
        '--cfg-options',
        f'train_cfg.max_iters={iters}',
        f'train_cfg.val_interval={iters}',
        f'default_hooks.checkpoint.interval={iters}',
        'default_hooks.logger.interval=1',
    )
    assert osp.isdir(data / 'images' / 'training')
    assert re.search(rf'Iter\(train\) \[\s*{iters}/{iters}\]', out), out[-3000:]
    assert re.search(r'mIoU: [0-9.]+', out), out[-3000:]
    drawn = [f for _, _, files in os.walk(work / 'show') for f in files if f.endswith('.png')]
    assert len(drawn) == 30, drawn
