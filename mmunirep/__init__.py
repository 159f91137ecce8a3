"""mmunirep: UniRepLKNet for OpenMMLab 2.0.

Importing the package registers everything it provides (backbone, optimizer wrapper constructor)
in the ``mmunirep`` registry scope, whose registries are children of mmengine's root registries, so
that ``type='UniRepLKNet'`` and ``type='mmunirep.UniRepLKNet'`` resolve from MMDetection and
MMSegmentation configs loaded with ``custom_imports=dict(imports=['mmunirep'])``. It also lets
mmengine's own checkpoints load under torch's ``weights_only=True`` default
(see :mod:`mmunirep.utils.checkpoint_safety`).
"""
from .version import __version__  # noqa: F401
from . import engine, models  # noqa: F401,E402  (registers modules)
from .utils import checkpoint_safety as _checkpoint_safety  # noqa: E402

_checkpoint_safety.install()

__all__ = ['__version__', 'engine', 'models']
