"""mmunirep: UniRepLKNet for OpenMMLab 2.0.

Importing the package registers everything it provides (backbone, optimizer wrapper constructor)
in the ``mmunirep`` registry scope, whose registries are children of mmengine's root registries, so
that ``type='UniRepLKNet'`` and ``type='mmunirep.UniRepLKNet'`` resolve from MMDetection and
MMSegmentation configs loaded with ``custom_imports=dict(imports=['mmunirep'])``. It also lets
mmengine's own checkpoints load under torch's ``weights_only=True`` default
(see :mod:`mmunirep.utils.checkpoint`).
"""

from . import engine, models  # noqa: F401,E402  (registers modules)
from .utils import checkpoint as _checkpoint  # noqa: E402
from .version import __version__  # noqa: F401

_checkpoint.install()

__all__ = ['__version__', 'engine', 'models']
