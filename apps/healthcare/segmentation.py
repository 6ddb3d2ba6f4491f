"""The client side of VisionService.SegmentVolume: a study file streamed in chunks, the service's
progress handed to a callback, the label volume and measurements collected."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from modalmesh.v1 import vision_pb2, vision_pb2_grpc
from services.runtime.errors import bad_request_of

CHUNK_BYTES = 1 << 20
NIFTI, DICOM_ZIP = "nifti", "dicom-zip"
FORMATS = {NIFTI: vision_pb2.VOLUME_FORMAT_NIFTI, DICOM_ZIP: vision_pb2.VOLUME_FORMAT_DICOM_ZIP}
# Statuses that mean "this study is wrong", not "the service is in trouble".
REFUSALS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OUT_OF_RANGE,
            grpc.StatusCode.FAILED_PRECONDITION)
STAGES = {vision_pb2.SEGMENTATION_STAGE_RECEIVING: "receiving", vision_pb2.SEGMENTATION_STAGE_PREPARING: "preparing",
          vision_pb2.SEGMENTATION_STAGE_SEGMENTING: "segmenting", vision_pb2.SEGMENTATION_STAGE_MEASURING: "measuring"}


class StudyRejected(Exception):
    """The vision service refused the study: its status and field violations, for the person who sent it."""

    def __init__(self, code: str, message: str, violations: list[tuple[str, str]]):
        super().__init__(message)
        self.code, self.message, self.violations = code, message, violations


class SegmentationUnavailable(Exception):
    """The vision service could not be reached or failed: the study may be sent again."""


@dataclass(frozen=True)
class Segmentation:
    result: vision_pb2.SegmentationResult
    labels: bytes   # NIfTI-gz, the study's own grid


def study_format(path: Path) -> str:
    """NIfTI (plain or gzip) or a zip of a DICOM series, from the file's first bytes."""
    with open(path, "rb") as file:
        head = file.read(4)
    if head[:2] == b"PK":
        return DICOM_ZIP
    if head[:2] == b"\x1f\x8b" or int.from_bytes(head, "little") in (348, 540) \
            or int.from_bytes(head, "big") in (348, 540):
        return NIFTI
    raise ValueError("the file is neither a NIfTI volume (.nii, .nii.gz) nor a zip of a DICOM series")


Progress = Callable[[vision_pb2.SegmentationProgress], Awaitable[None]]


async def segment(vision: vision_pb2_grpc.VisionServiceStub, path: Path, kind: str, study_id: str,
                  timeout_s: float, on_progress: Progress) -> Segmentation:
    size = path.stat().st_size
    header = vision_pb2.VolumeHeader(format=FORMATS[kind], total_bytes=size, study_id=study_id,
                                     label_format=vision_pb2.LABEL_FORMAT_NIFTI_GZ)
    call = vision.SegmentVolume(_requests(header, path), timeout=timeout_s)
    labels, result = bytearray(), None
    try:
        async for response in call:
            part = response.WhichOneof("event")
            if part == "progress":
                await on_progress(response.progress)
            elif part == "labels":
                if response.labels.offset != len(labels):
                    raise SegmentationUnavailable("label chunks arrived out of order")
                labels += response.labels.data
            elif part == "result":
                result = response.result
    except grpc.aio.AioRpcError as error:
        if error.code() in REFUSALS:
            raise StudyRejected(error.code().name, error.details() or "", bad_request_of(error)) from None
        raise SegmentationUnavailable(f"vision service: {error.code().name}: {error.details()}") from None
    if result is None or len(labels) != result.label_bytes:
        raise SegmentationUnavailable("the vision service ended the stream without a whole result")
    return Segmentation(result, bytes(labels))


async def _requests(header: vision_pb2.VolumeHeader, path: Path):
    yield vision_pb2.SegmentVolumeRequest(header=header)
    offset = 0
    with open(path, "rb") as file:
        while chunk := await asyncio.to_thread(file.read, CHUNK_BYTES):
            yield vision_pb2.SegmentVolumeRequest(chunk=vision_pb2.VolumeChunk(offset=offset, data=chunk))
            offset += len(chunk)
