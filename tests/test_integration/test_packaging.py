"""Packaging: the sdist carries what a build needs, a built package carries its configs in
OpenMMLab's ``.mim/`` layout with a model index that mim and mmengine read, and the model index
holds the paper's results and the measured params and FLOPs."""

import glob
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest
import yaml
from mmengine.config import Config

from mmunirep.utils import config_path
from mmunirep.utils.config_utils import prepare_cfg

from helpers import ROOT

# The paper's tables (the TPAMI version, as the authors' README quotes them): box / mask mAP on
# COCO with Cascade Mask R-CNN 3x, single-scale / multi-scale mIoU on ADE20K with UperNet 160k.
pytestmark = pytest.mark.slow  # builds sdists and wheels

PAPER_COCO = {
    'unireplknet_t_1k_cascade_3x': (51.7, 44.9),
    'unireplknet_s_1k_cascade_3x': (53.0, 45.9),
    'unireplknet_s_22k_cascade_3x': (54.3, 47.1),
    'unireplknet_b_22k_cascade_3x': (54.8, 47.4),
    'unireplknet_l_22k_cascade_3x': (55.8, 48.4),
    'unireplknet_xl_22k_cascade_3x': (56.4, 49.0),
}
PAPER_ADE20K = {
    'unireplknet_t_1k_upernet_160k_512': (48.6, 49.1),
    'unireplknet_s_1k_upernet_160k_512': (50.5, 51.0),
    'unireplknet_s_22k_upernet_160k_512': (51.9, 52.7),
    'unireplknet_s_22k_upernet_160k_640': (52.3, 52.7),
    'unireplknet_b_22k_upernet_160k_640': (53.5, 53.9),
    'unireplknet_l_22k_upernet_160k_640': (54.5, 55.0),
    'unireplknet_xl_22k_upernet_160k_640': (55.2, 55.6),
}
# the zoo's configs beyond the paper (untrained): no results, our params and FLOPs only
NEW_COCO = {  # config -> epochs
    'unireplknet_t_1k_mask_rcnn_1x': 12,
    'unireplknet_t_1k_mask_rcnn_3x': 36,
    'unireplknet_s_1k_mask_rcnn_1x': 12,
    'unireplknet_s_1k_mask_rcnn_3x': 36,
    'unireplknet_b_22k_dino_12e': 12,
    'unireplknet_b_22k_dino_36e': 36,
    'unireplknet_l_22k_dino_12e': 12,
    'unireplknet_l_22k_dino_36e': 36,
}
NEW_SEG = {  # config -> dataset, the input size its FLOPs are counted at
    'unireplknet_b_22k_mask2former_160k_640': ('ADE20K', '(640, 640)'),
    'unireplknet_l_22k_mask2former_160k_640': ('ADE20K', '(640, 640)'),
    'unireplknet_t_1k_upernet_80k_cityscapes_512x1024': ('Cityscapes', '(1024, 2048)'),
    'unireplknet_s_1k_upernet_80k_cityscapes_512x1024': ('Cityscapes', '(1024, 2048)'),
}
PAPER_NAMES = set(PAPER_COCO) | set(PAPER_ADE20K)
NEW_NAMES = set(NEW_COCO) | set(NEW_SEG)
MIM_CONTENT = ('configs', 'tools', 'demo', 'model-index.yml')
ZOO_RESULTS = osp.join(ROOT, 'benchmarks', 'results', 'model_zoo_complexity.md')


def tracked_files(*dirs):
    """The repository's files under ``dirs`` (git's list in a clone, else the folders' files)."""
    try:
        out = subprocess.run(
            ['git', 'ls-files', '--', *dirs], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        out = []
    if not out:
        for d in dirs:
            if osp.isfile(osp.join(ROOT, d)):
                out.append(d)
            for base, _, files in os.walk(osp.join(ROOT, d)):
                out += [
                    osp.relpath(osp.join(base, f), ROOT) for f in files if '__pycache__' not in base
                ]
    assert out, dirs
    return sorted(out)


def load_metafiles():
    index = yaml.safe_load(open(osp.join(ROOT, 'model-index.yml')))
    models = {}
    for path in index['Import']:
        meta = yaml.safe_load(open(osp.join(ROOT, path)))
        collections = {c['Name'] for c in meta['Collections']}
        for model in meta['Models']:
            assert model['In Collection'] in collections, model['Name']
            assert model['Name'] not in models, model['Name']
            models[model['Name']] = model
    return models


# -- the model index -------------------------------------------------------------------------------
def test_model_index_lists_every_paper_config_once_with_the_papers_results():
    models = load_metafiles()
    assert set(models) == PAPER_NAMES | NEW_NAMES
    zoo_configs = {
        osp.relpath(p, ROOT) for p in glob.glob(osp.join(ROOT, 'configs', '*', 'unireplknet_*.py'))
    }
    assert {m['Config'] for m in models.values()} == zoo_configs
    for name, model in models.items():
        assert osp.splitext(osp.basename(model['Config']))[0] == name
        if name in NEW_NAMES:
            continue  # test_model_index_lists_the_untrained_configs_without_results
        results = {(r['Task'], r['Dataset']): r['Metrics'] for r in model['Results']}
        if name in PAPER_COCO:
            box, mask = PAPER_COCO[name]
            assert results == {
                ('Object Detection', 'COCO'): {'box AP': box},
                ('Instance Segmentation', 'COCO'): {'mask AP': mask},
            }, name
        else:
            ss, ms = PAPER_ADE20K[name]
            assert results == {
                ('Semantic Segmentation', 'ADE20K'): {'mIoU': ss, 'mIoU(ms+flip)': ms}
            }, name
        # the schedule of the config itself
        cfg = Config.fromfile(osp.join(ROOT, model['Config']))
        if name in PAPER_COCO:
            assert model['Metadata']['Epochs'] == cfg.train_cfg.max_epochs == 36, name
        else:
            assert model['Metadata']['lr schd'] == cfg.train_cfg.max_iters == 160000, name
            crop = eval(model['Metadata']['crop size'])
            assert tuple(cfg.crop_size) == crop, name
        # the authors' files need tools/model_converters/convert_checkpoint.py: no `Weights` that
        # mim or mmengine's get_model(pretrained=True) would load as they are
        assert 'Weights' not in model, name
        assert model['Converted From']['Weights'].startswith('https://drive.google.com/'), name


def test_model_index_lists_the_untrained_configs_without_results():
    """The configs beyond the paper: our params and FLOPs, their schedule, crop and pretraining
    as the config has them, and no results or weights of any kind."""
    models = load_metafiles()
    for name in sorted(NEW_NAMES):
        model = models[name]
        assert not {'Results', 'Weights', 'Converted From'} & set(model), name
        meta = model['Metadata']
        cfg = Config.fromfile(osp.join(ROOT, model['Config']))
        checkpoint = cfg.model.backbone.init_cfg.checkpoint
        pretrain = 'ImageNet-22K' if '_in22k_' in checkpoint else 'ImageNet-1K'
        assert meta['Pretrain'] == pretrain, name
        assert meta['Parameters (M)'] > 0 and meta['FLOPs (G)'] > 0, name
        if name in NEW_COCO:
            assert meta['Epochs'] == cfg.train_cfg.max_epochs == NEW_COCO[name], name
            assert meta['Input size'] == '(800, 1280)', name
        else:
            dataset, input_size = NEW_SEG[name]
            assert meta['lr schd'] == cfg.train_cfg.max_iters, name
            assert eval(meta['crop size']) == tuple(cfg.crop_size), name
            assert meta['Input size'] == input_size, name
            collection = model['In Collection']
            assert dataset in (collection + ' ' + cfg.train_dataloader.dataset.type), name


def measured_complexity():
    """{config name: (input, params paper, params, FLOPs paper, FLOPs)} of the committed output
    of benchmarks/model_zoo_complexity.py (the paper's columns empty beyond the paper)."""
    rows = {}
    for line in open(ZOO_RESULTS):
        match = re.match(r'^\| `(unireplknet_\w+)\.py` \|(.*)\|$', line.strip())
        if match:
            cells = [c.strip() for c in match.group(2).split('|')]
            rows[match.group(1)] = (cells[0], cells[1], cells[2], cells[4], cells[5])
    return rows


def test_model_index_has_the_measured_params_and_flops():
    """Each metafile entry's params, FLOPs and input size are those get_flops.py measured (the
    committed table), and for the paper's configs within 1% (params) and 0.5% (FLOPs) of the
    paper's."""
    models, measured = load_metafiles(), measured_complexity()
    assert set(measured) == set(models), sorted(set(measured) ^ set(models))
    for name, model in models.items():
        size, params_paper, params, flops_paper, flops = measured[name]
        meta = model['Metadata']
        assert (
            meta['Input size'],
            f'{meta["Parameters (M)"]:.2f}M',
            f'{meta["FLOPs (G)"]:.1f}G',
        ) == ('({}, {})'.format(*size.split(' x ')), params, flops), name
        if name in PAPER_NAMES:
            assert abs(float(params[:-1]) / float(params_paper[:-1]) - 1) <= 0.01, name
            assert abs(float(flops[:-1]) / float(flops_paper[:-1]) - 1) <= 0.005, name
        else:
            assert params_paper == flops_paper == '', name


# -- config_path -----------------------------------------------------------------------------------
def test_config_path_finds_the_checkouts_configs_and_refuses_bad_names():
    path = config_path('detection/unireplknet_s_22k_cascade_3x.py')
    assert path == osp.join(ROOT, 'configs', 'detection', 'unireplknet_s_22k_cascade_3x.py')
    assert config_path('configs/segmentation/unireplknet_t_1k_upernet_160k_512.py') == osp.join(
        ROOT, 'configs', 'segmentation', 'unireplknet_t_1k_upernet_160k_512.py'
    )
    assert config_path('./detection/unireplknet_s_22k_cascade_3x.py') == path
    with pytest.raises(
        FileNotFoundError,
        match=r"no config 'detection/nope\.py'.*"
        r'detection/unireplknet_s_22k_cascade_3x\.py',
    ):
        config_path('detection/nope.py')
    for bad in (
        '../setup.py',
        '/etc/hostname',
        '',
        'detection//unireplknet_s_22k_cascade_3x.py',
        'detection/metafile.yml',
    ):
        with pytest.raises(ValueError, match=r'expected a config name \(\.py\) relative to'):
            config_path(bad)


def run_python(code, pythonpath, cwd):
    """``code`` in a fresh interpreter that imports mmunirep from ``pythonpath``, run in ``cwd``
    (outside the checkout)."""
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    return subprocess.run(
        [sys.executable, '-W', 'ignore', '-c', code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_config_path_through_a_linked_package_finds_the_checkout(tmp_path):
    """A package folder reached through a link (as a strict editable install links its files)
    still finds the checkout's configs; a package with neither .mim/ nor a checkout around it
    says where it looked."""
    linked = tmp_path / 'linked'
    linked.mkdir()
    os.symlink(osp.join(ROOT, 'mmunirep'), linked / 'mmunirep')
    code = (
        'import mmunirep.utils.config_utils as c; '
        "print(c.config_path('segmentation/unireplknet_t_1k_upernet_160k_512.py'))"
    )
    proc = run_python(code, linked, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == osp.join(
        ROOT, 'configs', 'segmentation', 'unireplknet_t_1k_upernet_160k_512.py'
    )
    # a copy of the package alone, beside an unrelated configs/ folder
    alone = tmp_path / 'alone'
    shutil.copytree(
        osp.join(ROOT, 'mmunirep'),
        alone / 'mmunirep',
        ignore=shutil.ignore_patterns('__pycache__', '*.so'),
    )
    (alone / 'configs' / 'detection').mkdir(parents=True)
    code = (
        'import mmunirep.utils.config_utils as c; '
        "c.config_path('detection/unireplknet_s_22k_cascade_3x.py')"
    )
    proc = run_python(code, alone, tmp_path)
    assert proc.returncode != 0 and 'no configs beside the mmunirep package' in proc.stderr, (
        proc.stderr[-2000:]
    )


def test_tools_explain_an_unresolvable_mmunirep_base(tmp_path):
    cfg = tmp_path / 'mine.py'
    cfg.write_text("_base_ = ['mmunirep::detection/unireplknet_s_22k_cascade_3x.py']\n")
    with pytest.raises(ValueError, match='mmengine 0.10 cannot resolve: inherit it by its path'):
        prepare_cfg(str(cfg))


# -- sdist and wheel -------------------------------------------------------------------------------
def run_checked(args, **kwargs):
    proc = subprocess.run(args, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, (args, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


@pytest.fixture(scope='module')
def built(tmp_path_factory):
    """An sdist made from a copy of the tracked files, a wheel built from that sdist (without the
    CUDA extension: its build is CI's own step), and the wheel installed into a folder."""
    work = tmp_path_factory.mktemp('packaging')
    src = work / 'src'
    for rel in tracked_files('.'):
        os.makedirs(src / osp.dirname(rel), exist_ok=True)
        shutil.copy2(osp.join(ROOT, rel), src / rel)
    env = dict(os.environ, MMUNIREP_WITH_OPS='0')
    run_checked(
        [sys.executable, 'setup.py', '-q', 'sdist', '--dist-dir', str(work / 'dist')],
        cwd=src,
        env=env,
    )
    (sdist,) = glob.glob(str(work / 'dist' / '*.tar.gz'))
    run_checked(
        [
            sys.executable,
            '-m',
            'pip',
            'wheel',
            '-q',
            '--no-deps',
            '--no-build-isolation',
            '-w',
            str(work / 'wheels'),
            sdist,
        ],
        cwd=work,
        env=env,
    )
    (wheel,) = glob.glob(str(work / 'wheels' / '*.whl'))
    run_checked(
        [
            sys.executable,
            '-m',
            'pip',
            'install',
            '-q',
            '--no-deps',
            '--target',
            str(work / 'site'),
            wheel,
        ]
    )
    return dict(work=work, sdist=sdist, wheel=wheel, site=str(work / 'site'))


def test_sdist_carries_the_ops_sources_and_what_the_package_ships(built):
    with tarfile.open(built['sdist']) as tar:
        top = osp.commonpath(tar.getnames())
        members = {osp.relpath(n, top) for n in tar.getnames()}
    needed = tracked_files(
        'configs',
        'tools',
        'demo',
        'requirements',
        'mmunirep',
        'setup.py',
        'MANIFEST.in',
        'model-index.yml',
        'README.md',
        'LICENSE',
    )
    assert any(n.endswith('.cu') for n in needed) and any(n.endswith('.cuh') for n in needed)
    missing = sorted(set(needed) - members)
    assert not missing, missing
    # the tests need the checkout: none is shipped half
    assert not any(m.startswith('tests/') for m in members)


def mim_expected():
    """The tracked configs, tools, demo and model index."""
    return tracked_files(*MIM_CONTENT)


def assert_wheel_mim(wheel):
    with zipfile.ZipFile(wheel) as whl:
        mim = sorted(
            n[len('mmunirep/.mim/') :] for n in whl.namelist() if n.startswith('mmunirep/.mim/')
        )
        assert mim == mim_expected()
        for rel in mim:
            with open(osp.join(ROOT, rel), 'rb') as f:
                assert whl.read('mmunirep/.mim/' + rel) == f.read(), rel


def test_wheel_ships_configs_tools_and_model_index_in_mim(built):
    assert 'tools/train.py' in mim_expected() and 'tools/dist_train.sh' in mim_expected()
    assert_wheel_mim(built['wheel'])


def test_wheel_built_from_a_checkout_leaves_out_stray_files(built, tmp_path):
    """``pip wheel .`` in a git checkout that has untracked files in configs/ and tools/ (notes,
    a work dir, an editor's copies): .mim/ gets exactly the tracked files, as from the sdist."""
    src = tmp_path / 'checkout'
    shutil.copytree(built['work'] / 'src', src)
    git = ['git', '-c', 'user.name=t', '-c', 'user.email=t@t']
    run_checked([*git, 'init', '-q'], cwd=src)
    run_checked([*git, 'add', '-A'], cwd=src)
    run_checked([*git, 'commit', '-q', '-m', 'x'], cwd=src)
    (src / 'configs' / 'detection' / 'notes.txt').write_text('mine')
    (src / 'tools' / 'work_dirs' / 'run').mkdir(parents=True)
    (src / 'tools' / 'work_dirs' / 'run' / 'cfg.py').write_text('x = 1')
    (src / 'tools' / '.ipynb_checkpoints').mkdir()
    (src / 'tools' / '.ipynb_checkpoints' / 'train-checkpoint.py').write_text('x = 1')
    run_checked(
        [
            sys.executable,
            '-m',
            'pip',
            'wheel',
            '-q',
            '--no-deps',
            '--no-build-isolation',
            '-w',
            str(tmp_path / 'wheels'),
            str(src),
        ],
        env=dict(os.environ, MMUNIREP_WITH_OPS='0'),
    )
    (wheel,) = glob.glob(str(tmp_path / 'wheels' / '*.whl'))
    assert_wheel_mim(wheel)


def test_installed_package_configs_inherit_by_path_and_its_model_index_resolves(built):
    """What a project does with an installed mmunirep: inherit a config by the path config_path
    gives (the same model and schedule as the checkout's config, the project's override applied),
    and mmengine's model-index lookup (what mim and ``get_config`` use) finds every config."""
    user_cfg = built['work'] / 'my_det.py'
    code = f"""
import os.path as osp
import mmunirep
from mmengine.config import Config
from mmengine.config.utils import _get_cfg_metainfo
from mmunirep.utils import config_path
site = {built['site']!r}
assert mmunirep.__file__.startswith(site), mmunirep.__file__
det = config_path('detection/unireplknet_s_22k_cascade_3x.py')
assert det == osp.join(site, 'mmunirep', '.mim', 'configs', 'detection',
                       'unireplknet_s_22k_cascade_3x.py'), det
open({str(user_cfg)!r}, 'w').write(
    f"_base_ = [{{det!r}}]\\ntrain_dataloader = dict(batch_size=1)\\n")
mine = Config.fromfile({str(user_cfg)!r})
ref = Config.fromfile({osp.join(ROOT, 'configs', 'detection', 'unireplknet_s_22k_cascade_3x.py')!r})
assert mine.model == ref.model and mine.optim_wrapper == ref.optim_wrapper
assert mine.param_scheduler == ref.param_scheduler and mine.custom_hooks == ref.custom_hooks
assert (mine.train_dataloader.batch_size, ref.train_dataloader.batch_size) == (1, 2)
root = osp.join(site, 'mmunirep')
for name in {sorted(PAPER_COCO) + sorted(PAPER_ADE20K) + sorted(NEW_NAMES)!r}:
    task = 'detection' if name in {sorted(PAPER_COCO) + sorted(NEW_COCO)!r} else 'segmentation'
    meta = _get_cfg_metainfo(root, f'{{task}}/{{name}}.py')
    assert osp.isfile(osp.join(root, '.mim', meta['Config'])), meta
print('ok')
"""
    proc = run_python(code, built['site'], built['work'])
    assert proc.returncode == 0 and proc.stdout.strip() == 'ok', proc.stdout + proc.stderr
