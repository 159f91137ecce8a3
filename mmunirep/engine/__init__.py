from .hooks import NonFiniteLossHook, ReproducibleResumeHook
from .layer_decay_optim_wrapper import UniRepLKNetLayerDecayOptimWrapperConstructor

__all__ = [
    'NonFiniteLossHook',
    'ReproducibleResumeHook',
    'UniRepLKNetLayerDecayOptimWrapperConstructor',
]
