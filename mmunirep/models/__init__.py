from .backbones import (
    DilatedReparamBlock,
    UniRepLKNet,
    UniRepLKNetBlock,
    reparameterize_unireplknet,
)

__all__ = ['UniRepLKNet', 'UniRepLKNetBlock', 'DilatedReparamBlock', 'reparameterize_unireplknet']
