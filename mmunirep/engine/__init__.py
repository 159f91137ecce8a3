from .hooks import ReproducibleResumeHook
from .layer_decay_optim_wrapper import UniRepLKNetLayerDecayOptimWrapperConstructor

__all__ = ['ReproducibleResumeHook', 'UniRepLKNetLayerDecayOptimWrapperConstructor']
