from .checkpoint import (
    CheckpointError,
    check_finite,
    load_model_weights,
    model_state_dict,
    read_checkpoint,
)
from .config_utils import (
    clear_pretrained,
    config_path,
    end_distributed_process,
    framework_of,
    leave_process_group,
    prepare_cfg,
)
from .fileio import atomic_directory, atomic_write, refuse_overwriting_input, save_checkpoint
from .model_utils import build_model

__all__ = [
    'CheckpointError',
    'check_finite',
    'load_model_weights',
    'model_state_dict',
    'read_checkpoint',
    'clear_pretrained',
    'config_path',
    'end_distributed_process',
    'framework_of',
    'leave_process_group',
    'prepare_cfg',
    'atomic_directory',
    'atomic_write',
    'refuse_overwriting_input',
    'save_checkpoint',
    'build_model',
]
