"""Open Inference Protocol tensors ⇄ numpy arrays, with the checks a server owes its callers."""

from __future__ import annotations

import struct

import numpy as np

from inference import grpc_service_pb2 as oip
from inference import model_config_pb2 as mc
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
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 1


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
