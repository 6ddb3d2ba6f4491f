from modalmesh.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DefectClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEFECT_CLASS_UNSPECIFIED: _ClassVar[DefectClass]
    DEFECT_CLASS_SCRATCH: _ClassVar[DefectClass]
    DEFECT_CLASS_SPOT: _ClassVar[DefectClass]
    DEFECT_CLASS_CRACK: _ClassVar[DefectClass]

class MaskEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MASK_ENCODING_UNSPECIFIED: _ClassVar[MaskEncoding]
    MASK_ENCODING_TENSOR: _ClassVar[MaskEncoding]
    MASK_ENCODING_PNG: _ClassVar[MaskEncoding]
    MASK_ENCODING_NONE: _ClassVar[MaskEncoding]

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    VERDICT_PASS: _ClassVar[Verdict]
    VERDICT_FAIL: _ClassVar[Verdict]
DEFECT_CLASS_UNSPECIFIED: DefectClass
DEFECT_CLASS_SCRATCH: DefectClass
DEFECT_CLASS_SPOT: DefectClass
DEFECT_CLASS_CRACK: DefectClass
MASK_ENCODING_UNSPECIFIED: MaskEncoding
MASK_ENCODING_TENSOR: MaskEncoding
MASK_ENCODING_PNG: MaskEncoding
MASK_ENCODING_NONE: MaskEncoding
VERDICT_UNSPECIFIED: Verdict
VERDICT_PASS: Verdict
VERDICT_FAIL: Verdict

class Image(_message.Message):
    __slots__ = ("encoded", "pixels")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    pixels: _common_pb2.Tensor
    def __init__(self, encoded: _Optional[bytes] = ..., pixels: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ...) -> None: ...

class InspectRequest(_message.Message):
    __slots__ = ("image", "threshold", "mask_encoding")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MASK_ENCODING_FIELD_NUMBER: _ClassVar[int]
    image: Image
    threshold: float
    mask_encoding: MaskEncoding
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ..., threshold: _Optional[float] = ..., mask_encoding: _Optional[_Union[MaskEncoding, str]] = ...) -> None: ...

class BoundingBox(_message.Message):
    __slots__ = ("x", "y", "width", "height")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    x: int
    y: int
    width: int
    height: int
    def __init__(self, x: _Optional[int] = ..., y: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class Defect(_message.Message):
    __slots__ = ("defect_class", "box", "score", "area")
    DEFECT_CLASS_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    AREA_FIELD_NUMBER: _ClassVar[int]
    defect_class: DefectClass
    box: BoundingBox
    score: float
    area: int
    def __init__(self, defect_class: _Optional[_Union[DefectClass, str]] = ..., box: _Optional[_Union[BoundingBox, _Mapping]] = ..., score: _Optional[float] = ..., area: _Optional[int] = ...) -> None: ...

class InspectResponse(_message.Message):
    __slots__ = ("defects", "defect_score", "threshold", "verdict", "mask", "mask_png", "width", "height", "model")
    DEFECTS_FIELD_NUMBER: _ClassVar[int]
    DEFECT_SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    MASK_PNG_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    defects: _containers.RepeatedCompositeFieldContainer[Defect]
    defect_score: float
    threshold: float
    verdict: Verdict
    mask: _common_pb2.Tensor
    mask_png: bytes
    width: int
    height: int
    model: _common_pb2.ModelInfo
    def __init__(self, defects: _Optional[_Iterable[_Union[Defect, _Mapping]]] = ..., defect_score: _Optional[float] = ..., threshold: _Optional[float] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., mask: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., mask_png: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., model: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ...) -> None: ...
