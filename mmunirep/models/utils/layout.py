"""NCHW <-> NHWC permutations as modules: inside a block's ``nn.Sequential``s they keep the
authors' module indices (``pwconv1.1``, ``pwconv2.0``, ``pwconv2.2``), so state-dict keys match."""

import torch
import torch.nn as nn


class NCHWtoNHWC(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


class NHWCtoNCHW(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)
