"""Triple-gated sparse convolution (SpVOS): REUSE / INTERPOLATE / COMPUTE per output block.

Importing this package registers ``torch.ops.edgevis.triple_sparse_conv``. Models call
:func:`triple_sparse_conv` (functional, caches explicit); eager code may use :class:`TripleSparseConv2d`.
The exact definition is in :mod:`edgevis.plugins.sparse_conv.reference`.
"""

from edgevis.plugins.sparse_conv.fast import SparseConvStats, triple_sparse_conv_fast
from edgevis.plugins.sparse_conv.module import LearnedGate, SparseConvCache, TripleSparseConv2d
from edgevis.plugins.sparse_conv.op import triple_sparse_conv
from edgevis.plugins.sparse_conv.reference import (
    COMPUTE,
    INTERPOLATE,
    REUSE,
    triple_sparse_conv_reference,
)

__all__ = [
    "COMPUTE",
    "INTERPOLATE",
    "REUSE",
    "LearnedGate",
    "SparseConvCache",
    "SparseConvStats",
    "TripleSparseConv2d",
    "triple_sparse_conv",
    "triple_sparse_conv_fast",
    "triple_sparse_conv_reference",
]
