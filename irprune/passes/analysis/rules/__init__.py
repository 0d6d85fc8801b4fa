"""The op rule table: one entry per (domain, op type), built explicitly here.

An op missing from this table has no rule: its inputs' channel groups freeze (fail closed).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from irprune.passes.analysis.rules import conv, elementwise, linear, pool, recurrent, shape, slicing
from irprune.passes.analysis.rules.base import NodeEdit, OpRule, Term
from irprune.passes.analysis.rules.dynamic_shape import SHAPE
from irprune.passes.analysis.rules.normalization import GROUP_NORM, LAYER_NORM
from irprune.passes.analysis.rules.resample import EXPAND, PAD, RESIZE, TILE

_table: dict[tuple[str, str], OpRule] = {
    ("", "Conv"): conv.CONV,
    ("", "BatchNormalization"): conv.NORM,
    ("", "InstanceNormalization"): conv.NORM,
    ("", "Gemm"): linear.GEMM,
    ("", "MatMul"): linear.MATMUL,
    ("", "Concat"): shape.CONCAT,
    ("", "Flatten"): shape.FLATTEN,
    ("", "Reshape"): shape.RESHAPE,
    ("", "Transpose"): shape.TRANSPOSE,
    ("", "Squeeze"): shape.SQUEEZE,
    ("", "Unsqueeze"): shape.UNSQUEEZE,
    ("", "Split"): slicing.SPLIT,
    ("", "Slice"): slicing.SLICE,
    ("", "Gather"): slicing.GATHER,
    ("", "ConvTranspose"): conv.CONV_TRANSPOSE,
    ("", "Pad"): PAD,
    ("", "Resize"): RESIZE,
    ("", "Upsample"): RESIZE,
    ("", "Tile"): TILE,
    ("", "Expand"): EXPAND,
    ("", "LayerNormalization"): LAYER_NORM,
    ("", "RMSNormalization"): LAYER_NORM,
    ("", "GroupNormalization"): GROUP_NORM,
    ("", "Shape"): SHAPE,
}
_table.update({("", op): elementwise.UNARY for op in elementwise.UNARY_OPS})
_table.update({("", op): elementwise.BROADCAST for op in elementwise.BROADCAST_OPS})
_table.update({("", op): elementwise.SOFTMAX for op in elementwise.SOFTMAX_OPS})
_table.update({("", op): pool.POOL for op in pool.POOL_OPS})
_table.update({("", op): pool.REDUCE for op in pool.REDUCE_OPS})
_table.update({("", op): recurrent.RECURRENT for op in recurrent.RECURRENT_OPS})

RULES: Mapping[tuple[str, str], OpRule] = MappingProxyType(_table)

__all__ = ["RULES", "NodeEdit", "OpRule", "Term"]
