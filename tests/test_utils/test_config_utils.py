"""prepare_cfg: what the tools make of a config before the Runner gets it."""

import pytest
import torch

from mmunirep.utils import prepare_cfg

from helpers import SEG_QUICKSTART


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU adaptation runs without a GPU')
@pytest.mark.parametrize('launcher', ['slurm', 'mpi'])
def test_a_gpu_launcher_without_a_gpu_is_refused_with_the_one_that_works(launcher):
    with pytest.raises(
        ValueError, match=rf'--launcher {launcher} needs CUDA GPUs; none is visible'
    ):
        prepare_cfg(SEG_QUICKSTART, launcher=launcher)
