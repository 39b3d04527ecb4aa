"""What the ATC of CANN 5.x accepts for Ascend 310, in one table shared by lint, the ATC wrapper and atc-sim.

Facts come from ../shared/spec/atc.md ("spec §N"); "[INFER]" marks our reasoning where the spec has none. Here:
the opsets and operators ATC parses, the options and values it takes, and every lint rule with its severity, its
source and the ATC error code a model breaking it gets (what atc-sim prints; lint findings carry the node or
tensor they concern as fields, so nothing parses their text).
"""
from __future__ import annotations

from typing import NamedTuple

ERROR = "error"
WARNING = "warning"


class Rule(NamedTuple):
    severity: str  # "error" | "warning": a rule id always has the same severity, so tools key on the id alone
    source: str  # where the rule comes from
    atc_code: str | None = None  # the code ATC reports for a model breaking it (None: ATC has no counterpart)


# Every lint rule: severity, source, and the ATC code it stands for (atc-sim prints it; the mapping of a
# rule to a code is ours [INFER] where spec §4 lists the code for the cause but not for the rule).
RULES: dict[str, Rule] = {
    # the file itself (CLI exit 2)
    "file-not-found": Rule(ERROR, "no such file", "E10041"),
    "not-a-file": Rule(ERROR, "the path is a folder or a device, not a file", "E10041"),
    "file-unreadable": Rule(ERROR, "the OS refused to read the file", "E10041"),
    "file-too-large-to-parse": Rule(ERROR, "protobuf cannot parse a message of 2 GiB or more; spec §4 E10041", "E10041"),
    "not-onnx": Rule(ERROR, "the bytes are not an ONNX ModelProto; spec §4 E10041/E13005", "E10041"),
    "truncated-onnx": Rule(ERROR, "a valid prefix of an ONNX ModelProto that ends mid-field; spec §4 E10041", "E10041"),
    # model level
    "graph-missing": Rule(ERROR, "spec §4 E16004 `ONNX model has no graph.`", "E16004"),
    "graph-no-inputs": Rule(ERROR, "spec §4 E16001 no input node", "E16001"),
    "graph-no-outputs": Rule(ERROR, "spec §4 E16001 no output node", "E16001"),
    "io-name-empty": Rule(ERROR, "spec §2.2 --input_shape/--out_nodes address inputs and outputs by name", "E19999"),
    "node-name-duplicate": Rule(WARNING, "spec §4 E13009 duplicate op name [INFER: that GE op names are ONNX node names]"),
    "onnx-checker": Rule(ERROR, "onnx.checker.check_model(full_check=True)", "E19999"),
    "onnx-checker-skipped": Rule(WARNING, "external data too large to stand in for; checker not run"),
    "lint-rule-crashed": Rule(ERROR, "a lint rule could not finish on this model"),
    # opset (spec §1, §5 model-level rules, §10 q1)
    "opset-missing": Rule(ERROR, "spec §5 model-level: exactly one default-domain opset_import", "E19010"),
    "opset-duplicate": Rule(ERROR, "spec §4 E16005, §5 model-level", "E16005"),
    "opset-unsupported": Rule(ERROR, "spec §1 (5.x parses v11 only; E19010 on every node), §10 q1", "E19010"),
    "opset-needs-newer-cann": Rule(WARNING, "spec §1: 5.x doc says v11 only; later CANN accepts 12-13; §10 q1"),
    "domain-unsupported": Rule(ERROR, "spec §5 model-level: other domains have no plugins [INFER]", "E19010"),
    # operators (spec §5 table)
    "op-unsupported": Rule(ERROR, "spec atc-onnx-ops.md: no ATC parser at any opset, or none at the model's "
                                  "opset (atlas/atc_ops.py)", "E19010"),
    "op-not-in-table": Rule(WARNING, "spec atc-onnx-ops.md is silent on this op: ATC decides"),
    "op-attribute-refused": Rule(ERROR, "spec atc-onnx-ops.md 'Rejected at parse time': an attribute value the "
                                        "op's parser refuses", "E14001"),
    "op-semantics-changed": Rule(WARNING, "spec atc-onnx-ops.md 'Parsed but silently changed': ATC computes "
                                          "something else than ONNX says (accuracy risk)"),
    "attribute-invalid": Rule(ERROR, "spec §4 E14001 invalid argument for an op", "E14001"),
    "conv-auto-pad": Rule(ERROR, "spec §5 Conv: 5.0.4 allows only NOTSET/VALID", "E14001"),
    "conv-attribute-range": Rule(ERROR, "spec §5 Conv: dilations 1-255, pads 0-255, strides 1-63, kernel 1-255", "E14001"),
    "conv-input-not-4d": Rule(ERROR, "spec §5 Conv: X 4-D fp16/fp32", "EZ3002"),
    "conv-output-width-1": Rule(ERROR, "spec §5 Conv: 5.0.4 does not support output W = 1 with H != 1", "EZ3002"),
    "conv-group": Rule(WARNING, "spec §5 Conv doc says group = 1; §10 q4: ModelZoo converts depthwise nets"),
    "input-width-over-4096": Rule(ERROR, "spec §5 Conv and MaxPool: input W <= 4096", "EZ3002"),
    "maxpool-storage-order": Rule(ERROR, "spec §5 MaxPool: storage_order=1 is an error", "E14001"),
    "maxpool-dilations-dropped": Rule(ERROR, "spec §5 MaxPool: dilations != 1 are dropped (wrong results)", "E14001"),
    "maxpool-valid-ceil-mode": Rule(ERROR, "spec §5 MaxPool: VALID needs ceil_mode 0", "E14001"),
    "maxpool-ai-cpu": Rule(WARNING, "spec §5 MaxPool: stride > 63, kernel dim > 255 or kh*kw > 256 runs on AI CPU"),
    "averagepool-count-include-pad": Rule(WARNING, "spec §5 AveragePool; §10 q5: the docs disagree"),
    "averagepool-same-lower": Rule(ERROR, "spec §5 AveragePool: no SAME_LOWER", "E14001"),
    "averagepool-ceil-mode": Rule(ERROR, "spec §5 AveragePool: ceil_mode only with NOTSET", "E14001"),
    "gemm-alpha-beta": Rule(WARNING, "spec §5 Gemm: alpha and beta are ignored; §10 q5: the docs disagree"),
    "clip-unbounded": Rule(ERROR, "spec §5 Clip: min and max must not both be absent", "E14001"),
    "pad-odd-length": Rule(ERROR, "spec §5 Pad: even-length pads", "E14001"),
    # shapes and dtypes (spec §5 model-level rules, §2.2)
    "input-dynamic-dim": Rule(ERROR, "spec §5 model-level: static dims or --input_shape; §2.2 E10011", "E10011"),
    "io-dtype-int64": Rule(ERROR, "spec §5 model-level: fp32 or fp16; int64 only for Reshape's shape", "EZ3002"),
    "io-dtype-unsupported": Rule(ERROR, "spec §5 model-level: fp32 or fp16; §2.2 --output_type FP32/FP16/UINT8", "EZ3002"),
    "io-dtype-uint8": Rule(WARNING, "spec §6: AIPP inputs are uint8; §2.2 --output_type UINT8"),
    "int64-compute": Rule(WARNING, "spec §5 model-level: int64 documented only for Reshape's shape [INFER]"),
    "shape-chain-unfolded": Rule(WARNING, "spec §5 model-level, §10 q6: whether ATC folds Shape chains is unknown"),
    # tensors
    "tensor-non-finite": Rule(ERROR, "NaN/Inf weights make every output NaN/Inf", "E19999"),
    "tensor-fp16-overflow": Rule(WARNING, "spec §5 model-level, §7: above 65504 overflows under force_fp16"),
    "tensor-unreadable": Rule(ERROR, "tensor data does not match its declared type and shape", "E10041"),
    # external data and size
    "external-data": Rule(WARNING, "our export embeds weights; ATC support for external data is not in the spec"),
    "external-data-outside-folder": Rule(ERROR, "external data must stay inside the model's folder", "E10041"),
    "external-data-missing": Rule(ERROR, "the external data file does not exist", "E10041"),
    "external-data-invalid": Rule(ERROR, "external_data entries: location, offset, length", "E10041"),
    "external-data-out-of-range": Rule(ERROR, "offset + length past the end of the external file", "E10041"),
    "model-too-large": Rule(ERROR, "spec §4 E10041: > 2 GB fails to load (protobuf limit)", "E10041"),
    "model-over-board-budget": Rule(WARNING, "our assumption of what an Atlas 200 DK holds: DEFAULT_MAX_BOARD_BYTES"),
    "tensor-over-board-memory": Rule(ERROR, "one input or intermediate tensor larger than the board's whole memory "
                                     "(BOARD_MEMORY_MIB): it cannot be allocated on the device", "E19999"),
    "tensor-large": Rule(WARNING, "one tensor above LARGE_TENSOR_BYTES: a large share of the board's memory"),
}

UNREADABLE_RULES: frozenset[str] = frozenset(
    {"file-not-found", "not-a-file", "file-unreadable", "file-too-large-to-parse", "not-onnx", "truncated-onnx"}
)

# spec §1: 11 is the only opset every CANN 5.x/6.0 source accepts; 12-13 only on newer CANN (§10 q1).
SUPPORTED_OPSET = 11
NEWER_CANN_OPSETS = range(12, 14)
DEFAULT_DOMAINS = ("", "ai.onnx")

# Protobuf refuses messages of 2 GiB or more; spec §4 lists "> 2 GB" as an E10041 cause.
PROTOBUF_LIMIT_BYTES = 2**31 - 1
# Our assumption; the spec has no memory figure. The Atlas 200 DK has 8 GB LPDDR4X shared by Ubuntu, the app and
# the AI cores [COMM: github metai/aitrace Atlas200DK.html], and CANN reserves about 25 % of the device OS memory
# as huge pages, ~1940 MB [OFF: HI canncommercial 800 aclcppdevg_03_0094]. The weights sit twice in memory at load
# time (file buffer + device copy) beside the feature maps, so we budget 1 GiB (1/8 of the board) for the model
# files. Override with --max-board-bytes.
DEFAULT_MAX_BOARD_BYTES = 1 << 30
# The Atlas 200 DK has 8 GB of LPDDR4X (a 4 GB model exists too), shared by Ubuntu, the app and the AI cores
# [OFF: Huawei Atlas 200 DK developer kit specifications; COMM as above]. No single tensor can be larger than that;
# `deploy.memory_mib` (lint --board-memory-mib) sets it for another board. ATC's code for it is our choice [INFER].
BOARD_MEMORY_MIB = 8192
LARGE_TENSOR_BYTES = 1 << 30

# The operator table (which ops ATC parses at which opset, and what it refuses) is atlas/atc_ops.py.


# --- options (spec §1, §2) ---------------------------------------------------------------------------
SOC_VERSIONS_310 = ("Ascend310", "Ascend310P3", "Ascend310B1", "Ascend310B4")  # §1; the 200 DK is Ascend310
PRECISION_MODES = ("force_fp16", "force_fp32", "allow_fp32_to_fp16", "must_keep_origin_dtype", "allow_mix_precision")
LOG_LEVELS = ("debug", "info", "warning", "error", "null")
# ATC's own defaults (§2.2, §7): options our builder spells out even when they equal these
ATC_DEFAULTS = {"--input_format": "NCHW", "--precision_mode": "force_fp16", "--log": "null"}

# §2.1: every flag the 5.x ATC defines (GE5), plus the gflags built-ins we answer
ATC_5X_FLAGS = frozenset((
    "model output framework weight input_shape input_shape_range h cal_conf insert_op_conf op_name_map target om "
    "json mode out_nodes op_precision_mode precision_mode modify_mixlist keep_dtype input_format check_report "
    "input_fp16_nodes is_output_adjust_hw_layout is_input_adjust_hw_layout output_type op_select_implmode "
    "optypelist_for_implmode singleop disable_reuse_memory auto_tune_mode soc_version core_type aicore_num "
    "buffer_optimize fusion_switch_file save_original_model dynamic_batch_size dynamic_image_size dynamic_dims "
    "enable_small_channel enable_compress_weight compress_weight_conf enable_single_stream log dump_mode "
    "op_debug_level enable_scope_fusion_passes debug_dir op_compiler_cache_dir op_compiler_cache_mode "
    "mdl_bank_path op_bank_path display_model_info device_id").split())
ONNX_INPUT_FORMATS = ("NCHW", "ND", "NCDHW")  # §2.2

# --- dynamic shapes and output options (GE5 = mindspore-ai/graphengine v1.5.1, the CANN 5.0-era ATC) -------------
# ge/ir_build/option_utils.cc CheckDynamicInputParamValid: at most one of these (E10009), and --input_shape is then
# required (E10004); -1 is allowed in --input_shape only with one of them (E10011).
DYNAMIC_OPTIONS = ("dynamic_batch_size", "dynamic_image_size", "dynamic_dims")
# ge/graph/preprocess/multi_batch_options.cc kMinShapesCount / kMaxShapesCount: 2..100 profiles (E10035 / E10036);
# every value > 0 (E10038), no duplicate profile (E10039).
DYNAMIC_PROFILES_MIN, DYNAMIC_PROFILES_MAX = 2, 100
# ATC adds one input carrying the profile to a dynamic-batch or dynamic-image-size .om; its name is fixed (pyACL
# get_input_index_by_name doc, 6.0.1 aclpythondevg_01_0182; the samples pass the literal string).
DYNAMIC_TENSOR_NAME = "ascend_mbatch_shape_data"
# option_utils.cc kOutputTypeSupportDatatype: --output_type FP32, FP16 or UINT8 for every output, or per output
# "node:index:TYPE;..." where every node:index must also be in --out_nodes (session/omg.cc ParseOutputType,
# VerifyOutputTypeAndOutNodes: E10001).
OUTPUT_TYPES = {"FP32": "float32", "FP16": "float16", "UINT8": "uint8"}


def dynamic_axes(option: str, rank: int) -> tuple[int, ...]:
    """The input axes that may be -1 under a dynamic option: N for a batch (multi_batch_options.cc
    CheckDynamicBatchShape, E10018), H and W of a 4-D NCHW input for an image size (CheckDynamicImageSizeShape, E10019)."""
    if option == "dynamic_batch_size":
        return (0,)
    if option == "dynamic_image_size" and rank == 4:
        return (2, 3)
    return ()
