# EMA of the IN-22K runs. The authors used MMDetection 2's ExpMomentumEMAHook(momentum=1e-4):
# every iteration ema = (1 - m) * ema + m * param with m = (1 - 1e-4) * exp(-(1 + iter) / 2000)
# + 1e-4, applied to buffers too (skip_buffers=False). MMDetection 3's ExpMomentumEMA uses the
# same convention (momentum weighs the new value, same exponential warm-up over gamma=2000
# iterations); update_buffers=True averages the BN statistics as the authors' hook did.
custom_hooks = [
    dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=1e-4, gamma=2000,
         update_buffers=True, priority=49)
]
