"""What tools/train.py and tools/test.py share: loading a config and applying the common flags."""
import os.path as osp
from typing import Optional

from mmengine.config import Config, DictAction  # noqa: F401  (DictAction re-exported for tools)

FRAMEWORKS = ('mmdet', 'mmseg')


def framework_of(cfg: Config) -> str:
    """'mmdet' or 'mmseg', from the config's ``default_scope``."""
    scope = cfg.get('default_scope')
    if scope not in FRAMEWORKS:
        raise ValueError(f'expected a config whose default_scope is one of {FRAMEWORKS} '
                         f'(an MMDetection or MMSegmentation config), got {scope!r}')
    return scope


def prepare_cfg(config: str, work_dir: Optional[str] = None, cfg_options: Optional[dict] = None,
                launcher: str = 'none') -> Config:
    """Load ``config``, merge ``--cfg-options``, set the launcher and the work dir."""
    if not osp.isfile(config):
        raise FileNotFoundError(f'config file not found: {config!r}')
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    framework_of(cfg)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    return cfg
