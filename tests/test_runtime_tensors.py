"""The shared modalmesh.v1 Tensor helpers: what every service's decoder refuses, and the round trip."""

import numpy as np
import pytest

from modalmesh.v1 import common_pb2
from services.runtime.errors import InvalidArgument
from services.runtime.tensors import encode_tensor, tensor_array, tensor_dtype

FP = (common_pb2.DATA_TYPE_FP32, common_pb2.DATA_TYPE_FP64)


def violation(error: pytest.ExceptionInfo) -> tuple[str, str]:
    [(field, description)] = error.value.violations
    return field, description


def test_round_trip_keeps_values_shape_and_little_endian_bytes():
    array = np.arange(12, dtype=">f8").reshape(3, 4)   # big-endian in: the wire is little-endian
    tensor = encode_tensor(array, common_pb2.DATA_TYPE_FP64)
    assert list(tensor.shape) == [3, 4] and tensor.data == array.astype("<f8").tobytes()
    decoded = tensor_array(tensor, tensor_dtype(tensor, FP, "values"), "values")
    assert decoded.dtype == np.dtype("<f8") and np.array_equal(decoded, array)


def test_a_dtype_outside_the_allowed_ones_names_them_and_the_one_sent():
    tensor = common_pb2.Tensor(dtype=common_pb2.DATA_TYPE_INT32, shape=[2], data=b"\0" * 8)
    with pytest.raises(InvalidArgument) as error:
        tensor_dtype(tensor, FP, "values", "batch sequence 3: ")
    assert violation(error) == ("values.dtype", "batch sequence 3: must be DATA_TYPE_FP32 or DATA_TYPE_FP64, "
                                                "not DATA_TYPE_INT32")


def test_a_dtype_number_the_proto_does_not_define_is_refused_not_a_crash():
    tensor = common_pb2.Tensor(dtype=99, shape=[1], data=b"\0" * 4)
    with pytest.raises(InvalidArgument) as error:
        tensor_dtype(tensor, FP, "values")
    assert violation(error) == ("values.dtype", "must be DATA_TYPE_FP32 or DATA_TYPE_FP64, not data type 99")


@pytest.mark.parametrize("shape, data, field", [
    ([2, 3], b"\0" * 20, "x.data"),                 # 5 floats for 6
    ([2, 3], b"\0" * 28, "x.data"),                 # 7 floats for 6
    ([2**32, 2**32], b"\0" * 4, "x.data"),          # 2**64 elements: no wrap-around to a small count
    ([-2, -3], b"\0" * 24, "x.shape"),              # negative dimensions whose product looks right
])
def test_bytes_must_match_a_shape_without_negative_dimensions(shape, data, field):
    tensor = common_pb2.Tensor(dtype=common_pb2.DATA_TYPE_FP32, shape=shape, data=data)
    with pytest.raises(InvalidArgument) as error:
        tensor_array(tensor, np.dtype("<f4"), "x")
    assert violation(error)[0] == field


def test_an_empty_shape_is_one_element():
    tensor = encode_tensor(np.float32(2.5), common_pb2.DATA_TYPE_FP32)
    assert tensor_array(tensor, np.dtype("<f4"), "x").item() == 2.5
