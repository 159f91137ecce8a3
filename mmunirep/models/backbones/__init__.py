from .unireplknet import (DilatedReparamBlock, UniRepLKNet, UniRepLKNetBlock,
                          convert_checkpoint_state_dict, reparameterize_unireplknet)

__all__ = ['UniRepLKNet', 'UniRepLKNetBlock', 'DilatedReparamBlock',
           'convert_checkpoint_state_dict', 'reparameterize_unireplknet']
