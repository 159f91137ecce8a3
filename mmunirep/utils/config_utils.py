"""What the tools share: loading a config and applying the common flags."""

import os
import os.path as osp
from typing import Optional

import torch
from mmengine.config import Config
from mmengine.logging import print_log

FRAMEWORKS = ('mmdet', 'mmseg')
# realpath: a strict editable install links the package's files from a build folder
PACKAGE_DIR = osp.dirname(osp.dirname(osp.realpath(__file__)))


def configs_dir() -> str:
    """Where this mmunirep's configs are: ``mmunirep/.mim/configs`` of an installed package (a
    wheel, ``pip install .``; setup.py copies them there, OpenMMLab's layout), else ``configs/``
    of the checkout that an editable install runs from (the folder that holds ``setup.py`` and
    ``model-index.yml`` too, not any ``configs/`` that happens to sit beside the package)."""
    mim = osp.join(PACKAGE_DIR, '.mim', 'configs')
    if osp.isdir(mim):
        return mim
    checkout = osp.dirname(PACKAGE_DIR)
    if all(osp.exists(osp.join(checkout, f)) for f in ('setup.py', 'model-index.yml', 'configs')):
        return osp.join(checkout, 'configs')
    raise FileNotFoundError(
        f'no configs beside the mmunirep package at {PACKAGE_DIR}: expected '
        f'{PACKAGE_DIR}/.mim/configs (an installed package) or the checkout '
        f'{checkout} with setup.py, model-index.yml and configs/ (an editable '
        'install)'
    )


def config_path(name: str) -> str:
    """The absolute path of one of mmunirep's configs, to inherit from a project's config.

    ``name`` is relative to ``configs/``, as ``'detection/unireplknet_s_22k_cascade_3x.py'``
    (a leading ``configs/`` is accepted). A project's config inherits it by that path:
    ``_base_ = ['/abs/path/printed/by/config_path.py']``. mmengine's ``'mmunirep::...'`` form does
    not work: mmengine 0.10 accepts ``package::`` only for OpenMMLab's own packages
    (open-mmlab/mmengine#1410), and it would tag every inherited dict with the scope ``mmunirep``,
    whose registries hold only mmunirep's own modules, not the frameworks' detectors, datasets or
    transforms.
    """
    parts = [p for p in name.replace('\\', '/').split('/') if p != '.']
    if parts and parts[0] == 'configs':
        parts = parts[1:]
    if (
        not parts
        or osp.isabs(name)
        or '..' in parts
        or '' in parts
        or not parts[-1].endswith('.py')
    ):
        raise ValueError(
            f'expected a config name (.py) relative to configs/, such as '
            f"'detection/unireplknet_s_22k_cascade_3x.py', got {name!r}"
        )
    root = configs_dir()
    path = osp.join(root, *parts)
    if not osp.isfile(path):
        known = sorted(
            osp.relpath(osp.join(d, f), root).replace(os.sep, '/')
            for d, _, files in os.walk(root)
            for f in files
            if f.endswith('.py') and '_base_' not in d
        )
        raise FileNotFoundError(
            f'no config {name!r} in {root}; the configs are: ' + ', '.join(known)
        )
    return path


def framework_of(cfg: Config) -> str:
    """'mmdet' or 'mmseg', from the config's ``default_scope``."""
    scope = cfg.get('default_scope')
    if scope not in FRAMEWORKS:
        raise ValueError(
            f'expected a config whose default_scope is one of {FRAMEWORKS} '
            f'(an MMDetection or MMSegmentation config), got {scope!r}'
        )
    return scope


def clear_pretrained(cfg: Config) -> None:
    """Drop the model's pretrained-weight settings (the backbone's ``init_cfg`` and
    ``pretrained``, MMSegmentation's ``model.pretrained``): a trained checkpoint provides every
    weight, and nothing is downloaded."""
    model = cfg.model
    if model.get('pretrained') is not None:
        model['pretrained'] = None
    backbone = model.get('backbone')
    if backbone is not None:
        if backbone.get('init_cfg') is not None:
            backbone['init_cfg'] = None
        if backbone.get('pretrained') is not None:
            backbone['pretrained'] = None


def prepare_cfg(
    config: str,
    work_dir: Optional[str] = None,
    cfg_options: Optional[dict] = None,
    launcher: str = 'none',
) -> Config:
    """Load ``config``, merge ``--cfg-options``, set the launcher and the work dir."""
    if not osp.isfile(config):
        raise FileNotFoundError(f'config file not found: {config!r}')
    try:
        cfg = Config.fromfile(config)
    except AssertionError as e:
        if 'load mmunirep config' not in str(e):
            raise
        # mmengine's own message ("does not support to load mmunirep config") does not say why
        raise ValueError(
            f'{config} inherits a config as mmunirep::NAME, which mmengine 0.10 '
            'cannot resolve: inherit it by its path instead, as printed by python '
            '-c "from mmunirep.utils import config_path; print(config_path(NAME))"'
        ) from e
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    framework_of(cfg)
    if not torch.cuda.is_available():
        adapt_to_cpu(cfg)
        if launcher in ('slurm', 'mpi'):
            # mmengine's init_dist for these sets a CUDA device per process
            raise ValueError(
                f'--launcher {launcher} needs CUDA GPUs; none is visible. Distributed training '
                'on the CPU runs with --launcher pytorch (tools/dist_train.sh)'
            )
        if launcher == 'pytorch':
            init_cpu_process_group()
            # mmengine's DDP wrapper gets device_ids=[LOCAL_RANK] unless the config sets it, and
            # DDP accepts device ids only for GPU modules
            cfg.setdefault(
                'model_wrapper_cfg',
                dict(
                    type='MMDistributedDataParallel',
                    device_ids=None,
                    broadcast_buffers=False,
                    find_unused_parameters=cfg.get('find_unused_parameters', False),
                ),
            )
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    return cfg


def _replace_syncbn(node) -> int:
    count = 0
    if isinstance(node, dict):
        if node.get('type') in ('SyncBN', 'MMSyncBN') and set(node) <= {
            'type',
            'requires_grad',
            'eps',
            'momentum',
        }:
            node['type'] = 'BN'
            count += 1
        for value in node.values():
            count += _replace_syncbn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            count += _replace_syncbn(value)
    return count


def adapt_to_cpu(cfg: Config) -> None:
    """Make a GPU recipe run on CPU processes, saying what changed.

    torch's SyncBatchNorm needs CUDA tensors once a process group exists (several processes), so
    every ``SyncBN`` norm config becomes ``BN`` (the same layer on one process); the NCCL backend
    needs GPUs, so distributed runs use gloo.
    """
    changed = _replace_syncbn(cfg._cfg_dict['model'] if 'model' in cfg else {})
    if changed:
        print_log(f'no CUDA device: {changed} SyncBN norm configs replaced by BN', logger='current')
    dist_cfg = cfg.get('env_cfg', {}).get('dist_cfg', {})
    if dist_cfg.get('backend', 'nccl') == 'nccl':
        cfg.merge_from_dict({'env_cfg.dist_cfg.backend': 'gloo'})
        print_log(
            'no CUDA device: env_cfg.dist_cfg.backend nccl replaced by gloo (used by '
            'distributed runs)',
            logger='current',
        )


def init_cpu_process_group() -> None:
    """Join the torchrun process group over gloo, for CPU processes.

    mmengine's pytorch launcher calls ``torch.cuda.set_device`` before it initializes the group,
    which fails without a GPU; the Runner skips its own initialization when a group exists.
    """
    import torch.distributed as dist

    if dist.is_available() and not dist.is_initialized():
        dist.init_process_group(backend='gloo')
        print_log(
            f'no CUDA device: rank {dist.get_rank()} of {dist.get_world_size()} joined '
            'the process group over gloo',
            logger='current',
        )


_left_a_process_group = False


def leave_process_group() -> None:
    """Destroy the process group, if there is one, while the interpreter is fully alive.

    Neither mmengine's Runner nor torch does it before exit. The tools call it after a successful
    run only: after a failure the other ranks may never reach it. With gloo it is not enough to
    exit cleanly: see :func:`end_distributed_process`.
    """
    global _left_a_process_group
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        _left_a_process_group = True


def end_distributed_process() -> None:
    """End a tool's process now if it left a process group: atexit handlers (logging's flush
    among them) run first, then ``os._exit(0)`` skips the interpreter's finalization.

    Why: a gloo worker thread still freeing the tensors of the last collective (mmengine
    broadcasts the metrics) when the interpreter finalizes needs the GIL, is made to exit, and
    the unwind through a noexcept frame calls std::terminate: "terminate called without an
    active exception", SIGABRT after a successful run (pytorch/pytorch#190489). Destroying the
    group does not join those threads: torch keeps it alive. ``torch.distributed.nn.functional``'s
    functions take ``group=group.WORLD`` as a default argument, evaluated when that module is
    first imported, and DistributedDataParallel's constructor imports it (through
    ``torch._dynamo``) after the group exists; mmengine's Runner also holds the wrapped model in
    reference cycles until the interpreter's last collection. Nothing in mmengine or torch ends
    a process without that finalization, hence this function. Only the tools' ``__main__``
    calls it: tests and users that call ``main()`` keep their interpreter.
    """
    if not _left_a_process_group:
        return
    import atexit
    import sys

    atexit._run_exitfuncs()  # what a normal exit runs first: logging.shutdown, torch's own
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)
