"""The ``mmunirep`` registry scope.

Our registries are children of mmengine's root registries under the scope ``mmunirep``, so a
config in any OpenMMLab scope can name ``type='mmunirep.UniRepLKNet'`` (mmengine imports
``mmunirep.registry`` and finds the child scope). MMDetection and MMSegmentation look up an
unqualified ``type='UniRepLKNet'`` in their own registry and then its ancestors only, never in a
sibling scope, so :func:`register_module` also registers each class in the root registry, which is
every scope's ancestor.
"""

from mmengine.registry import HOOKS as ROOT_HOOKS
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as ROOT_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import Registry

MODELS = Registry('model', parent=ROOT_MODELS, scope='mmunirep', locations=['mmunirep.models'])
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    'optimizer wrapper constructor',
    parent=ROOT_OPTIM_WRAPPER_CONSTRUCTORS,
    scope='mmunirep',
    locations=['mmunirep.engine'],
)
HOOKS = Registry('hook', parent=ROOT_HOOKS, scope='mmunirep', locations=['mmunirep.engine'])


def register_module(registry: Registry):
    """Class decorator: register in ``registry`` (scope ``mmunirep``) and in its root parent."""

    def _register(cls):
        registry.register_module(module=cls)
        registry.parent.register_module(module=cls)
        return cls

    return _register
