"""A BatchNorm-statistics guard for gradient checkpointing's recomputation, so that a checkpointed
block updates its running statistics once per step, as an unchecked one does."""

import torch
import torch.nn as nn


class KeepBatchNormStatistics:
    """The recomputation context of a checkpointed block: its BatchNorms' running statistics
    come out of the recomputation as they went in.

    torch's checkpoint runs the block's forward again in the backward pass, and a BatchNorm in
    training mode updates its running mean, variance and batch count on every forward, so each
    step would update them twice (an effective momentum of 1 - (1 - m)^2 and a doubled count,
    which the authors' code did). torch offers no switch for it; the buffers are per channel, so
    saving and restoring them costs nothing next to the block.
    """

    def __init__(self, module: nn.Module):
        self.bns = [
            m
            for m in module.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.training
            and m.track_running_stats
        ]

    def __enter__(self):
        self.saved = [
            (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
            for bn in self.bns
        ]

    def __exit__(self, *exc_info):
        with torch.no_grad():
            for bn, buffers in zip(self.bns, self.saved):
                for buf, value in zip(
                    (bn.running_mean, bn.running_var, bn.num_batches_tracked), buffers
                ):
                    buf.copy_(value)
        return False
