from .config_utils import framework_of, prepare_cfg
from .model_utils import build_model, load_exactly, read_state_dict

__all__ = ['framework_of', 'prepare_cfg', 'build_model', 'load_exactly', 'read_state_dict']
