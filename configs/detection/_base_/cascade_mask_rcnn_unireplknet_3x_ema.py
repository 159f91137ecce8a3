# The IN-22K runs: the recipe plus EMA of the weights.
#
# The authors used MMDetection 2's ExpMomentumEMAHook(momentum=1e-4): every iteration
# ema = (1 - m) * ema + m * param with m = (1 - 1e-4) * exp(-(1 + iter) / 2000) + 1e-4, applied to
# the buffers too (skip_buffers=False), and the averaged weights are the ones evaluated and saved.
# MMDetection 3's ExpMomentumEMA follows the same convention (momentum weighs the new value, the
# same exponential warm-up over gamma=2000 iterations); update_buffers=True averages the BN
# statistics as the authors' hook did, and mmengine's EMAHook evaluates and saves the averaged
# weights. (A plain EMA with momentum 1e-4 would weigh the first weights for ~10k iterations.)
_base_ = ['./cascade_mask_rcnn_unireplknet_3x.py']
custom_hooks = [
    dict(type='ReproducibleResumeHook'),
    dict(
        type='EMAHook',
        ema_type='ExpMomentumEMA',
        momentum=1e-4,
        gamma=2000,
        update_buffers=True,
        priority=49,
    ),
]
