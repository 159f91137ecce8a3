from .config_utils import (config_path, end_distributed_process, framework_of,
                           leave_process_group, prepare_cfg)
from .model_utils import build_model, load_exactly, read_state_dict

__all__ = ['config_path', 'end_distributed_process', 'framework_of', 'leave_process_group',
           'prepare_cfg', 'build_model', 'load_exactly', 'read_state_dict']
