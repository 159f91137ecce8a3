"""UniRepLKNet (Ding et al., CVPR 2024 / TPAMI 2025) as an OpenMMLab 2.0 backbone.

One backbone serves MMDetection and MMSegmentation. It and its building blocks
(:mod:`mmunirep.models.utils`) need only torch, mmengine and timm. State-dict keys equal the
authors' implementation's (``downsample_layers.*``, ``stages.i.j.*``, ``norm{i}``), so their
released checkpoints load as they are.

Layouts: the backbone takes and returns NCHW tensors; inside a block, ``pwconv1`` turns the map into
NHWC for the two linear layers and GRN, and ``pwconv2`` turns it back.
"""

import contextlib
import inspect
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.logging import print_log
from mmengine.model import BaseModule, initialize
from mmengine.model.weight_init import PretrainedInit
from timm.layers import DropPath, trunc_normal_

from mmunirep.ops import cpu_linear
from mmunirep.registry import MODELS, register_module
from mmunirep.utils.checkpoint import (
    CheckpointError,
    backbone_state_dict,
    check_finite,
    nest_flat_deploy_kernels,
    read_checkpoint,
    structure_mismatch,
)

# the building blocks, also importable from here
from ..utils import (  # noqa: F401
    DILATED_BRANCHES,
    GRN,
    ChannelsFirstLayerNorm,
    DilatedReparamBlock,
    KeepBatchNormStatistics,
    NCHWtoNHWC,
    NHWCtoNCHW,
    SEBlock,
    at_least_fp32,
    build_batch_norm,
    dilated_to_dense,
    fuse_bn,
    keep_trainable,
    make_depthwise_conv,
    pooled_l2_norm,
    scaled_linear,
    spatial_l2_norm,
    takes_inference_path,
)

# ---------------------------------------------------------------------------------------------
# Architecture tables (../shared/REFERENCE.md, the paper and the authors' code)
# ---------------------------------------------------------------------------------------------
_K_AFP = ((3, 3), (13, 13), (13,) * 6, (13, 13))
_K_N = ((3, 3), (13, 13), (13,) * 8, (13, 13))
_K_T = ((3, 3, 3), (13, 13, 13), (13, 3) * 9, (13, 13, 13))
_K_SBLXL = ((3, 3, 3), (13, 13, 13), (13, 3, 3) * 9, (13, 13, 13))

ARCH_SETTINGS: Dict[str, dict] = {
    'a': dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), kernel_sizes=_K_AFP),
    'f': dict(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384), kernel_sizes=_K_AFP),
    'p': dict(depths=(2, 2, 6, 2), dims=(64, 128, 256, 512), kernel_sizes=_K_AFP),
    'n': dict(depths=(2, 2, 8, 2), dims=(80, 160, 320, 640), kernel_sizes=_K_N),
    't': dict(depths=(3, 3, 18, 3), dims=(80, 160, 320, 640), kernel_sizes=_K_T),
    's': dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768), kernel_sizes=_K_SBLXL),
    'b': dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024), kernel_sizes=_K_SBLXL),
    'l': dict(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536), kernel_sizes=_K_SBLXL),
    'xl': dict(depths=(3, 3, 27, 3), dims=(256, 512, 1024, 2048), kernel_sizes=_K_SBLXL),
}

PLAIN_KERNELS = (3, 5)  # blocks with these kernels use a plain depthwise conv
BLOCK_KERNELS = PLAIN_KERNELS + tuple(k for k in DILATED_BRANCHES if k >= 7)


# ---------------------------------------------------------------------------------------------
# The block
# ---------------------------------------------------------------------------------------------
class UniRepLKNetBlock(nn.Module):
    """dwconv -> BN -> SE -> Linear -> GELU -> GRN -> Linear -> BN -> layer scale, plus the input.

    NCHW in and out. ``kernel_size`` 3 or 5 gives a plain depthwise conv, 7 to 17 a
    :class:`DilatedReparamBlock`.
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int,
        drop_path: float = 0.0,
        layer_scale_init_value: float = 1e-6,
        deploy: bool = False,
        norm_cfg: dict = dict(type='BN'),
        with_cp: bool = False,
        use_lk_op: bool = False,
        ffn_factor: int = 4,
    ):
        super().__init__()
        if kernel_size not in BLOCK_KERNELS:
            raise ValueError(
                f'block kernel sizes must be one of {BLOCK_KERNELS}, got {kernel_size}'
            )
        self.with_cp = with_cp
        self.use_lk_op = use_lk_op
        if kernel_size >= 7:
            self.dwconv = DilatedReparamBlock(
                dim, kernel_size, deploy=deploy, norm_cfg=norm_cfg, use_lk_op=use_lk_op
            )
        else:
            self.dwconv = make_depthwise_conv(dim, kernel_size, bias=deploy)
        self.norm = nn.Identity() if deploy else build_batch_norm(norm_cfg, dim)
        self.se = SEBlock(dim, dim // 4)
        ffn_dim = int(ffn_factor * dim)
        self.pwconv1 = nn.Sequential(NCHWtoNHWC(), nn.Linear(dim, ffn_dim))
        self.act = nn.Sequential(nn.GELU(), GRN(ffn_dim, use_bias=not deploy))
        if deploy:
            self.pwconv2 = nn.Sequential(nn.Linear(ffn_dim, dim), NHWCtoNCHW())
        else:
            self.pwconv2 = nn.Sequential(
                nn.Linear(ffn_dim, dim, bias=False), NHWCtoNCHW(), build_batch_norm(norm_cfg, dim)
            )
        if not deploy and layer_scale_init_value is not None and layer_scale_init_value > 0:
            self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim))
        else:
            self.gamma = None
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    @property
    def deploy(self) -> bool:
        return isinstance(self.norm, nn.Identity) and len(self.pwconv2) == 2

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        if takes_inference_path():
            if torch.onnx.is_in_onnx_export():
                return self._export_residual(x)
            return self._inference_residual(x)
        y = self.se(self.norm(self.dwconv(x)))
        y = self.pwconv2(self.act(self.pwconv1(y)))
        if self.gamma is not None:
            y = self.gamma.view(1, -1, 1, 1) * y
        return x + self.drop_path(y)

    def _inference_residual(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`_residual`'s result with fewer passes over the maps and fewer allocations:
        the squeeze-and-excitation and GRN factors are applied through :func:`scaled_linear`, the
        linear layers run through :func:`cpu_linear` (the first with its GELU), and the block's
        own maps are scaled and summed in place."""
        y = self.norm(self.dwconv(x))
        se_scale = self.se.channel_weights(y).permute(0, 2, 3, 1)
        y = scaled_linear(y.permute(0, 2, 3, 1), se_scale, self.pwconv1[1], inplace=True, gelu=True)
        grn = self.act[1]
        linear = self.pwconv2[0]
        if grn.use_bias:  # the training structure: GRN's bias comes after the scale
            y = cpu_linear(grn(y), linear.weight, linear.bias)
        else:
            y = scaled_linear(y, grn.channel_scale(y), linear, inplace=True)
        y = y.permute(0, 3, 1, 2)
        if len(self.pwconv2) == 3:  # the training structure's BN
            y = self.pwconv2[2](y)
        if self.gamma is not None:
            y = y.mul_(self.gamma.view(1, -1, 1, 1))
        return self.drop_path(y).add_(x)

    def _export_residual(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`_residual`'s result for the ONNX export, in NCHW throughout: the linear layers
        as 1x1 convolutions, the squeeze-and-excitation as the authors' convolutions and GRN's
        spatial sum as a global average pool. onnxruntime then keeps the block's maps in its
        blocked-channel (NCHWc) layout from the depthwise conv to the second linear layer, with
        no transposes, reordering them only for the two per-channel products."""
        y = self.norm(self.dwconv(x))
        y = y * self.se.conv_channel_weights(y)
        linear = self.pwconv1[1]
        y = self.act[0](F.conv2d(y, linear.weight[:, :, None, None], linear.bias))
        grn = self.act[1]
        y = y * grn.channel_scale(y, channels_first=True)
        if grn.use_bias:
            y = y + grn.beta.reshape(1, -1, 1, 1)
        linear = self.pwconv2[0]
        y = F.conv2d(y, linear.weight[:, :, None, None], linear.bias)
        if len(self.pwconv2) == 3:  # the training structure's BN
            y = self.pwconv2[2](y)
        if self.gamma is not None:
            y = y * self.gamma.view(1, -1, 1, 1)
        return self.drop_path(y) + x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            if torch.compiler.is_compiling():
                # AOTAutograd recomputes the block functionally: no second statistics update
                return cp.checkpoint(self._residual, x, use_reentrant=False)
            return cp.checkpoint(
                self._residual,
                x,
                use_reentrant=False,
                context_fn=lambda: (contextlib.nullcontext(), KeepBatchNormStatistics(self)),
            )
        return self._residual(x)

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        """Convert this block to its inference structure in place (idempotent).

        Merges the dilated branches, folds the BN after the depthwise conv into it, and folds the
        GRN bias, the last BN and the layer scale into the second linear layer.
        """
        if self.deploy:
            return
        if isinstance(self.dwconv, DilatedReparamBlock):
            self.dwconv.merge_dilated_branches()
            conv = self.dwconv.lk_origin
        else:
            conv = self.dwconv
        kernel, bias = fuse_bn(conv.weight, conv.bias, self.norm)
        new_conv = make_depthwise_conv(
            conv.in_channels, conv.kernel_size[0], bias=True, use_lk_op=self.use_lk_op
        ).to(kernel.device, kernel.dtype)
        new_conv.weight.copy_(kernel)
        new_conv.bias.copy_(bias)
        keep_trainable(new_conv, like=conv.weight)
        if isinstance(self.dwconv, DilatedReparamBlock):
            self.dwconv.lk_origin = new_conv
        else:
            self.dwconv = new_conv
        self.norm = nn.Identity()

        linear, bn = self.pwconv2[0], self.pwconv2[2]
        grn = self.act[1]
        lin_bias = linear.weight @ grn.beta.reshape(-1)  # GRN bias through the linear layer
        if linear.bias is not None:
            lin_bias = lin_bias + linear.bias
        weight, bias = fuse_bn(linear.weight, lin_bias, bn)
        if self.gamma is not None:
            weight = weight * self.gamma.reshape(-1, 1)
            bias = bias * self.gamma
        new_linear = nn.Linear(linear.in_features, linear.out_features, bias=True).to(
            weight.device, weight.dtype
        )
        new_linear.weight.copy_(weight)
        new_linear.bias.copy_(bias)
        keep_trainable(new_linear, like=linear.weight)
        self.pwconv2 = nn.Sequential(new_linear, NHWCtoNCHW())
        del grn.beta
        self.gamma = None


# ---------------------------------------------------------------------------------------------
# The backbone
# ---------------------------------------------------------------------------------------------
@register_module(MODELS)
class UniRepLKNet(BaseModule):
    """UniRepLKNet backbone: NCHW image in, a tuple of NCHW features at strides 4/8/16/32 out.

    Args:
        arch (str | dict): 'a', 'f', 'p', 'n', 't', 's', 'b', 'l' or 'xl', or a dict with
            ``depths`` and ``dims`` (4 each) and optional ``kernel_sizes`` (one tuple per stage).
        in_channels (int): image channels.
        out_indices (Sequence[int]): stages to return; each goes through its own output norm
            ``norm{i}`` (channels-first LayerNorm unless ``downsample_norm_cfg`` says otherwise).
            Stages after the last one listed are not run: they stay in the module, so that
            checkpoints load as they are, but are frozen (``requires_grad=False``), so that
            distributed training finds no parameter without a gradient.
        frozen_stages (int): -1 freezes nothing; ``i >= 0`` freezes the down-sampling layers,
            blocks and output norms of stages ``0..i``.
        norm_eval (bool): keep the BatchNorms in eval mode during training.
        norm_cfg (dict): the BatchNorms inside the blocks: ``dict(type='BN')`` or ``'SyncBN'``.
        downsample_norm_cfg (dict, optional): the norms of the stem, the down-sampling layers and
            the outputs (``norm{i}``). None (default): the paper's channels-first LayerNorm,
            which the released checkpoints hold. ``dict(type='BN')`` / ``'SyncBN'`` puts
            BatchNorm there instead: not the paper's network, but one that trains detection
            from scratch in minutes (the detection quick start; see its config).
        drop_path_rate (float): stochastic depth, linearly increasing over all blocks.
        layer_scale_init_value (float): initial layer scale; 0 or None disables it.
        with_cp (bool): gradient checkpointing of each block (saves memory; same outputs,
            gradients and BatchNorm statistics: see :class:`KeepBatchNormStatistics`).
        deploy (bool): build the inference (re-parameterized) structure.
        use_lk_op (bool): use :class:`mmunirep.ops.DepthwiseConv2d` for the kernels
            larger than 5 (falls back to ``F.conv2d`` where its CUDA kernels are unavailable).
        compile (bool | dict): run the forward pass through ``torch.compile`` (a dict: its
            arguments, e.g. ``dict(mode='max-autotune')``). The backbone alone, unlike mmengine's
            ``compile=True``, which compiles the whole train step and so also the detector's
            heads and data pre-processor, whose changing box counts recompile them. The state
            dict, checkpoints and re-parameterization are those of the eager module.
        pretrained (str, optional): deprecated, use ``init_cfg``.
        init_cfg (dict | list[dict], optional): ``dict(type='Pretrained', checkpoint=PATH_OR_URL)``
            (optionally ``prefix``, ``map_location``) loads the authors' released classification
            checkpoints or our own. In a list, the other entries (mmengine initializers) apply
            first and the checkpoint last, as mmengine orders them; with a checkpoint the
            authors' truncated-normal initialization is skipped, so weights that neither the
            checkpoint nor another entry sets keep PyTorch's default initialization.
    """

    arch_settings = ARCH_SETTINGS
    num_stages = 4

    def __init__(
        self,
        arch: Union[str, dict] = 't',
        in_channels: int = 3,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        frozen_stages: int = -1,
        norm_eval: bool = False,
        norm_cfg: dict = dict(type='BN'),
        downsample_norm_cfg: Optional[dict] = None,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float = 1e-6,
        with_cp: bool = False,
        deploy: bool = False,
        use_lk_op: bool = False,
        compile: Union[bool, dict] = False,
        pretrained: Optional[str] = None,
        init_cfg: Optional[Union[dict, List[dict]]] = None,
    ):
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError('give either init_cfg or pretrained (deprecated), not both')
            warnings.warn(
                'UniRepLKNet(pretrained=...) is deprecated; use '
                "init_cfg=dict(type='Pretrained', checkpoint=...)",
                DeprecationWarning,
                stacklevel=2,
            )
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        self._check_init_cfg(init_cfg)
        super().__init__(init_cfg=init_cfg)

        self.depths, self.dims, self.kernel_sizes = self._parse_arch(arch)
        self.out_indices = self._parse_out_indices(out_indices)
        self.last_stage = max(self.out_indices)
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages < self.num_stages:
            raise ValueError(
                f'frozen_stages must be an int in [-1, {self.num_stages - 1}] '
                f'(-1 freezes nothing), got {frozen_stages!r}'
            )
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f'drop_path_rate must be in [0, 1), got {drop_path_rate}')
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        self.compile_kwargs = self._parse_compile(compile)

        dims = self.dims
        self.downsample_norm_cfg = downsample_norm_cfg

        def outer_norm(channels):
            if downsample_norm_cfg is None:
                return ChannelsFirstLayerNorm(channels, eps=1e-6)
            return build_batch_norm(downsample_norm_cfg, channels)

        self.downsample_layers = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(in_channels, dims[0] // 2, kernel_size=3, stride=2, padding=1),
                    outer_norm(dims[0] // 2),
                    nn.GELU(),
                    nn.Conv2d(dims[0] // 2, dims[0], kernel_size=3, stride=2, padding=1),
                    outer_norm(dims[0]),
                )
            ]
        )
        for i in range(self.num_stages - 1):
            self.downsample_layers.append(
                nn.Sequential(
                    nn.Conv2d(dims[i], dims[i + 1], kernel_size=3, stride=2, padding=1),
                    outer_norm(dims[i + 1]),
                )
            )

        # torch.linspace's values, in Python: no tensor, so that the backbone can be built on the
        # meta device
        n = sum(self.depths)
        dp_rates = [drop_path_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]
        self.stages = nn.ModuleList()
        cur = 0
        for i in range(self.num_stages):
            self.stages.append(
                nn.Sequential(
                    *[
                        UniRepLKNetBlock(
                            dims[i],
                            self.kernel_sizes[i][j],
                            drop_path=dp_rates[cur + j],
                            layer_scale_init_value=layer_scale_init_value,
                            deploy=deploy,
                            norm_cfg=norm_cfg,
                            with_cp=with_cp,
                            use_lk_op=use_lk_op,
                        )
                        for j in range(self.depths[i])
                    ]
                )
            )
            cur += self.depths[i]
        for i in self.out_indices:
            self.add_module(f'norm{i}', outer_norm(dims[i]))
        self._freeze_stages()
        # Any load (ours, mmengine's Runner with strict=False, a user's) of a checkpoint of the
        # other structure fails with a message naming the right flag, instead of leaving half
        # the weights untouched.
        self._register_load_state_dict_pre_hook(self._check_loaded_structure)

    # -- configuration -------------------------------------------------------------------------
    @staticmethod
    def _split_init_cfg(init_cfg) -> Tuple[Optional[dict], list]:
        """The ``Pretrained`` entry of a dict or list init_cfg (or None), and the other entries."""

        def is_pretrained(c):
            # the forms mmengine's BaseModule and registry accept for it: the name, the scoped
            # name, the class
            t = c.get('type') if isinstance(c, dict) else None
            return t is PretrainedInit or (isinstance(t, str) and t.split('.')[-1] == 'Pretrained')

        entries = (
            list(init_cfg)
            if isinstance(init_cfg, (list, tuple))
            else ([] if init_cfg is None else [init_cfg])
        )
        pretrained = [c for c in entries if is_pretrained(c)]
        others = [c for c in entries if not is_pretrained(c)]
        if len(pretrained) > 1:
            raise ValueError(
                f"expected at most one init_cfg entry of type 'Pretrained', got "
                f'{len(pretrained)}: {[dict(c) for c in pretrained]}'
            )
        return (pretrained[0] if pretrained else None), others

    @classmethod
    def _check_init_cfg(cls, init_cfg) -> None:
        """A ``Pretrained`` init_cfg, alone or in a list, is loaded by this class, which knows
        mmengine's keys for it: refuse others rather than ignore them."""
        pretrained, _ = cls._split_init_cfg(init_cfg)
        if pretrained is None:
            return
        allowed = {'type', 'checkpoint', 'prefix', 'map_location'}
        unknown = sorted(set(pretrained) - allowed)
        if unknown or not pretrained.get('checkpoint'):
            raise ValueError(
                f"init_cfg=dict(type='Pretrained', ...) takes checkpoint (required), "
                f'prefix and map_location; got {dict(pretrained)}'
            )

    def _parse_arch(self, arch):
        if isinstance(arch, str):
            key = arch.lower()
            if key not in self.arch_settings:
                raise ValueError(
                    f'unknown arch {arch!r}: expected one of '
                    f'{sorted(self.arch_settings)} or a dict of depths and dims'
                )
            setting = self.arch_settings[key]
        elif isinstance(arch, dict):
            unknown = set(arch) - {'depths', 'dims', 'kernel_sizes'}
            missing = {'depths', 'dims'} - set(arch)
            if unknown or missing:
                raise ValueError(
                    f'an arch dict needs depths and dims (kernel_sizes optional); '
                    f'missing {sorted(missing)}, unknown {sorted(unknown)}'
                )
            setting = dict(arch)
            if 'kernel_sizes' not in setting:
                defaults = {tuple(s['depths']): s['kernel_sizes'] for s in ARCH_SETTINGS.values()}
                depths = tuple(setting['depths'])
                if depths not in defaults:
                    raise ValueError(
                        f'no default kernel_sizes for depths {depths}: give '
                        f'kernel_sizes, or use depths among {sorted(defaults)}'
                    )
                setting['kernel_sizes'] = defaults[depths]
        else:
            raise TypeError(f'arch must be a str or a dict, got {type(arch).__name__}')
        depths = tuple(int(d) for d in setting['depths'])
        dims = tuple(int(d) for d in setting['dims'])
        kernel_sizes = tuple(tuple(int(k) for k in ks) for ks in setting['kernel_sizes'])
        if len(depths) != 4 or len(dims) != 4 or len(kernel_sizes) != 4:
            raise ValueError(
                f'depths, dims and kernel_sizes need 4 entries (one per stage); got '
                f'{len(depths)}, {len(dims)} and {len(kernel_sizes)}'
            )
        for i, (d, ks) in enumerate(zip(depths, kernel_sizes)):
            if len(ks) != d:
                raise ValueError(f'stage {i} has depth {d} but {len(ks)} kernel sizes: {ks}')
            bad = [k for k in ks if k not in BLOCK_KERNELS]
            if bad:
                raise ValueError(f'stage {i}: kernel sizes must be in {BLOCK_KERNELS}, got {bad}')
        return depths, dims, kernel_sizes

    @staticmethod
    def _parse_compile(compile) -> Optional[dict]:
        """None (eager) or the keyword arguments of torch.compile."""
        if isinstance(compile, bool):
            return {} if compile else None
        if isinstance(compile, dict):
            allowed = set(inspect.signature(torch.compile).parameters) - {'model'}
            unknown = set(compile) - allowed
            if unknown:
                raise ValueError(
                    f'compile: unknown torch.compile arguments {sorted(unknown)}; '
                    f'expected some of {sorted(allowed)}'
                )
            return dict(compile)
        raise TypeError(
            f'compile must be a bool or a dict of torch.compile arguments, got {compile!r}'
        )

    def _parse_out_indices(self, out_indices):
        if isinstance(out_indices, int):
            out_indices = (out_indices,)
        result = []
        for idx in out_indices:
            if not isinstance(idx, int) or not -self.num_stages <= idx < self.num_stages:
                raise ValueError(f'out_indices must be ints in [-4, 3], got {tuple(out_indices)}')
            result.append(idx % self.num_stages)
        if not result or len(set(result)) != len(result):
            raise ValueError(f'out_indices must be non-empty and unique, got {tuple(out_indices)}')
        return tuple(sorted(result))

    @property
    def deploy(self) -> bool:
        """True once every block is in its inference structure."""
        return all(block.deploy for stage in self.stages for block in stage)

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if x.dim() != 4:
            raise ValueError(
                f'UniRepLKNet expects a batch of images (N, C, H, W), got a tensor '
                f'of shape {tuple(x.shape)} (one image: x.unsqueeze(0))'
            )
        # inside an outer compilation (mmengine's compile=True) Dynamo traces the eager forward
        if self.compile_kwargs is None or torch.compiler.is_compiling():
            return self._forward(x)
        return compiled_forward(self.compile_kwargs)(self, x)

    def _forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        outs = []
        for i in range(self.last_stage + 1):
            x = self.stages[i](self.downsample_layers[i](x))
            if i in self.out_indices:
                # timm's LayerNorm2d returns channels-last strides; mmcv's compiled ops (RoIAlign
                # of the RoI heads, among others) read their input as contiguous NCHW
                outs.append(getattr(self, f'norm{i}')(x).contiguous())
        return tuple(outs)

    # -- training behaviour ----------------------------------------------------------------------
    def _freeze_stages(self) -> None:
        # the frozen stages, and those after the last output, which the forward does not run
        unused = range(self.last_stage + 1, self.num_stages)
        for i in sorted(set(range(self.frozen_stages + 1)) | set(unused)):
            modules = [self.downsample_layers[i], self.stages[i]]
            if i in self.out_indices:
                modules.append(getattr(self, f'norm{i}'))
            for m in modules:
                m.eval()
                for p in m.parameters():
                    p.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    # -- re-parameterization ---------------------------------------------------------------------
    def switch_to_deploy(self) -> None:
        """Convert every block to the inference structure in place; outputs stay the same.

        The stem's and down-sampling layers' convs keep their weights in channels-last memory,
        the layout of the maps they convolve: PyTorch would otherwise copy each weight into it on
        every call.
        """
        for stage in self.stages:
            for block in stage:
                block.switch_to_deploy()
        with torch.no_grad():
            for layer in self.downsample_layers:
                for conv in layer.modules():
                    if isinstance(conv, nn.Conv2d):
                        conv.weight.data = conv.weight.contiguous(memory_format=torch.channels_last)

    def reparameterize_unireplknet(self) -> None:
        """Alias of :meth:`switch_to_deploy` (the authors' name)."""
        self.switch_to_deploy()

    # -- layer-wise lr decay ---------------------------------------------------------------------
    def get_layer_depth(
        self, param_name: str, prefix: str = 'backbone.', num_layers: int = 12
    ) -> Tuple[int, int]:
        """Layer id of a parameter for layer-wise lr decay, and the number of layer ids.

        The authors' rule with ``max = num_layers``: downsample 0/1/2/3 -> 0/2/3/max; stage 0 -> 1,
        stage 1 -> 2, stage 2 block j -> 3 + j // 3 (not capped), stage 3 -> max; anything else
        (output norms, neck, heads) -> max + 1. Returns ``(layer_id, num_layers + 2)`` so that
        ``decay ** (total - layer_id - 1)`` is the lr scale and the heads get the base lr.
        """
        total = num_layers + 2
        if not param_name.startswith(prefix):
            return num_layers + 1, total
        name = param_name[len(prefix) :]
        parts = name.split('.')
        if parts[0] == 'downsample_layers':
            layer_id = (0, 2, 3, num_layers)[int(parts[1])]
        elif parts[0] == 'stages':
            stage, block = int(parts[1]), int(parts[2])
            # not capped at num_layers, as in the authors' rule: S (27 blocks) with num_layers=9
            # would give the last blocks of stage 2 ids 10 and 11, above the heads' (no config of
            # ours or of the authors' current configs does that; T uses 9, and its ids end at 8)
            layer_id = (1, 2, 3 + block // 3, num_layers)[stage]
        else:
            layer_id = num_layers + 1
        return layer_id, total

    # -- weights ---------------------------------------------------------------------------------
    def init_weights(self) -> None:
        pretrained, others = self._split_init_cfg(self.init_cfg)
        if pretrained is not None:
            # the other entries first, the checkpoint last, the order of mmengine's BaseModule;
            # the checkpoint through load_pretrained, not mmengine's PretrainedInit, which knows
            # neither the authors' layouts nor that a checkpoint matching no key is an error
            if others:
                initialize(self, others)
            self.load_pretrained(
                pretrained['checkpoint'],
                map_location=pretrained.get('map_location', 'cpu'),
                prefix=pretrained.get('prefix'),
            )
            self._is_init = True
            return
        for m in self.modules():  # the authors' initialization
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.init_cfg is not None:
            super().init_weights()
        self._is_init = True

    def load_pretrained(
        self, checkpoint: str, map_location: str = 'cpu', prefix: Optional[str] = None
    ) -> Dict[str, list]:
        """Load a checkpoint of the authors' or ours into this backbone.

        Accepts a plain state dict, ``{'model': ...}`` or ``{'state_dict': ...}``; with ``prefix``
        takes only the keys under it (e.g. ``'teacher.backbone.'``); strips ``module.`` and
        ``backbone.`` prefixes; ignores the classification ``head.*`` and final ``norm.*``.
        Unmatched keys are logged by name. Raises if no key matches, if shapes differ, or if the
        checkpoint is of the other structure (training vs deploy).

        Returns:
            dict: ``missing`` and ``unexpected`` key names.
        """
        try:
            ckpt = read_checkpoint(checkpoint, map_location=map_location)
        except OSError as e:  # urllib's URLError and HTTPError are OSErrors
            if not str(checkpoint).startswith(('http://', 'https://')):
                raise
            raise RuntimeError(
                f'could not download the UniRepLKNet checkpoint {checkpoint} ({e}). On a machine '
                'without internet access, fetch the file elsewhere and give its path: '
                '--cfg-options model.backbone.init_cfg.checkpoint=/path/to/file.pth'
            ) from e
        own = self.state_dict()
        state = backbone_state_dict(ckpt, source=str(checkpoint), prefix=prefix)
        state = nest_flat_deploy_kernels(state, own)
        check_finite(state, str(checkpoint))
        self._check_structure(state, str(checkpoint))
        matched = [k for k in state if k in own]
        if not matched:
            raise CheckpointError(
                f'checkpoint {checkpoint} matches none of the UniRepLKNet keys: it has e.g. '
                f'{sorted(state)[:5]}, the backbone expects e.g. {sorted(own)[:5]}'
            )
        mismatched = [
            f'{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}'
            for k in matched
            if state[k].shape != own[k].shape
        ]
        if mismatched:
            raise CheckpointError(
                f'checkpoint {checkpoint} does not fit this UniRepLKNet (dims {self.dims}, depths '
                f'{self.depths}); is it another variant? {len(mismatched)} shape mismatches, '
                'e.g.:\n  ' + '\n  '.join(mismatched[:5])
            )
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        self.load_state_dict({k: state[k] for k in matched}, strict=False)
        print_log(
            f'UniRepLKNet: loaded {len(matched)}/{len(own)} tensors from {checkpoint}',
            logger='current',
        )
        if missing:
            print_log(
                f'UniRepLKNet: {len(missing)} keys not in the checkpoint (left as '
                f'initialized): {missing}',
                logger='current',
                level=30,
            )
        if unexpected:
            print_log(
                f'UniRepLKNet: {len(unexpected)} checkpoint keys unused: {unexpected}',
                logger='current',
                level=30,
            )
        return dict(missing=missing, unexpected=unexpected)

    def _check_loaded_structure(self, state_dict, prefix, *args) -> None:
        keys = {k[len(prefix) :]: None for k in state_dict if k.startswith(prefix)}
        self._check_structure(keys, 'the state dict being loaded')

    def _check_structure(self, keys, source: str) -> None:
        """Refuse the keys of the other structure (training vs deploy) or the other stem norm,
        naming the setting that fits, rather than load half of them."""
        problem = structure_mismatch(keys, self.state_dict().keys(), key_prefix='')
        if problem:
            raise CheckpointError(f'{source} does not fit this UniRepLKNet: {problem}')


# torch.compile'd UniRepLKNet._forward, one per set of torch.compile arguments. Module level, not
# an attribute of the backbone: mmengine's EMA deepcopies the model, and a compiled function does
# not survive a deepcopy. Dynamo keeps its compiled code per code object with guards on the
# module it is called with, so the backbones of a process (a model and its EMA copy) share it.
_COMPILED_FORWARDS: Dict[str, Callable] = {}


def compiled_forward(kwargs: dict) -> Callable:
    key = repr(sorted(kwargs.items()))
    if key not in _COMPILED_FORWARDS:
        _COMPILED_FORWARDS[key] = torch.compile(UniRepLKNet._forward, **kwargs)
    return _COMPILED_FORWARDS[key]


def reparameterize_unireplknet(model: nn.Module) -> nn.Module:
    """Switch every UniRepLKNet backbone and block inside ``model`` to deploy structure, in place
    (a backbone's :meth:`UniRepLKNet.switch_to_deploy` also lays out its down-sampling weights)."""
    for m in list(model.modules()):
        if isinstance(m, (UniRepLKNet, UniRepLKNetBlock)):
            m.switch_to_deploy()  # idempotent: a backbone's blocks are skipped after it
    return model


__all__ = [
    'UniRepLKNet',
    'UniRepLKNetBlock',
    'DilatedReparamBlock',
    'GRN',
    'SEBlock',
    'ARCH_SETTINGS',
    'DILATED_BRANCHES',
    'reparameterize_unireplknet',
]
