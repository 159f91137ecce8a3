"""Structural re-parameterization: the Dilated Reparam Block, and the helpers that fold BatchNorms
and dilated kernels into the single depthwise convolution of the inference structure."""

from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmunirep.ops import DepthwiseConv2d, SameDepthwiseConv2d

from .norm import build_batch_norm

# Dilated Reparam Block branches: large kernel K -> ((branch kernel, dilation), ...)
DILATED_BRANCHES: Dict[int, Tuple[Tuple[int, int], ...]] = {
    5: ((3, 1), (3, 2)),
    7: ((5, 1), (3, 2), (3, 3)),
    9: ((5, 1), (5, 2), (3, 3), (3, 4)),
    11: ((5, 1), (5, 2), (3, 3), (3, 4), (3, 5)),
    13: ((5, 1), (7, 2), (3, 3), (3, 4), (3, 5)),
    15: ((5, 1), (7, 2), (3, 3), (3, 5), (3, 7)),
    17: ((5, 1), (9, 2), (3, 4), (3, 5), (3, 7)),
}


def fuse_bn(
    weight: torch.Tensor, bias: Optional[torch.Tensor], bn: nn.modules.batchnorm._BatchNorm
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BN that follows a conv (weight ``[C_out, ...]``) into weight and bias."""
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std
    bias = torch.zeros_like(bn.running_mean) if bias is None else bias
    return (
        weight * scale.reshape(-1, *([1] * (weight.dim() - 1))),
        bn.bias + (bias - bn.running_mean) * scale,
    )


def dilated_to_dense(kernel: torch.Tensor, dilation: int) -> torch.Tensor:
    """The dense kernel equivalent to ``kernel`` applied with ``dilation`` (any device/dtype)."""
    if dilation == 1:
        return kernel
    c, g, k, _ = kernel.shape
    size = dilation * (k - 1) + 1
    dense = kernel.new_zeros(c, g, size, size)
    dense[:, :, ::dilation, ::dilation] = kernel
    return dense


def make_depthwise_conv(
    channels: int, kernel_size: int, bias: bool, use_lk_op: bool = False
) -> nn.Conv2d:
    """A stride-1, "same"-padded depthwise conv; the large-kernel op for kernels > 5 if asked."""
    if use_lk_op and kernel_size > 5:
        return DepthwiseConv2d(channels, kernel_size, bias=bias)
    return SameDepthwiseConv2d(channels, kernel_size, bias=bias)


def keep_trainable(module: nn.Module, like: torch.Tensor) -> None:
    """Give a module that re-parameterization built the ``requires_grad`` of the weight it
    replaces, so that frozen stages stay frozen."""
    for p in module.parameters():
        p.requires_grad_(like.requires_grad)


class DilatedReparamBlock(nn.Module):
    """A large depthwise kernel plus parallel dilated small kernels, each followed by BN; NCHW.

    :meth:`merge_dilated_branches` folds every branch and BN into ``lk_origin`` (one large kernel
    with a bias), which is also what ``deploy=True`` builds.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        deploy: bool = False,
        norm_cfg: dict = dict(type='BN'),
        use_lk_op: bool = False,
    ):
        super().__init__()
        if kernel_size not in DILATED_BRANCHES:
            raise ValueError(
                f'DilatedReparamBlock supports kernel sizes {sorted(DILATED_BRANCHES)}, '
                f'got {kernel_size}'
            )
        self.kernel_size = kernel_size
        self.branches = DILATED_BRANCHES[kernel_size]
        self.use_lk_op = use_lk_op
        self.lk_origin = make_depthwise_conv(
            channels, kernel_size, bias=deploy, use_lk_op=use_lk_op
        )
        if not deploy:
            self.origin_bn = build_batch_norm(norm_cfg, channels)
            for k, r in self.branches:
                self.add_module(
                    f'dil_conv_k{k}_{r}',
                    nn.Conv2d(
                        channels,
                        channels,
                        k,
                        stride=1,
                        padding=(r * (k - 1) + 1) // 2,
                        dilation=r,
                        groups=channels,
                        bias=False,
                    ),
                )
                self.add_module(f'dil_bn_k{k}_{r}', build_batch_norm(norm_cfg, channels))
        # The authors' deploy=True block stores this kernel as `dwconv.weight`, while their
        # re-parameterized model stores it as `dwconv.lk_origin.weight`: accept both.
        self._register_load_state_dict_pre_hook(self._accept_flat_deploy_keys)

    @property
    def merged(self) -> bool:
        return not hasattr(self, 'origin_bn')

    def _accept_flat_deploy_keys(self, state_dict, prefix, *args):
        if self.merged:
            for name in ('weight', 'bias'):
                if prefix + name in state_dict and prefix + 'lk_origin.' + name not in state_dict:
                    state_dict[prefix + 'lk_origin.' + name] = state_dict.pop(prefix + name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.lk_origin(x)
        out = self.origin_bn(self.lk_origin(x))
        for k, r in self.branches:
            out = out + getattr(self, f'dil_bn_k{k}_{r}')(getattr(self, f'dil_conv_k{k}_{r}')(x))
        return out

    @torch.no_grad()
    def merge_dilated_branches(self) -> None:
        """Fold the branches and their BNs into one large kernel with bias (idempotent)."""
        if self.merged:
            return
        kernel, bias = fuse_bn(self.lk_origin.weight, self.lk_origin.bias, self.origin_bn)
        for k, r in self.branches:
            branch_k, branch_b = fuse_bn(
                getattr(self, f'dil_conv_k{k}_{r}').weight, None, getattr(self, f'dil_bn_k{k}_{r}')
            )
            dense = dilated_to_dense(branch_k, r)
            pad = self.kernel_size // 2 - dense.size(-1) // 2
            kernel = kernel + F.pad(dense, [pad] * 4)
            bias = bias + branch_b
        merged = make_depthwise_conv(
            kernel.size(0), self.kernel_size, bias=True, use_lk_op=self.use_lk_op
        ).to(kernel.device, kernel.dtype)
        merged.weight.copy_(kernel)
        merged.bias.copy_(bias)
        keep_trainable(merged, like=self.lk_origin.weight)
        self.lk_origin = merged
        del self.origin_bn
        for k, r in self.branches:
            delattr(self, f'dil_conv_k{k}_{r}')
            delattr(self, f'dil_bn_k{k}_{r}')
