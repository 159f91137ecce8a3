"""A static reading of an ONNX graph against TensorRT 10's ONNX parser: the operators it imports
and the restrictions on their attributes and inputs that it states.

Written here because the tools that ask the parser itself (``trtexec``, Polygraphy's
``inspect capability``) need TensorRT, which needs an NVIDIA GPU; this check runs wherever the
export does. It reads what onnx-tensorrt's support matrix (``docs/operators.md``, TensorRT 10)
and its importers state; it does not check data types, shapes or plugins' numerics, and it
cannot replace building an engine.
"""

from typing import Iterable, List, Optional, Set

import onnx
from onnx import helper, numpy_helper

# The operators the support matrix marks as imported ('Y'), TensorRT 10.
TENSORRT_ONNX_OPERATORS = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
    BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv
    ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum
    Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm
    GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
    GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If
    ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual
    Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
    MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
    ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
    RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
    ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
    ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu
    Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split
    Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample
    Where Xor
    """.split()
)
# the parser's TopK takes K below this
TOPK_MAX_K = 3840
# operators whose input at this index must be a constant (axes), with the opset it became an input
CONSTANT_INPUTS = {
    'ReduceSum': (1, 13),
    'ReduceMean': (1, 18),
    'ReduceMax': (1, 18),
    'ReduceMin': (1, 18),
    'ReduceProd': (1, 18),
    'ReduceL1': (1, 18),
    'ReduceL2': (1, 18),
    'ReduceLogSum': (1, 18),
    'ReduceLogSumExp': (1, 18),
    'ReduceSumSquare': (1, 18),
    'Slice': (3, 10),
    'Squeeze': (1, 13),
    'Unsqueeze': (1, 13),
    'CumSum': (1, 11),
}
RESIZE_MODES = dict(
    mode={'nearest', 'linear'},
    coordinate_transformation_mode={
        'half_pixel',
        'pytorch_half_pixel',
        'tf_half_pixel_for_nn',
        'asymmetric',
        'align_corners',
    },
    nearest_mode={'floor', 'ceil', 'round_prefer_floor', 'round_prefer_ceil'},
)


def tensorrt_parser_issues(model: onnx.ModelProto) -> List[str]:
    """What in ``model`` TensorRT 10's ONNX parser states that it does not import: operators
    outside :data:`TENSORRT_ONNX_OPERATORS` or of a custom domain, and the stated restrictions
    (constant axes, TopK sorted with K below 3840, also where K is computed, no scatter
    reduction, Resize's modes, MaxPool without indices, no sparse or string constants). One line
    per node; empty if none."""
    default = onnx.defs.onnx_opset_version()
    opset = next((o.version for o in model.opset_import if o.domain in ('', 'ai.onnx')), default)
    return _graph_issues(model.graph, opset, set(), {})


def _graph_issues(
    graph: onnx.GraphProto, opset: int, outer_constants: Set[str], outer_values: dict
) -> List[str]:
    constants = set(outer_constants) | {i.name for i in graph.initializer}
    # the constant tensors by name, read only where needed
    values = dict(outer_values, **{i.name: i for i in graph.initializer})
    producers = {out: node for node in graph.node for out in node.output}
    issues = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        where = f'{node.name or node.output[0]} ({node.op_type})'
        for problem in _node_issues(node, attrs, opset, constants, values, producers):
            issues.append(f'{where}: {problem}')
        if node.op_type == 'Constant':
            constants.update(node.output)
            if 'value' in attrs:
                values[node.output[0]] = attrs['value']
        for sub in _subgraphs(node):
            issues += _graph_issues(sub, opset, constants, values)
    return issues


def _node_issues(
    node, attrs: dict, opset: int, constants: Set[str], values: dict, producers: dict
) -> Iterable:
    op = node.op_type
    if node.domain not in ('', 'ai.onnx'):
        yield f'custom domain {node.domain!r}'
        return
    if op not in TENSORRT_ONNX_OPERATORS:
        yield 'not an operator the parser imports'
        return
    if op in CONSTANT_INPUTS:
        index, since = CONSTANT_INPUTS[op]
        if opset >= since and len(node.input) > index and node.input[index]:
            if node.input[index] not in constants:
                yield f'input {index} (axes) must be a constant, is computed in the graph'
    if op == 'TopK':
        if attrs.get('sorted', 1) != 1:
            yield 'sorted must be 1'
        if len(node.input) > 1:
            bound = _upper_bound(node.input[1], values, producers)
            if bound is None:
                yield f'K is computed in the graph with no constant bound below {TOPK_MAX_K}'
            elif bound >= TOPK_MAX_K:
                yield f'K must be below {TOPK_MAX_K}, can be {bound}'
    if op in ('ScatterND', 'ScatterElements') and 'reduction' in attrs:
        if op == 'ScatterND' or attrs['reduction'] != b'none':
            yield f'reduction {attrs["reduction"].decode()!r} is not supported'
    if op == 'Resize':
        if attrs.get('antialias', 0):
            yield 'antialias is not supported'
        defaults = dict(mode=b'nearest', coordinate_transformation_mode=b'half_pixel')
        for name, allowed in RESIZE_MODES.items():
            if name == 'nearest_mode' and attrs.get('mode', b'nearest') != b'nearest':
                continue
            value = attrs.get(name, defaults.get(name, b'round_prefer_floor')).decode()
            if value not in allowed:
                yield f'{name} {value!r} is not supported'
    if op == 'MaxPool':
        if len([o for o in node.output if o]) > 1:
            yield 'the Indices output is not supported'
        if any(d != 1 for d in attrs.get('dilations', [])):
            yield 'dilations must be 1'
    if op == 'LayerNormalization' and len([o for o in node.output if o]) > 1:
        yield 'only the first output is supported'
    if op == 'Constant' and not {'sparse_value', 'value_string', 'value_strings'}.isdisjoint(attrs):
        yield 'sparse and string constants are not supported'


def _upper_bound(name: str, values: dict, producers: dict, depth: int = 0) -> Optional[int]:
    """The largest value a computed integer scalar can take, where the graph bounds it by a
    constant (``Min``, or ``Clip`` of a constant, through casts and reshapes, as exporting
    ``min(k, n)`` with ``n`` from the input's size writes it); None where it does not."""
    if name in values:
        return int(numpy_helper.to_array(values[name]).max())
    node = producers.get(name)
    if node is None or depth > 8:
        return None

    def bound(index):
        if index >= len(node.input) or not node.input[index]:
            return None
        return _upper_bound(node.input[index], values, producers, depth + 1)

    if node.op_type in ('Cast', 'Reshape', 'Squeeze', 'Unsqueeze', 'Identity'):
        return bound(0)
    if node.op_type == 'Min':
        known = [b for b in map(bound, range(len(node.input))) if b is not None]
        return min(known) if known else None
    if node.op_type == 'Clip':  # min(max(x, low), high)
        below = bound(0)
        if len(node.input) > 1 and node.input[1]:
            low = bound(1)
            below = None if below is None or low is None else max(below, low)
        known = [b for b in (below, bound(2)) if b is not None]
        return min(known) if known else None
    return None


def _subgraphs(node) -> Iterable[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs
