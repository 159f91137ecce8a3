"""Squeeze-and-excitation with the authors' parameter names, so that their checkpoints load."""

import torch
import torch.nn as nn
import torch.nn.functional as F


class SEBlock(nn.Module):
    """Squeeze-and-excitation with the authors' names (``down``, ``up``); NCHW.

    timm's ``SqueezeExcite`` names its convs differently, which would break checkpoint loading.
    The 1x1 convs run as linear layers on the pooled vector: the same products, without a
    convolution's dispatch (in ONNX, a Gemm rather than a Conv on a 1x1 map).
    """

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.down = nn.Conv2d(channels, hidden, 1, bias=True)
        self.up = nn.Conv2d(hidden, channels, 1, bias=True)

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The per-image channel factors of an NCHW map, ``(N, C, 1, 1)``."""
        w = F.adaptive_avg_pool2d(x, 1).flatten(1)
        w = F.relu(F.linear(w, self.down.weight.flatten(1), self.down.bias))
        w = torch.sigmoid(F.linear(w, self.up.weight.flatten(1), self.up.bias))
        return w[:, :, None, None]

    def conv_channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`channel_weights` in the authors' form, convolutions on the pooled map: in an
        ONNX export the factors stay in onnxruntime's blocked-channel layout."""
        w = F.relu(self.down(F.adaptive_avg_pool2d(x, 1)))
        return torch.sigmoid(self.up(w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.channel_weights(x)
