"""Checks that an exported graph is valid ONNX and that TensorRT's ONNX parser takes its operators."""

from __future__ import annotations

import os

import onnx
from google.protobuf.message import DecodeError

# Operators marked supported ("Y") in the operator support matrix of TensorRT's ONNX parser,
# onnx-tensorrt docs/operators.md (https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md,
# the list NVIDIA's ONNX opset guide points to:
# https://docs.nvidia.com/deeplearning/tensorrt/latest/reference/onnx-opset-guide.html), as of the
# TensorRT 8.5 release (opset 17). Later parsers, all of 10.x included, keep these and add more,
# so a graph passing this list is parsed by every TensorRT this project targets.
TENSORRT_OPS = frozenset(
    """
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil
Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather
GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
GridSample GRU HardSwish HardSigmoid Identity If ImageScaler InstanceNormalization IsNaN LeakyRelu
Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
MeanVarianceNormalization Min Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round
ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice
Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK
Transpose Trilu Unsqueeze Upsample Where Xor
""".split()
)

# Restrictions from the same table: these inputs must be initializers (or Constant outputs).
CONSTANT_INPUTS = {
    "InstanceNormalization": (1, 2),
    "Slice": (3,),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
    "ConvTranspose": (1,),
    "TopK": (1,),
}


def check_graph(model: onnx.ModelProto | str | os.PathLike, opset: int) -> list[str]:
    """Problems found (empty when the graph is fine): onnx.checker errors, a wrong opset, operators
    outside :data:`TENSORRT_OPS`, and inputs that TensorRT needs constant but are not."""
    if not isinstance(model, onnx.ModelProto):
        try:
            model = onnx.load(str(model))
        except (OSError, DecodeError) as e:
            return [f"cannot be read as ONNX ({e or type(e).__name__}); rebuild it with --force"]
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        return [f"onnx.checker: {e}"]
    problems = []
    default = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if default != [opset]:
        problems.append(f"opset {default} instead of {opset}")
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    for node in model.graph.node:
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        if op not in TENSORRT_OPS:
            problems.append(f"{node.name or op}: operator {op} is not in TensorRT's ONNX operator list")
        for k in CONSTANT_INPUTS.get(op, ()):
            if k < len(node.input) and node.input[k] and node.input[k] not in constants:
                problems.append(f"{node.name or op}: TensorRT needs input {k} of {op} to be a constant")
    return problems
