from .config_utils import (end_distributed_process, framework_of, leave_process_group,
                           prepare_cfg)
from .model_utils import build_model, load_exactly, read_state_dict

__all__ = ['end_distributed_process', 'framework_of', 'leave_process_group', 'prepare_cfg',
           'build_model', 'load_exactly', 'read_state_dict']
