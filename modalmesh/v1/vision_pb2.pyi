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

class VolumeFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VOLUME_FORMAT_UNSPECIFIED: _ClassVar[VolumeFormat]
    VOLUME_FORMAT_NIFTI: _ClassVar[VolumeFormat]
    VOLUME_FORMAT_DICOM_ZIP: _ClassVar[VolumeFormat]
    VOLUME_FORMAT_RAW: _ClassVar[VolumeFormat]

class LabelFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LABEL_FORMAT_UNSPECIFIED: _ClassVar[LabelFormat]
    LABEL_FORMAT_NIFTI_GZ: _ClassVar[LabelFormat]
    LABEL_FORMAT_RAW: _ClassVar[LabelFormat]
    LABEL_FORMAT_NONE: _ClassVar[LabelFormat]

class SegmentationStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEGMENTATION_STAGE_UNSPECIFIED: _ClassVar[SegmentationStage]
    SEGMENTATION_STAGE_RECEIVING: _ClassVar[SegmentationStage]
    SEGMENTATION_STAGE_PREPARING: _ClassVar[SegmentationStage]
    SEGMENTATION_STAGE_SEGMENTING: _ClassVar[SegmentationStage]
    SEGMENTATION_STAGE_MEASURING: _ClassVar[SegmentationStage]

class ImageEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_ENCODING_UNSPECIFIED: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_PNG: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_JPEG: _ClassVar[ImageEncoding]
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
VOLUME_FORMAT_UNSPECIFIED: VolumeFormat
VOLUME_FORMAT_NIFTI: VolumeFormat
VOLUME_FORMAT_DICOM_ZIP: VolumeFormat
VOLUME_FORMAT_RAW: VolumeFormat
LABEL_FORMAT_UNSPECIFIED: LabelFormat
LABEL_FORMAT_NIFTI_GZ: LabelFormat
LABEL_FORMAT_RAW: LabelFormat
LABEL_FORMAT_NONE: LabelFormat
SEGMENTATION_STAGE_UNSPECIFIED: SegmentationStage
SEGMENTATION_STAGE_RECEIVING: SegmentationStage
SEGMENTATION_STAGE_PREPARING: SegmentationStage
SEGMENTATION_STAGE_SEGMENTING: SegmentationStage
SEGMENTATION_STAGE_MEASURING: SegmentationStage
IMAGE_ENCODING_UNSPECIFIED: ImageEncoding
IMAGE_ENCODING_PNG: ImageEncoding
IMAGE_ENCODING_JPEG: ImageEncoding

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

class RawVolume(_message.Message):
    __slots__ = ("dtype", "shape", "spacing_mm", "orientation", "origin_mm")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    SPACING_MM_FIELD_NUMBER: _ClassVar[int]
    ORIENTATION_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_MM_FIELD_NUMBER: _ClassVar[int]
    dtype: _common_pb2.DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    spacing_mm: _containers.RepeatedScalarFieldContainer[float]
    orientation: str
    origin_mm: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, dtype: _Optional[_Union[_common_pb2.DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., spacing_mm: _Optional[_Iterable[float]] = ..., orientation: _Optional[str] = ..., origin_mm: _Optional[_Iterable[float]] = ...) -> None: ...

class VolumeHeader(_message.Message):
    __slots__ = ("format", "total_bytes", "raw", "label_format", "study_id")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    LABEL_FORMAT_FIELD_NUMBER: _ClassVar[int]
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    format: VolumeFormat
    total_bytes: int
    raw: RawVolume
    label_format: LabelFormat
    study_id: str
    def __init__(self, format: _Optional[_Union[VolumeFormat, str]] = ..., total_bytes: _Optional[int] = ..., raw: _Optional[_Union[RawVolume, _Mapping]] = ..., label_format: _Optional[_Union[LabelFormat, str]] = ..., study_id: _Optional[str] = ...) -> None: ...

class VolumeChunk(_message.Message):
    __slots__ = ("offset", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class SegmentVolumeRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: VolumeHeader
    chunk: VolumeChunk
    def __init__(self, header: _Optional[_Union[VolumeHeader, _Mapping]] = ..., chunk: _Optional[_Union[VolumeChunk, _Mapping]] = ...) -> None: ...

class SegmentationProgress(_message.Message):
    __slots__ = ("stage", "bytes_received", "total_bytes", "windows_done", "windows_total")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_DONE_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    stage: SegmentationStage
    bytes_received: int
    total_bytes: int
    windows_done: int
    windows_total: int
    def __init__(self, stage: _Optional[_Union[SegmentationStage, str]] = ..., bytes_received: _Optional[int] = ..., total_bytes: _Optional[int] = ..., windows_done: _Optional[int] = ..., windows_total: _Optional[int] = ...) -> None: ...

class LabelChunk(_message.Message):
    __slots__ = ("offset", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class VoxelBox(_message.Message):
    __slots__ = ("min_index", "max_index")
    MIN_INDEX_FIELD_NUMBER: _ClassVar[int]
    MAX_INDEX_FIELD_NUMBER: _ClassVar[int]
    min_index: _containers.RepeatedScalarFieldContainer[int]
    max_index: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, min_index: _Optional[_Iterable[int]] = ..., max_index: _Optional[_Iterable[int]] = ...) -> None: ...

class StructureMeasurement(_message.Message):
    __slots__ = ("label", "name", "voxel_count", "volume_ml", "bounding_box", "centroid_mm")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VOXEL_COUNT_FIELD_NUMBER: _ClassVar[int]
    VOLUME_ML_FIELD_NUMBER: _ClassVar[int]
    BOUNDING_BOX_FIELD_NUMBER: _ClassVar[int]
    CENTROID_MM_FIELD_NUMBER: _ClassVar[int]
    label: int
    name: str
    voxel_count: int
    volume_ml: float
    bounding_box: VoxelBox
    centroid_mm: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, label: _Optional[int] = ..., name: _Optional[str] = ..., voxel_count: _Optional[int] = ..., volume_ml: _Optional[float] = ..., bounding_box: _Optional[_Union[VoxelBox, _Mapping]] = ..., centroid_mm: _Optional[_Iterable[float]] = ...) -> None: ...

class VolumeGeometry(_message.Message):
    __slots__ = ("shape", "spacing_mm", "orientation", "affine")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    SPACING_MM_FIELD_NUMBER: _ClassVar[int]
    ORIENTATION_FIELD_NUMBER: _ClassVar[int]
    AFFINE_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    spacing_mm: _containers.RepeatedScalarFieldContainer[float]
    orientation: str
    affine: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., spacing_mm: _Optional[_Iterable[float]] = ..., orientation: _Optional[str] = ..., affine: _Optional[_Iterable[float]] = ...) -> None: ...

class SegmentationResult(_message.Message):
    __slots__ = ("study_id", "structures", "geometry", "label_format", "label_bytes", "label_names", "model")
    class LabelNamesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: str
        def __init__(self, key: _Optional[int] = ..., value: _Optional[str] = ...) -> None: ...
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    STRUCTURES_FIELD_NUMBER: _ClassVar[int]
    GEOMETRY_FIELD_NUMBER: _ClassVar[int]
    LABEL_FORMAT_FIELD_NUMBER: _ClassVar[int]
    LABEL_BYTES_FIELD_NUMBER: _ClassVar[int]
    LABEL_NAMES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    structures: _containers.RepeatedCompositeFieldContainer[StructureMeasurement]
    geometry: VolumeGeometry
    label_format: LabelFormat
    label_bytes: int
    label_names: _containers.ScalarMap[int, str]
    model: _common_pb2.ModelInfo
    def __init__(self, study_id: _Optional[str] = ..., structures: _Optional[_Iterable[_Union[StructureMeasurement, _Mapping]]] = ..., geometry: _Optional[_Union[VolumeGeometry, _Mapping]] = ..., label_format: _Optional[_Union[LabelFormat, str]] = ..., label_bytes: _Optional[int] = ..., label_names: _Optional[_Mapping[int, str]] = ..., model: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ...) -> None: ...

class SegmentVolumeResponse(_message.Message):
    __slots__ = ("study_id", "progress", "labels", "result")
    STUDY_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    study_id: str
    progress: SegmentationProgress
    labels: LabelChunk
    result: SegmentationResult
    def __init__(self, study_id: _Optional[str] = ..., progress: _Optional[_Union[SegmentationProgress, _Mapping]] = ..., labels: _Optional[_Union[LabelChunk, _Mapping]] = ..., result: _Optional[_Union[SegmentationResult, _Mapping]] = ...) -> None: ...

class GenerateImageRequest(_message.Message):
    __slots__ = ("prompt", "negative_prompt", "width", "height", "steps", "seed", "guidance_scale", "style", "encoding")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    STYLE_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    seed: int
    guidance_scale: float
    style: str
    encoding: ImageEncoding
    def __init__(self, prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., steps: _Optional[int] = ..., seed: _Optional[int] = ..., guidance_scale: _Optional[float] = ..., style: _Optional[str] = ..., encoding: _Optional[_Union[ImageEncoding, str]] = ...) -> None: ...

class ImageGenerationProgress(_message.Message):
    __slots__ = ("stage", "step", "total_steps")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    stage: str
    step: int
    total_steps: int
    def __init__(self, stage: _Optional[str] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ...) -> None: ...

class PictureSource(_message.Message):
    __slots__ = ("picture_id", "caption", "similarity", "credit")
    PICTURE_ID_FIELD_NUMBER: _ClassVar[int]
    CAPTION_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    picture_id: str
    caption: str
    similarity: float
    credit: str
    def __init__(self, picture_id: _Optional[str] = ..., caption: _Optional[str] = ..., similarity: _Optional[float] = ..., credit: _Optional[str] = ...) -> None: ...

class GeneratedImage(_message.Message):
    __slots__ = ("data", "encoding", "width", "height", "seed", "steps", "style", "source", "model")
    DATA_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    STYLE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    encoding: ImageEncoding
    width: int
    height: int
    seed: int
    steps: int
    style: str
    source: PictureSource
    model: _common_pb2.ModelInfo
    def __init__(self, data: _Optional[bytes] = ..., encoding: _Optional[_Union[ImageEncoding, str]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., seed: _Optional[int] = ..., steps: _Optional[int] = ..., style: _Optional[str] = ..., source: _Optional[_Union[PictureSource, _Mapping]] = ..., model: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ...) -> None: ...

class GenerateImageResponse(_message.Message):
    __slots__ = ("progress", "image")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    progress: ImageGenerationProgress
    image: GeneratedImage
    def __init__(self, progress: _Optional[_Union[ImageGenerationProgress, _Mapping]] = ..., image: _Optional[_Union[GeneratedImage, _Mapping]] = ...) -> None: ...
