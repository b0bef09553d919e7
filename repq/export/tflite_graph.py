"""Read a .tflite flatbuffer through the LiteRT interpreter: ops, scales, weight integers."""

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from repq.cli_env import XNNPACK_NOTICE, filtered_stderr, without_lines

CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")


def interpreter(model_bytes, num_threads=1, preserve=False, default_delegates=False):
    """An allocated LiteRT interpreter.

    ``default_delegates=False``: TFLite's builtin kernels only (every op and tensor visible);
    True: LiteRT's default CPU runtime, which hands the integer ops to XNNPACK.
    """
    resolver = OpResolverType.AUTO if default_delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    with filtered_stderr(without_lines(XNNPACK_NOTICE)):  # LiteRT's "Created ... XNNPACK delegate" notice
        it = Interpreter(model_content=model_bytes, num_threads=num_threads, experimental_op_resolver_type=resolver,
                         experimental_preserve_all_tensors=preserve)
        it.allocate_tensors()
    return it


def conv_ops(it):
    """``[{name, op, input, weight, bias, output}]`` tensor details of every conv-like op."""
    tensors = {d["index"]: d for d in it.get_tensor_details()}
    found = []
    for op in it._get_ops_details():
        if op["op_name"] in CONV_OPS:
            ins = [tensors.get(i) for i in op["inputs"]]
            found.append(dict(op=op["op_name"], input=ins[0], weight=ins[1],
                              bias=ins[2] if len(ins) > 2 else None, output=tensors[op["outputs"][0]],
                              name=ins[1]["name"]))
    return found


def float_ops(it):
    """Names of the ops that compute in float: a float32 input or output tensor, other than the
    QUANTIZE of the model input and the DEQUANTIZE of the model output (float I/O)."""
    tensors = {d["index"]: d for d in it.get_tensor_details()}
    io = {d["index"] for d in it.get_input_details() + it.get_output_details()}
    found = []
    for op in it._get_ops_details():
        ids = [i for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0]
        if op["op_name"] in ("QUANTIZE", "DEQUANTIZE") and io.intersection(ids):
            continue
        if any(tensors[i]["dtype"] == np.float32 for i in ids):
            found.append(op["op_name"])
    return found


def op_names(it):
    """Sorted set of the op names in the graph."""
    return sorted({op["op_name"] for op in it._get_ops_details()})


def is_integer_conv(conv):
    """int8 input/weight/output and int32 (or no) bias."""
    ok = all(conv[k]["dtype"] == np.int8 for k in ("input", "weight", "output"))
    return ok and (conv["bias"] is None or conv["bias"]["dtype"] == np.int32)


def weight_integers(it, conv):
    """The stored integer weights of ``conv`` (OHWI for CONV_2D) as int64."""
    return it.get_tensor(conv["weight"]["index"]).astype(np.int64)


def scales(detail):
    """Per-channel (or single) scales of a tensor detail as float64 array."""
    return np.asarray(detail["quantization_parameters"]["scales"], np.float64)
