"""The ONNX operators the ATC of CANN 5.x-6.0 parses for Ascend 310, as ../shared/spec/atc-onnx-ops.md gives them
(with atc.md §5): the opsets each has a parser key for, how sure the row is, and what the spec says ATC refuses.

Part of the one table of what ATC accepts (atlas/atc_rules.py has the options and lint rules). lint reports an op
outside this table as a warning ("not in our table; ATC decides"), never an error: errors are for what the spec
says ATC refuses (no parser at any opset, no key at the model's opset, an attribute value the parser rejects).
"""
from __future__ import annotations

from typing import NamedTuple


class OpRow(NamedTuple):
    opsets: frozenset[int]  # opsets with a parser key (the model's opset is looked up: ai.onnx::<opset>::<Op>)
    tag: str  # how sure: DOC, SRC, SAMPLE, COMM, INFER (spec's tags)
    note: str = ""  # the constraints the spec gives, in short


def _opsets(text: str) -> frozenset[int]:
    """"8-15" / "1,6,8-15" -> the opsets."""
    values: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        values.update(range(int(first), int(last or first) + 1))
    return frozenset(values)


def _rows(opsets: str, tag: str, names: str, note: str = "") -> dict[str, OpRow]:
    return {name: OpRow(_opsets(opsets), tag, note) for name in names.split()}


# atc.md §5 (the students' ops) and atc-onnx-ops.md's table and its "also parsed at 11" list
OPS: dict[str, OpRow] = {
    **_rows("8-15", "DOC SRC", "Conv BatchNormalization Relu Sigmoid Tanh LeakyRelu Add Mul Sub Div MaxPool AveragePool "
            "GlobalAveragePool Flatten Reshape Clip Concat Transpose Dropout Identity Constant Shape Gather Cast Slice "
            "ConstantOfShape"),
    **_rows("8-15", "DOC SRC", "Acos Acosh Asin Asinh Atan Atanh Cos Cosh Sin Sinh Tan ThresholdedRelu Shrink Softsign "
            "Size OneHot NonZero Compress Or Xor BitShift IsNaN IsInf Det EyeLike Hardmax Mean "
            "MeanVarianceNormalization LpNormalization LpPool GlobalLpPool MaxRoiPool MaxUnpool ReduceMin ReduceProd "
            "ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceSumSquare ReverseSequence Scatter ScatterElements "
            "TfIdfVectorizer RandomUniform RandomUniformLike RandomNormal RandomNormalLike Multinomial"),
    **_rows("8-15", "DOC SRC", "Sqrt Exp Log Erf Neg Abs Reciprocal Max Where Equal Greater Less Not And Tile Sum Elu "
            "Softplus SpaceToDepth GlobalMaxPool GatherElements Range CumSum Sign Floor Ceil Round PRelu Pow ReduceMax"),
    "Resize": OpRow(_opsets("10-15"), "DOC SRC", "nearest or linear only (cubic refused); scales/sizes constant; "
                    "half_pixel, asymmetric and tf_* all act as asymmetric; nearest_mode ignored"),
    "Upsample": OpRow(_opsets("8,9,11-15"), "SRC", "mode nearest or linear"),
    "ConvTranspose": OpRow(_opsets("8-15"), "DOC SRC", "2-D; dilations 1; kernel_shape required; no SAME_* auto_pad"),
    "HardSigmoid": OpRow(_opsets("1,6,8-15"), "DOC SRC", "the code's defaults are alpha 0.2, beta 0.5"),
    "HardSwish": OpRow(_opsets("14-15"), "DOC SRC", "an ONNX op from opset 14; at 11 PyTorch writes HardSigmoid*x"),
    "ReduceMean": OpRow(_opsets("8-15"), "DOC SRC", "write the axes out (empty axes does not reduce all dims)"),
    "ReduceSum": OpRow(_opsets("8-15"), "DOC SRC"),
    "Min": OpRow(_opsets("8-15"), "DOC SRC", "at least one input"),
    "Expand": OpRow(_opsets("8-15"), "DOC SRC", "the shape must be a constant (run onnx-simplifier)"),
    "TopK": OpRow(_opsets("8-15"), "DOC SRC"),
    "ArgMax": OpRow(_opsets("8-15"), "DOC SRC", "select_last_index = 1 refused"),
    "ArgMin": OpRow(_opsets("8-15"), "DOC SRC", "select_last_index = 1 refused"),
    "NonMaxSuppression": OpRow(_opsets("10-15"), "DOC SRC", "which engine runs it on the 310 is not documented"),
    "Split": OpRow(_opsets("8-15"), "DOC SRC", "the split list must match the output count"),
    "InstanceNormalization": OpRow(_opsets("8-15"), "DOC SRC", "in the 5.0.4 list, not the 5.0.2 one"),
    "Selu": OpRow(_opsets("8-15"), "DOC SRC", "alpha and gamma must be the ONNX defaults"),
    "LRN": OpRow(_opsets("8-15"), "DOC SRC", "size required and odd"),
    "DepthToSpace": OpRow(_opsets("8-15"), "DOC SRC", "blocksize >= 2"),
    "Einsum": OpRow(_opsets("12-15"), "SRC", "an ONNX op only from opset 12"),
    "LSTM": OpRow(_opsets("8-15"), "DOC SRC", "only hidden_size and direction are read"),
    "GRU": OpRow(_opsets("8-15"), "DOC SRC", "only hidden_size (and direction since 2022-04) are read"),
    "If": OpRow(_opsets("8-15"), "DOC SRC"),
    "ScatterND": OpRow(_opsets("8,10-15"), "DOC SRC"),
    "GatherND": OpRow(_opsets("8-15"), "DOC SRC", "batch_dims is ignored (use 0)"),
    "MatMul": OpRow(_opsets("8-15"), "DOC SRC", "batched: BatchMatMulV2"),
    "Gemm": OpRow(_opsets("8-15"), "DOC SRC", "alpha and beta are not read; the docs list C as not supported"),
    "Softmax": OpRow(_opsets("8-15"), "DOC SRC"),
    "LogSoftmax": OpRow(_opsets("8-15"), "DOC SRC", "the default axis is -1 at every opset: write axis out"),
    "Mod": OpRow(_opsets("10-15"), "DOC SRC", "fmod is ignored"),
    "RoiAlign": OpRow(_opsets("8-15"), "DOC SRC", "batch_indices int32; mode not read (avg)"),
    "Squeeze": OpRow(_opsets("8-15"), "DOC SRC", "13+ keys only in 2022 plugins: a 5.0.x build stops at 12"),
    "Unsqueeze": OpRow(_opsets("8-15"), "DOC SRC", "13+ keys only in 2022 plugins: a 5.0.x build stops at 12"),
    "Pad": OpRow(_opsets("8-15"), "DOC SRC", "constant/reflect/edge; constant_value 0 only"),
    "Celu": OpRow(_opsets("12-13"), "DOC"),
    "GreaterOrEqual": OpRow(_opsets("8,12-15"), "SRC", "at 11 exporters write Not(Less)"),
    "LessOrEqual": OpRow(_opsets("8-15"), "DOC SRC"),
    "SoftmaxCrossEntropyLoss": OpRow(_opsets("12-15"), "SRC"),
    "Trilu": OpRow(_opsets("14-15"), "SRC DOC", "without the k input"),
    # AMCT's deploy-model ops (atlas/quant_ops.py): default domain, ATC plugin keys ai.onnx::8..13 (canndev
    # onnx_plugin ascend_quant_plugin.cc / ascend_dequant_plugin.cc; the AMCT notes, docs/int8.md)
    **_rows("8-13", "SRC", "AscendQuant AscendDequant AscendAntiQuant", "from AMCT's deploy model (quantize)"),
}

# no parser at any opset: ATC fails with E19010 (spec "Not supported" list)
NO_PARSER: dict[str, str] = {
    **{op: "no ATC parser for it at any opset (spec atc-onnx-ops.md)" for op in (
        "Loop", "Scan", "RNN", "GridSample", "Gelu", "QuantizeLinear", "DequantizeLinear", "QLinearConv",
        "QLinearMatMul", "MatMulInteger", "ConvInteger", "CastLike", "SequenceAt", "SequenceConstruct",
        "SequenceEmpty", "SequenceErase", "SequenceInsert", "SequenceLength", "SplitToSequence",
        "ConcatFromSequence")},
    "LayerNormalization": "an opset-17 op with no ATC parser for the Ascend 310 (at opset 11 PyTorch writes it as "
                          "ReduceMean/Sub/Pow/Sqrt/Div/Mul/Add, which ATC parses)",
}


def parses(op: str, opset: int) -> bool | None:
    """True: ATC has a parser key for `op` at `opset`; False: the spec says it has none; None: the spec is silent."""
    if op in NO_PARSER:
        return False
    row = OPS.get(op)
    return None if row is None else opset in row.opsets
