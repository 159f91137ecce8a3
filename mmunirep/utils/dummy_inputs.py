"""Synthetic pre-processed batches for timing, FLOP counting and export (no dataset needed)."""
from typing import List, Tuple

import torch


def dummy_batch(framework: str, batch_size: int, height: int, width: int,
                device='cpu') -> Tuple[torch.Tensor, List]:
    """Normalized NCHW images and data samples with the meta information the heads read."""
    inputs = torch.randn(batch_size, 3, height, width, device=device)
    meta = dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width),
                batch_input_shape=(height, width), scale_factor=(1.0, 1.0))
    if framework == 'mmdet':
        from mmdet.structures import DetDataSample
        samples = [DetDataSample(metainfo=meta) for _ in range(batch_size)]
    else:
        from mmseg.structures import SegDataSample
        meta['padding_size'] = [0, 0, 0, 0]
        samples = [SegDataSample(metainfo=meta) for _ in range(batch_size)]
    return inputs, samples
