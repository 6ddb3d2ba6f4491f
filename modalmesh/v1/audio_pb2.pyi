from modalmesh.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AudioEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIO_ENCODING_UNSPECIFIED: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_WAV: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_FLAC: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_PCM_S16LE: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_PCM_F32LE: _ClassVar[AudioEncoding]
AUDIO_ENCODING_UNSPECIFIED: AudioEncoding
AUDIO_ENCODING_WAV: AudioEncoding
AUDIO_ENCODING_FLAC: AudioEncoding
AUDIO_ENCODING_PCM_S16LE: AudioEncoding
AUDIO_ENCODING_PCM_F32LE: AudioEncoding

class AudioFormat(_message.Message):
    __slots__ = ("encoding", "sample_rate_hz", "channels")
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    encoding: AudioEncoding
    sample_rate_hz: int
    channels: int
    def __init__(self, encoding: _Optional[_Union[AudioEncoding, str]] = ..., sample_rate_hz: _Optional[int] = ..., channels: _Optional[int] = ...) -> None: ...

class Audio(_message.Message):
    __slots__ = ("data", "format")
    DATA_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    format: AudioFormat
    def __init__(self, data: _Optional[bytes] = ..., format: _Optional[_Union[AudioFormat, _Mapping]] = ...) -> None: ...

class DetectVoiceRequest(_message.Message):
    __slots__ = ("audio", "threshold", "min_speech_ms", "min_silence_ms")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MIN_SPEECH_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_SILENCE_MS_FIELD_NUMBER: _ClassVar[int]
    audio: Audio
    threshold: float
    min_speech_ms: int
    min_silence_ms: int
    def __init__(self, audio: _Optional[_Union[Audio, _Mapping]] = ..., threshold: _Optional[float] = ..., min_speech_ms: _Optional[int] = ..., min_silence_ms: _Optional[int] = ...) -> None: ...

class SpeechSegment(_message.Message):
    __slots__ = ("start_s", "end_s")
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    start_s: float
    end_s: float
    def __init__(self, start_s: _Optional[float] = ..., end_s: _Optional[float] = ...) -> None: ...

class DetectVoiceResponse(_message.Message):
    __slots__ = ("segments", "duration_s", "speech_fraction", "model")
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    SPEECH_FRACTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    segments: _containers.RepeatedCompositeFieldContainer[SpeechSegment]
    duration_s: float
    speech_fraction: float
    model: _common_pb2.ModelInfo
    def __init__(self, segments: _Optional[_Iterable[_Union[SpeechSegment, _Mapping]]] = ..., duration_s: _Optional[float] = ..., speech_fraction: _Optional[float] = ..., model: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ...) -> None: ...

class TranscriptionConfig(_message.Message):
    __slots__ = ("format", "phrases", "jsgf_grammar")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    PHRASES_FIELD_NUMBER: _ClassVar[int]
    JSGF_GRAMMAR_FIELD_NUMBER: _ClassVar[int]
    format: AudioFormat
    phrases: _containers.RepeatedScalarFieldContainer[str]
    jsgf_grammar: str
    def __init__(self, format: _Optional[_Union[AudioFormat, _Mapping]] = ..., phrases: _Optional[_Iterable[str]] = ..., jsgf_grammar: _Optional[str] = ...) -> None: ...

class TranscribeRequest(_message.Message):
    __slots__ = ("config", "audio")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    config: TranscriptionConfig
    audio: bytes
    def __init__(self, config: _Optional[_Union[TranscriptionConfig, _Mapping]] = ..., audio: _Optional[bytes] = ...) -> None: ...

class RecognizedWord(_message.Message):
    __slots__ = ("word", "start_s", "end_s")
    WORD_FIELD_NUMBER: _ClassVar[int]
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    word: str
    start_s: float
    end_s: float
    def __init__(self, word: _Optional[str] = ..., start_s: _Optional[float] = ..., end_s: _Optional[float] = ...) -> None: ...

class TranscribeResponse(_message.Message):
    __slots__ = ("text", "is_final", "audio_s", "words", "model")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IS_FINAL_FIELD_NUMBER: _ClassVar[int]
    AUDIO_S_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    text: str
    is_final: bool
    audio_s: float
    words: _containers.RepeatedCompositeFieldContainer[RecognizedWord]
    model: _common_pb2.ModelInfo
    def __init__(self, text: _Optional[str] = ..., is_final: _Optional[bool] = ..., audio_s: _Optional[float] = ..., words: _Optional[_Iterable[_Union[RecognizedWord, _Mapping]]] = ..., model: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ...) -> None: ...

class ScoreAnomalyRequest(_message.Message):
    __slots__ = ("audio",)
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    audio: Audio
    def __init__(self, audio: _Optional[_Union[Audio, _Mapping]] = ...) -> None: ...

class ScoreAnomalyResponse(_message.Message):
    __slots__ = ("score", "threshold", "anomalous", "log_mel", "window_scores", "frame_hop_s", "min_frequency_hz", "max_frequency_hz", "model")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    ANOMALOUS_FIELD_NUMBER: _ClassVar[int]
    LOG_MEL_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SCORES_FIELD_NUMBER: _ClassVar[int]
    FRAME_HOP_S_FIELD_NUMBER: _ClassVar[int]
    MIN_FREQUENCY_HZ_FIELD_NUMBER: _ClassVar[int]
    MAX_FREQUENCY_HZ_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    score: float
    threshold: float
    anomalous: bool
    log_mel: _common_pb2.Tensor
    window_scores: _common_pb2.Tensor
    frame_hop_s: float
    min_frequency_hz: float
    max_frequency_hz: float
    model: _common_pb2.ModelInfo
    def __init__(self, score: _Optional[float] = ..., threshold: _Optional[float] = ..., anomalous: _Optional[bool] = ..., log_mel: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., window_scores: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., frame_hop_s: _Optional[float] = ..., min_frequency_hz: _Optional[float] = ..., max_frequency_hz: _Optional[float] = ..., model: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ...) -> None: ...

class SynthesizeRequest(_message.Message):
    __slots__ = ("text", "voice", "words_per_minute", "encoding", "sample_rate_hz")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    WORDS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    text: str
    voice: str
    words_per_minute: int
    encoding: AudioEncoding
    sample_rate_hz: int
    def __init__(self, text: _Optional[str] = ..., voice: _Optional[str] = ..., words_per_minute: _Optional[int] = ..., encoding: _Optional[_Union[AudioEncoding, str]] = ..., sample_rate_hz: _Optional[int] = ...) -> None: ...

class SynthesizeResponse(_message.Message):
    __slots__ = ("audio", "duration_s", "model")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    audio: Audio
    duration_s: float
    model: _common_pb2.ModelInfo
    def __init__(self, audio: _Optional[_Union[Audio, _Mapping]] = ..., duration_s: _Optional[float] = ..., model: _Optional[_Union[_common_pb2.ModelInfo, _Mapping]] = ...) -> None: ...
