from modalmesh.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AssetType(_message.Message):
    __slots__ = ("name", "sensors", "cycle_seconds", "window_rows")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SENSORS_FIELD_NUMBER: _ClassVar[int]
    CYCLE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_ROWS_FIELD_NUMBER: _ClassVar[int]
    name: str
    sensors: _containers.RepeatedScalarFieldContainer[str]
    cycle_seconds: float
    window_rows: int
    def __init__(self, name: _Optional[str] = ..., sensors: _Optional[_Iterable[str]] = ..., cycle_seconds: _Optional[float] = ..., window_rows: _Optional[int] = ...) -> None: ...

class Asset(_message.Message):
    __slots__ = ("asset_id", "type", "stored_rows", "last_timestamp_ms")
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STORED_ROWS_FIELD_NUMBER: _ClassVar[int]
    LAST_TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    type: AssetType
    stored_rows: int
    last_timestamp_ms: int
    def __init__(self, asset_id: _Optional[str] = ..., type: _Optional[_Union[AssetType, _Mapping]] = ..., stored_rows: _Optional[int] = ..., last_timestamp_ms: _Optional[int] = ...) -> None: ...

class RegisterAssetRequest(_message.Message):
    __slots__ = ("asset_id", "asset_type")
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    ASSET_TYPE_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    asset_type: str
    def __init__(self, asset_id: _Optional[str] = ..., asset_type: _Optional[str] = ...) -> None: ...

class RegisterAssetResponse(_message.Message):
    __slots__ = ("asset", "created")
    ASSET_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    asset: Asset
    created: bool
    def __init__(self, asset: _Optional[_Union[Asset, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class ListAssetsRequest(_message.Message):
    __slots__ = ("asset_type",)
    ASSET_TYPE_FIELD_NUMBER: _ClassVar[int]
    asset_type: str
    def __init__(self, asset_type: _Optional[str] = ...) -> None: ...

class ListAssetsResponse(_message.Message):
    __slots__ = ("assets", "asset_types")
    ASSETS_FIELD_NUMBER: _ClassVar[int]
    ASSET_TYPES_FIELD_NUMBER: _ClassVar[int]
    assets: _containers.RepeatedCompositeFieldContainer[Asset]
    asset_types: _containers.RepeatedCompositeFieldContainer[AssetType]
    def __init__(self, assets: _Optional[_Iterable[_Union[Asset, _Mapping]]] = ..., asset_types: _Optional[_Iterable[_Union[AssetType, _Mapping]]] = ...) -> None: ...

class IngestRequest(_message.Message):
    __slots__ = ("sequence", "asset_id", "sensors", "timestamps_ms", "values")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    SENSORS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_MS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    asset_id: str
    sensors: _containers.RepeatedScalarFieldContainer[str]
    timestamps_ms: _common_pb2.Tensor
    values: _common_pb2.Tensor
    def __init__(self, sequence: _Optional[int] = ..., asset_id: _Optional[str] = ..., sensors: _Optional[_Iterable[str]] = ..., timestamps_ms: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., values: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ...) -> None: ...

class IngestResponse(_message.Message):
    __slots__ = ("sequence", "asset_id", "stored_rows", "last_timestamp_ms")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    STORED_ROWS_FIELD_NUMBER: _ClassVar[int]
    LAST_TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    asset_id: str
    stored_rows: int
    last_timestamp_ms: int
    def __init__(self, sequence: _Optional[int] = ..., asset_id: _Optional[str] = ..., stored_rows: _Optional[int] = ..., last_timestamp_ms: _Optional[int] = ...) -> None: ...

class DetectAnomaliesRequest(_message.Message):
    __slots__ = ("asset_ids", "windows", "asset_type")
    ASSET_IDS_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    ASSET_TYPE_FIELD_NUMBER: _ClassVar[int]
    asset_ids: _containers.RepeatedScalarFieldContainer[str]
    windows: int
    asset_type: str
    def __init__(self, asset_ids: _Optional[_Iterable[str]] = ..., windows: _Optional[int] = ..., asset_type: _Optional[str] = ...) -> None: ...

class WindowScore(_message.Message):
    __slots__ = ("start_ms", "end_ms", "score", "anomalous")
    START_MS_FIELD_NUMBER: _ClassVar[int]
    END_MS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    ANOMALOUS_FIELD_NUMBER: _ClassVar[int]
    start_ms: int
    end_ms: int
    score: float
    anomalous: bool
    def __init__(self, start_ms: _Optional[int] = ..., end_ms: _Optional[int] = ..., score: _Optional[float] = ..., anomalous: _Optional[bool] = ...) -> None: ...

class AssetAnomalies(_message.Message):
    __slots__ = ("asset_id", "windows", "threshold", "top_sensors", "model")
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TOP_SENSORS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    windows: _containers.RepeatedCompositeFieldContainer[WindowScore]
    threshold: float
    top_sensors: _containers.RepeatedScalarFieldContainer[str]
    model: _common_pb2.ModelInfo
    def __init__(self, asset_id: _Optional[str] = ..., windows: _Optional[_Iterable[_Union[WindowScore, _Mapping]]] = ..., threshold: _Optional[float] = ..., top_sensors: _Optional[_Iterable[str]] = ..., model: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ...) -> None: ...

class DetectAnomaliesResponse(_message.Message):
    __slots__ = ("assets", "model")
    ASSETS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    assets: _containers.RepeatedCompositeFieldContainer[AssetAnomalies]
    model: _common_pb2.ModelInfo
    def __init__(self, assets: _Optional[_Iterable[_Union[AssetAnomalies, _Mapping]]] = ..., model: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ...) -> None: ...

class PredictRemainingLifeRequest(_message.Message):
    __slots__ = ("asset_ids", "asset_type")
    ASSET_IDS_FIELD_NUMBER: _ClassVar[int]
    ASSET_TYPE_FIELD_NUMBER: _ClassVar[int]
    asset_ids: _containers.RepeatedScalarFieldContainer[str]
    asset_type: str
    def __init__(self, asset_ids: _Optional[_Iterable[str]] = ..., asset_type: _Optional[str] = ...) -> None: ...

class RemainingLife(_message.Message):
    __slots__ = ("asset_id", "cycles", "lower_cycles", "upper_cycles", "coverage", "as_of_ms", "cycle_seconds")
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    CYCLES_FIELD_NUMBER: _ClassVar[int]
    LOWER_CYCLES_FIELD_NUMBER: _ClassVar[int]
    UPPER_CYCLES_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    AS_OF_MS_FIELD_NUMBER: _ClassVar[int]
    CYCLE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    cycles: float
    lower_cycles: float
    upper_cycles: float
    coverage: float
    as_of_ms: int
    cycle_seconds: float
    def __init__(self, asset_id: _Optional[str] = ..., cycles: _Optional[float] = ..., lower_cycles: _Optional[float] = ..., upper_cycles: _Optional[float] = ..., coverage: _Optional[float] = ..., as_of_ms: _Optional[int] = ..., cycle_seconds: _Optional[float] = ...) -> None: ...

class PredictRemainingLifeResponse(_message.Message):
    __slots__ = ("assets", "model")
    ASSETS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    assets: _containers.RepeatedCompositeFieldContainer[RemainingLife]
    model: _common_pb2.ModelInfo
    def __init__(self, assets: _Optional[_Iterable[_Union[RemainingLife, _Mapping]]] = ..., model: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ...) -> None: ...

class QueryTelemetryRequest(_message.Message):
    __slots__ = ("asset_id", "start_ms", "end_ms", "max_points")
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    START_MS_FIELD_NUMBER: _ClassVar[int]
    END_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_POINTS_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    start_ms: int
    end_ms: int
    max_points: int
    def __init__(self, asset_id: _Optional[str] = ..., start_ms: _Optional[int] = ..., end_ms: _Optional[int] = ..., max_points: _Optional[int] = ...) -> None: ...

class QueryTelemetryResponse(_message.Message):
    __slots__ = ("asset_id", "sensors", "timestamps_ms", "values", "matched_rows")
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    SENSORS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_MS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    MATCHED_ROWS_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    sensors: _containers.RepeatedScalarFieldContainer[str]
    timestamps_ms: _common_pb2.Tensor
    values: _common_pb2.Tensor
    matched_rows: int
    def __init__(self, asset_id: _Optional[str] = ..., sensors: _Optional[_Iterable[str]] = ..., timestamps_ms: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., values: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., matched_rows: _Optional[int] = ...) -> None: ...
