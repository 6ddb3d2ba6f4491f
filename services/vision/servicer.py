"""modalmesh.v1.VisionService: Inspect on the batched surface-defect model; SegmentVolume on the batched
3D segmentation model."""

from __future__ import annotations

import asyncio
import math

from modalmesh.v1 import common_pb2, vision_pb2, vision_pb2_grpc
from services.runtime.errors import FailedPrecondition, InvalidArgument
from services.runtime.served_model import ServedModel
from services.runtime.tensors import encode_tensor
from services.vision.images import ImageLimits, encode_png, image_rgb
from services.vision.inspection import Inspection
from services.vision.segmentation import SegmentedStudy, StudyAdmission, StudySegmenter
from services.vision.study_stream import (StudyUpload, check_header, decode_study, encode_labels, label_chunks,
                                          label_format_of)
from services.vision.textures import CLASSES
from services.vision.volumes import Volume, VolumeLimits

DEFAULT_THRESHOLD = 0.5
DEFECT_CLASSES = {name: i for i, name in enumerate(CLASSES) if i}   # the proto's DefectClass numbers
STAGES = {"segmenting": vision_pb2.SEGMENTATION_STAGE_SEGMENTING,
          "measuring": vision_pb2.SEGMENTATION_STAGE_MEASURING}


class VisionServicer(vision_pb2_grpc.VisionServiceServicer):
    def __init__(self, inspector: ServedModel, limits: ImageLimits, default_threshold: float = DEFAULT_THRESHOLD,
                 segmenter: StudySegmenter | None = None, volume_limits: VolumeLimits = VolumeLimits(),
                 admission: StudyAdmission | None = None):
        self.inspector = inspector
        self.limits = limits
        self.default_threshold = default_threshold
        self.segmenter = segmenter
        self.volume_limits = volume_limits
        self.admission = admission or StudyAdmission(active=4, waiting=16)

    async def Inspect(self, request: vision_pb2.InspectRequest, context) -> vision_pb2.InspectResponse:
        threshold = self._threshold(request)
        self.inspector.require_ready()
        # Decoding a large JPEG takes milliseconds: off the event loop, like the model.
        image = await asyncio.to_thread(image_rgb, request.image, self.limits)
        [inspection] = await self.inspector.infer([image], context)
        height, width = image.shape[:2]
        response = vision_pb2.InspectResponse(
            defects=[_defect(d) for d in inspection.defects],
            defect_score=inspection.defect_score,
            threshold=threshold,
            verdict=vision_pb2.VERDICT_FAIL if inspection.defect_score >= threshold else vision_pb2.VERDICT_PASS,
            width=width, height=height,
            model=self.inspector.model_info,
        )
        await self._attach_mask(response, inspection, request.mask_encoding)
        return response

    def _threshold(self, request: vision_pb2.InspectRequest) -> float:
        if not request.HasField("threshold"):
            return self.default_threshold
        if not (0 < request.threshold <= 1) or math.isnan(request.threshold):
            raise InvalidArgument(("threshold", f"{request.threshold}: give a score in (0, 1]"))
        return request.threshold

    @staticmethod
    async def _attach_mask(response: vision_pb2.InspectResponse, inspection: Inspection, encoding) -> None:
        if encoding == vision_pb2.MASK_ENCODING_NONE:
            return
        if encoding == vision_pb2.MASK_ENCODING_PNG:
            response.mask_png = await asyncio.to_thread(encode_png, inspection.mask)
            return
        response.mask.CopyFrom(encode_tensor(inspection.mask, common_pb2.DATA_TYPE_UINT8))

    async def SegmentVolume(self, request_iterator, context):
        if self.segmenter is None:
            raise FailedPrecondition("this vision service serves no segmentation model (MODALMESH_SEGMENTATION_MODEL)")
        self.segmenter.served.require_ready()
        requests = aiter(request_iterator)
        header = check_header(await anext(requests, None), self.volume_limits)
        study_id = header.study_id   # echoed on every response, never logged
        async with self.admission.slot():
            upload = StudyUpload(header)
            async for progress in upload.receive(requests):
                yield vision_pb2.SegmentVolumeResponse(study_id=study_id, progress=progress)
            yield _stage(study_id, vision_pb2.SEGMENTATION_STAGE_PREPARING)
            volume = await asyncio.to_thread(decode_study, header, upload.data, self.volume_limits)
            del upload   # the decoded volume is all that is needed now
            async for event in self.segmenter.segment(volume, context):
                if isinstance(event, SegmentedStudy):
                    study = event
                else:
                    yield _stage(study_id, STAGES[event.stage], event.windows_done, event.windows_total)
            label_format = label_format_of(header)
            labels = await asyncio.to_thread(encode_labels, study.labels, volume.affine, label_format)
            for chunk in label_chunks(labels):
                yield vision_pb2.SegmentVolumeResponse(study_id=study_id, labels=chunk)
            yield vision_pb2.SegmentVolumeResponse(study_id=study_id, result=self._result(
                study_id, study, volume, label_format, len(labels)))

    def _result(self, study_id: str, study: SegmentedStudy, volume: Volume, label_format: int,
                label_bytes: int) -> vision_pb2.SegmentationResult:
        return vision_pb2.SegmentationResult(
            study_id=study_id, structures=[_structure(s) for s in study.structures],
            geometry=vision_pb2.VolumeGeometry(shape=list(volume.voxels.shape), spacing_mm=list(volume.spacing_mm),
                                               orientation=volume.orientation,
                                               affine=[float(v) for v in volume.affine.reshape(-1)]),
            label_format=label_format, label_bytes=label_bytes,
            label_names=self.segmenter.plan.spec.labels, model=self.segmenter.served.model_info)


def _stage(study_id: str, stage: int, done: int = 0, total: int = 0) -> vision_pb2.SegmentVolumeResponse:
    return vision_pb2.SegmentVolumeResponse(study_id=study_id, progress=vision_pb2.SegmentationProgress(
        stage=stage, windows_done=done, windows_total=total))


def _structure(found) -> vision_pb2.StructureMeasurement:
    box = (vision_pb2.VoxelBox(min_index=list(found.box_min), max_index=list(found.box_max))
           if found.box_min is not None else vision_pb2.VoxelBox())
    return vision_pb2.StructureMeasurement(label=found.label, name=found.name, voxel_count=found.voxel_count,
                                           volume_ml=found.volume_ml, bounding_box=box,
                                           centroid_mm=list(found.centroid_mm or ()))


def _defect(found) -> vision_pb2.Defect:
    x, y, w, h = found.box
    return vision_pb2.Defect(defect_class=DEFECT_CLASSES[found.kind], box=vision_pb2.BoundingBox(
        x=x, y=y, width=w, height=h), score=found.score, area=found.pixels)
