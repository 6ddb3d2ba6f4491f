"""Tensors ⇄ numpy arrays, with the checks a server owes its callers: the Open Inference Protocol's
and modalmesh.v1's own (common.proto Tensor).
"""

from __future__ import annotations

import math
import struct

import numpy as np

from inference import grpc_service_pb2 as oip
from inference import model_config_pb2 as mc
from modalmesh.v1 import common_pb2
from services.runtime.errors import InvalidArgument

# OIP datatype → (numpy dtype, InferTensorContents field, model-config enum)
DATATYPES: dict[str, tuple[np.dtype | None, str, int]] = {
    "BOOL": (np.dtype(np.bool_), "bool_contents", mc.TYPE_BOOL),
    "UINT8": (np.dtype("<u1"), "uint_contents", mc.TYPE_UINT8),
    "UINT16": (np.dtype("<u2"), "uint_contents", mc.TYPE_UINT16),
    "UINT32": (np.dtype("<u4"), "uint_contents", mc.TYPE_UINT32),
    "UINT64": (np.dtype("<u8"), "uint64_contents", mc.TYPE_UINT64),
    "INT8": (np.dtype("<i1"), "int_contents", mc.TYPE_INT8),
    "INT16": (np.dtype("<i2"), "int_contents", mc.TYPE_INT16),
    "INT32": (np.dtype("<i4"), "int_contents", mc.TYPE_INT32),
    "INT64": (np.dtype("<i8"), "int64_contents", mc.TYPE_INT64),
    "FP16": (np.dtype("<f2"), "", mc.TYPE_FP16),
    "FP32": (np.dtype("<f4"), "fp32_contents", mc.TYPE_FP32),
    "FP64": (np.dtype("<f8"), "fp64_contents", mc.TYPE_FP64),
    "BYTES": (None, "bytes_contents", mc.TYPE_STRING),
}


def config_datatype(datatype: str) -> int:
    return DATATYPES[datatype][2]


def element_count(shape) -> int:
    # Python ints: no wrap-around on a huge shape, and ~20x cheaper than numpy on a protobuf shape field.
    return math.prod(shape)


def decode_bytes(raw: bytes, count: int, field: str) -> list[bytes]:
    """BYTES elements: each a 4-byte little-endian length, then that many bytes."""
    items, offset = [], 0
    for _ in range(count):
        if offset + 4 > len(raw):
            raise InvalidArgument((field, f"BYTES data ends after {len(items)} of {count} elements"))
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidArgument((field, f"BYTES element {len(items)} claims {length} bytes past the data's end"))
        items.append(raw[offset:offset + length])
        offset += length
    if offset != len(raw):
        raise InvalidArgument((field, f"{len(raw) - offset} bytes left after {count} BYTES elements"))
    return items


def encode_bytes(items) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def decode_input(tensor: oip.ModelInferRequest.InferInputTensor, raw: bytes | None, field: str) -> np.ndarray:
    """One input tensor as an array of its declared shape; raises InvalidArgument on any mismatch."""
    if tensor.datatype not in DATATYPES:
        raise InvalidArgument((f"{field}.datatype", f"unknown datatype {tensor.datatype!r}"))
    if any(d < 0 for d in tensor.shape):
        raise InvalidArgument((f"{field}.shape", f"negative dimension in {list(tensor.shape)}"))
    count = element_count(tensor.shape)
    dtype, contents_field, _ = DATATYPES[tensor.datatype]
    if raw is not None:
        if dtype is None:
            return np.array(decode_bytes(raw, count, field), dtype=object).reshape(tuple(tensor.shape))
        if len(raw) != count * dtype.itemsize:
            raise InvalidArgument((field, f"{len(raw)} bytes do not match shape {list(tensor.shape)} of "
                                          f"{tensor.datatype} ({count * dtype.itemsize} bytes expected)"))
        return np.frombuffer(raw, dtype=dtype).reshape(tuple(tensor.shape))
    if not contents_field:
        raise InvalidArgument((field, f"{tensor.datatype} travels only in raw_input_contents"))
    values = list(getattr(tensor.contents, contents_field))
    if len(values) != count:
        raise InvalidArgument((field, f"{len(values)} elements do not match shape {list(tensor.shape)} ({count})"))
    return np.array(values, dtype=object if dtype is None else dtype).reshape(tuple(tensor.shape))


def encode_output(name: str, array: np.ndarray, datatype: str) -> tuple[oip.ModelInferResponse.InferOutputTensor, bytes]:
    tensor = oip.ModelInferResponse.InferOutputTensor(name=name, datatype=datatype, shape=list(array.shape))
    if datatype == "BYTES":
        return tensor, encode_bytes(array.reshape(-1))
    dtype = DATATYPES[datatype][0]
    return tensor, np.ascontiguousarray(array, dtype=dtype).tobytes()


# -- modalmesh.v1 Tensor (common.proto): dtype, shape, little-endian row-major bytes -----------------

TENSOR_DTYPES: dict[int, np.dtype] = {
    common_pb2.DATA_TYPE_FP32: np.dtype("<f4"),
    common_pb2.DATA_TYPE_FP16: np.dtype("<f2"),
    common_pb2.DATA_TYPE_FP64: np.dtype("<f8"),
    common_pb2.DATA_TYPE_INT64: np.dtype("<i8"),
    common_pb2.DATA_TYPE_INT32: np.dtype("<i4"),
    common_pb2.DATA_TYPE_INT16: np.dtype("<i2"),
    common_pb2.DATA_TYPE_INT8: np.dtype("i1"),
    common_pb2.DATA_TYPE_UINT8: np.dtype("u1"),
    common_pb2.DATA_TYPE_BOOL: np.dtype("?"),
}   # BF16 has no numpy dtype: a service that takes it decodes it itself


def tensor_dtype(tensor: common_pb2.Tensor, allowed: tuple[int, ...], field: str, where: str = "") -> np.dtype:
    """The numpy dtype of a request's Tensor, or InvalidArgument on ``field.dtype`` naming the allowed ones.

    ``where`` prefixes every description (the IoT ingest names the batch: "batch sequence 7: ").
    """
    if tensor.dtype not in allowed:
        names = " or ".join(common_pb2.DataType.Name(dtype) for dtype in allowed)
        raise InvalidArgument((f"{field}.dtype", f"{where}must be {names}, not "
                                                 f"{_dtype_name(tensor.dtype)}"))
    return TENSOR_DTYPES[tensor.dtype]


def tensor_array(tensor: common_pb2.Tensor, dtype: np.dtype, field: str, where: str = "") -> np.ndarray:
    """The Tensor's bytes as a read-only array of its shape, without a copy.

    Call it after the caller's own shape rules, so a shape that breaks them is reported as
    ``field.shape`` and not as a byte count; this checks only what every Tensor owes: no negative
    dimension, and exactly the bytes its shape and dtype need.
    """
    shape = list(tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidArgument((f"{field}.shape", f"{where}negative dimension in {shape}"))
    expected = math.prod(shape) * dtype.itemsize   # Python ints: a huge shape cannot wrap around
    if len(tensor.data) != expected:
        raise InvalidArgument((f"{field}.data", f"{where}{len(tensor.data)} bytes do not match shape {shape} "
                                                f"({expected} bytes expected)"))
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape)


def decode_tensor(tensor: common_pb2.Tensor, field: str = "tensor") -> np.ndarray:
    """Any Tensor as the array it carries (a client reading a response: every dtype, any shape)."""
    return tensor_array(tensor, tensor_dtype(tensor, tuple(TENSOR_DTYPES), field), field)


def encode_tensor(array: np.ndarray, dtype: int) -> common_pb2.Tensor:
    """A response's Tensor: the array converted to ``dtype``'s little-endian type, row-major."""
    data = np.ascontiguousarray(array, dtype=TENSOR_DTYPES[dtype])
    return common_pb2.Tensor(dtype=dtype, shape=list(data.shape), data=data.tobytes())


def _dtype_name(dtype: int) -> str:
    """A client may send a number the proto does not define; name it rather than fail on it."""
    try:
        return common_pb2.DataType.Name(dtype)
    except ValueError:
        return f"data type {dtype}"
