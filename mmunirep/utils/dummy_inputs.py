"""Synthetic batches for timing, FLOP counting and export (no dataset needed)."""

from typing import List, Tuple

import torch


def dummy_batch(
    model, framework: str, batch_size: int, height: int, width: int
) -> Tuple[torch.Tensor, List]:
    """``batch_size`` random images of ``height`` x ``width`` through ``model``'s data
    pre-processor (normalized, padded as it pads, on its device), with data samples that carry
    the meta information the heads read."""
    meta = dict(ori_shape=(height, width), img_shape=(height, width), scale_factor=(1.0, 1.0))
    if framework == 'mmdet':
        from mmdet.structures import DetDataSample as Sample
    else:
        from mmseg.structures import SegDataSample as Sample
    gen = torch.Generator().manual_seed(0)
    data = dict(
        inputs=[torch.rand(3, height, width, generator=gen) * 255 for _ in range(batch_size)],
        data_samples=[Sample(metainfo=meta) for _ in range(batch_size)],
    )
    data = model.data_preprocessor(data, False)
    return data['inputs'], data['data_samples']
