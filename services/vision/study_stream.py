"""The SegmentVolume stream's protocol: one header, then the study's bytes in order, then labels in chunks.

Everything a client can get wrong about the stream itself is refused here with the field it concerns;
what is wrong inside the bytes (a corrupt file, bad spacing, NaN voxels) is for services/vision/volumes.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field

from modalmesh.v1 import common_pb2, vision_pb2
from services.runtime.errors import InvalidArgument, ResourceExhausted
from services.runtime.tensors import TENSOR_DTYPES
from services.vision.volumes import (Volume, VolumeLimits, axis_codes, nifti_bytes, raw_shape, read_dicom_zip,
                                    read_nifti, read_raw, three_numbers)

LABEL_CHUNK_BYTES = 1024 * 1024
# Progress while receiving: at most every this many bytes, or every tenth of the study if that is more.
PROGRESS_BYTES = 1024 * 1024
RAW_DTYPES = (common_pb2.DATA_TYPE_UINT8, common_pb2.DATA_TYPE_INT16, common_pb2.DATA_TYPE_INT32,
              common_pb2.DATA_TYPE_FP32, common_pb2.DATA_TYPE_FP64)
LABEL_FORMATS = (vision_pb2.LABEL_FORMAT_NIFTI_GZ, vision_pb2.LABEL_FORMAT_RAW, vision_pb2.LABEL_FORMAT_NONE)


def check_header(message: vision_pb2.SegmentVolumeRequest | None, limits: VolumeLimits) -> vision_pb2.VolumeHeader:
    """The first message's header, checked before a byte of the study is accepted."""
    if message is None:
        raise InvalidArgument(("header", "empty stream: send a header first, then the study's bytes in chunks"))
    if message.WhichOneof("part") != "header":
        raise InvalidArgument(("header", "the first message must be a header; a chunk came first"))
    header = message.header
    if header.format not in (vision_pb2.VOLUME_FORMAT_NIFTI, vision_pb2.VOLUME_FORMAT_DICOM_ZIP,
                             vision_pb2.VOLUME_FORMAT_RAW):
        raise InvalidArgument(("header.format", f"{_enum_name(vision_pb2.VolumeFormat, header.format)}: give "
                                                "VOLUME_FORMAT_NIFTI, VOLUME_FORMAT_DICOM_ZIP or VOLUME_FORMAT_RAW"))
    if header.total_bytes <= 0:
        raise InvalidArgument(("header.total_bytes", f"{header.total_bytes}: give the study's size in bytes"))
    if header.total_bytes > limits.max_bytes:
        # Refused before any chunk: nothing of a study past the limit is received or stored.
        raise ResourceExhausted(f"header.total_bytes: {header.total_bytes} bytes exceed the limit of "
                                f"{limits.max_bytes} bytes per study (MODALMESH_MAX_VOLUME_BYTES)")
    if header.label_format not in (vision_pb2.LABEL_FORMAT_UNSPECIFIED, *LABEL_FORMATS):
        raise InvalidArgument(("header.label_format", f"{_enum_name(vision_pb2.LabelFormat, header.label_format)}: "
                                                      "give LABEL_FORMAT_NIFTI_GZ, LABEL_FORMAT_RAW or "
                                                      "LABEL_FORMAT_NONE"))
    if header.format == vision_pb2.VOLUME_FORMAT_RAW:
        _check_raw(header, limits)
    elif header.HasField("raw"):
        raise InvalidArgument(("header.raw", "raw geometry goes with VOLUME_FORMAT_RAW only; a "
                                             f"{_enum_name(vision_pb2.VolumeFormat, header.format)} file carries "
                                             "its own"))
    return header


def _check_raw(header: vision_pb2.VolumeHeader, limits: VolumeLimits) -> None:
    """Bare voxels' geometry, checked from the header alone, so a wrong one costs no upload."""
    if not header.HasField("raw"):
        raise InvalidArgument(("header.raw", "VOLUME_FORMAT_RAW needs raw: dtype, shape, spacing_mm"))
    raw = header.raw
    if raw.dtype not in RAW_DTYPES:
        names = ", ".join(common_pb2.DataType.Name(d) for d in RAW_DTYPES)
        raise InvalidArgument(("header.raw.dtype", f"{_enum_name(common_pb2.DataType, raw.dtype)}: give one of "
                                                   f"{names}"))
    shape = raw_shape(raw.shape, limits)
    three_numbers(raw.spacing_mm, "header.raw.spacing_mm", positive=True)
    axis_codes(raw.orientation or "RAS", "header.raw.orientation")
    expected = shape[0] * shape[1] * shape[2] * TENSOR_DTYPES[raw.dtype].itemsize
    if expected != header.total_bytes:
        raise InvalidArgument(("header.total_bytes", f"{header.total_bytes} bytes declared, but shape {list(shape)} "
                                                     f"of {common_pb2.DataType.Name(raw.dtype)} takes {expected}"))


class StudyUpload:
    """The study's bytes, received in order into one buffer of the declared size."""

    def __init__(self, header: vision_pb2.VolumeHeader):
        self.header = header
        self.total = header.total_bytes
        self.data = bytearray(self.total)
        self.received = 0

    async def receive(self, requests: AsyncIterator[vision_pb2.SegmentVolumeRequest]
                      ) -> AsyncIterator[vision_pb2.SegmentationProgress]:
        """Take the chunks; yield RECEIVING progress every PROGRESS_BYTES (or tenth), and once all have come."""
        step, reported = max(PROGRESS_BYTES, self.total // 10), 0
        async for message in requests:
            self._take(message)
            if self.received - reported >= step:
                reported = self.received
                yield self.progress()
        if self.received != self.total:
            raise InvalidArgument(("header.total_bytes", f"the stream ended after {self.received} of the "
                                                         f"{self.total} bytes declared"))
        if reported != self.total:
            yield self.progress()

    def _take(self, message: vision_pb2.SegmentVolumeRequest) -> None:
        if message.WhichOneof("part") != "chunk":
            raise InvalidArgument(("header", "a second header: one stream carries one study"))
        chunk = message.chunk
        if chunk.offset != self.received:
            raise InvalidArgument(("chunk.offset", f"{chunk.offset}: chunks must come in order; the next one "
                                                   f"starts at byte {self.received}"))
        end = self.received + len(chunk.data)
        if end > self.total:
            raise InvalidArgument(("chunk.data", f"the chunks carry more than the {self.total} bytes of "
                                                 "header.total_bytes"))
        self.data[self.received:end] = chunk.data
        self.received = end

    def progress(self) -> vision_pb2.SegmentationProgress:
        return vision_pb2.SegmentationProgress(stage=vision_pb2.SEGMENTATION_STAGE_RECEIVING,
                                               bytes_received=self.received, total_bytes=self.total)


def decode_study(header: vision_pb2.VolumeHeader, data: bytes | bytearray, limits: VolumeLimits) -> Volume:
    """The study as a Volume, by the header's format (InvalidArgument from volumes.py when it is bad).

    The readers take the upload's own buffer: a copy into bytes would double the peak memory of a large study.
    """
    if header.format == vision_pb2.VOLUME_FORMAT_NIFTI:
        return read_nifti(data, limits)
    if header.format == vision_pb2.VOLUME_FORMAT_DICOM_ZIP:
        return read_dicom_zip(data, limits)
    raw = header.raw
    return read_raw(data, TENSOR_DTYPES[raw.dtype], tuple(raw.shape), tuple(raw.spacing_mm),
                    orientation=raw.orientation or "RAS", origin_mm=tuple(raw.origin_mm) or (0.0, 0.0, 0.0),
                    limits=limits)


def label_format_of(header: vision_pb2.VolumeHeader) -> int:
    return header.label_format or vision_pb2.LABEL_FORMAT_NIFTI_GZ


def encode_labels(labels, affine, label_format: int) -> bytes:
    if label_format == vision_pb2.LABEL_FORMAT_NIFTI_GZ:
        return nifti_bytes(labels, affine, compress=True)
    if label_format == vision_pb2.LABEL_FORMAT_RAW:
        return labels.tobytes(order="C")
    return b""


def label_chunks(data: bytes) -> Iterator[vision_pb2.LabelChunk]:
    view = memoryview(data)
    for offset in range(0, len(data), LABEL_CHUNK_BYTES):
        yield vision_pb2.LabelChunk(offset=offset, data=bytes(view[offset:offset + LABEL_CHUNK_BYTES]))


def _enum_name(enum, value: int) -> str:
    try:
        return enum.Name(value)
    except ValueError:
        return f"unknown value {value}"



# -- the client's side ------------------------------------------------------------------------------------


@dataclass
class SegmentationReply:
    """What a SegmentVolume stream answered: progress in order, the label file's bytes, the result."""

    progress: list[vision_pb2.SegmentationProgress] = field(default_factory=list)
    labels: bytes = b""
    result: vision_pb2.SegmentationResult | None = None
    study_ids: set[str] = field(default_factory=set)


def study_requests(header: vision_pb2.VolumeHeader, data: bytes, chunk_bytes: int = LABEL_CHUNK_BYTES
                   ) -> Iterator[vision_pb2.SegmentVolumeRequest]:
    """A SegmentVolume request stream: the header (total_bytes set to the data's size when 0), then the data."""
    first = vision_pb2.VolumeHeader()
    first.CopyFrom(header)
    first.total_bytes = first.total_bytes or len(data)
    yield vision_pb2.SegmentVolumeRequest(header=first)
    view = memoryview(data)
    for offset in range(0, len(data), chunk_bytes):
        yield vision_pb2.SegmentVolumeRequest(chunk=vision_pb2.VolumeChunk(
            offset=offset, data=bytes(view[offset:offset + chunk_bytes])))


def collect_reply(responses: Iterable[vision_pb2.SegmentVolumeResponse]) -> SegmentationReply:
    """Read a whole SegmentVolume response stream; label chunks must arrive in order."""
    reply, labels = SegmentationReply(), bytearray()
    for response in responses:
        reply.study_ids.add(response.study_id)
        event = response.WhichOneof("event")
        if event == "progress":
            reply.progress.append(response.progress)
        elif event == "labels":
            if response.labels.offset != len(labels):
                raise ValueError(f"label chunk at {response.labels.offset}, expected {len(labels)}")
            labels += response.labels.data
        elif event == "result":
            reply.result = response.result
    reply.labels = bytes(labels)
    return reply
