"""The installed stack works together where its versions matter: MMSegmentation's visualizer draws
with the pinned opencv (opencv-python 5 breaks it), MMDetection's benchmark tool finds psutil."""

import re

import numpy as np
import torch


def test_mmseg_visualizer_draws_predictions_and_class_names(tmp_path):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    from mmseg.visualization import SegLocalVisualizer

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    label = torch.from_numpy(rng.integers(0, 3, (1, 48, 64)))
    sample = SegDataSample(gt_sem_seg=PixelData(data=label), pred_sem_seg=PixelData(data=label))
    visualizer = SegLocalVisualizer(
        name='test_stack', save_dir=str(tmp_path), vis_backends=[dict(type='LocalVisBackend')]
    )
    visualizer.dataset_meta = dict(
        classes=('circle', 'square', 'triangle'),
        palette=[[220, 20, 60], [0, 170, 0], [30, 60, 255]],
    )
    out = str(tmp_path / 'drawn.png')
    visualizer.add_datasample(
        'shapes', image, sample, draw_gt=True, draw_pred=True, with_labels=True, out_file=out
    )
    import mmcv

    drawn = mmcv.imread(out, channel_order='rgb')
    assert drawn.shape == (48, 128, 3)  # ground truth and prediction side by side
    assert np.abs(drawn[:, :64].astype(int) - image).mean() > 10  # the classes were painted


def test_mmdet_benchmark_tool_finds_psutil(capsys):
    """MMDetection 3.3's benchmark (mmdet.utils.benchmark, behind its
    tools/analysis_tools/benchmark.py) needs psutil without declaring it: it finds it and
    reports a process's memory with it."""
    import psutil
    from mmdet.utils import benchmark

    assert benchmark.psutil is psutil  # its optional import succeeded
    benchmark.print_process_memory(psutil.Process())
    line = capsys.readouterr().out
    assert re.fullmatch(
        r'\(GB\) mem_used: \d+\.\d\d \| uss: \d+\.\d\d \| (pss: \d+\.\d\d \| )?'
        r'total_proc: \d+\n',
        line,
    ), line
