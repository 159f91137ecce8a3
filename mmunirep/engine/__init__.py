from .hooks import EpochSeedHook
from .layer_decay_optim_wrapper import UniRepLKNetLayerDecayOptimWrapperConstructor

__all__ = ['EpochSeedHook', 'UniRepLKNetLayerDecayOptimWrapperConstructor']
