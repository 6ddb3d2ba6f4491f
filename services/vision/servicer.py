"""modalmesh.v1.VisionService: Inspect on the batched surface-defect model; SegmentVolume on the batched
3D segmentation model; GenerateImage on the batched image generation model."""

from __future__ import annotations

import asyncio
import math
import secrets
import unicodedata

import cv2
import numpy as np

from modalmesh.v1 import common_pb2, vision_pb2, vision_pb2_grpc
from services.runtime.errors import FailedPrecondition, InvalidArgument
from services.runtime.served_model import ServedModel
from services.runtime.tensors import encode_tensor
from services.vision.image_generation import GeneratedPicture, ImageGenerator, ImageSpec
from services.vision.images import ImageLimits, encode_png, image_rgb
from services.vision.inspection import Inspection
from services.vision.picture_styles import STYLES
from services.vision.segmentation import SegmentedStudy, StudyAdmission, StudySegmenter
from services.vision.study_stream import (StudyUpload, check_header, decode_study, encode_labels, label_chunks,
                                          label_format_of)
from services.vision.textures import CLASSES
from services.vision.volumes import Volume, VolumeLimits

DEFAULT_THRESHOLD = 0.5
DEFECT_CLASSES = {name: i for i, name in enumerate(CLASSES) if i}   # the proto's DefectClass numbers
STAGES = {"segmenting": vision_pb2.SEGMENTATION_STAGE_SEGMENTING,
          "measuring": vision_pb2.SEGMENTATION_STAGE_MEASURING}
MAX_PROMPT_CHARS = 2000
GENERATED_SIDES = (64, 2048)   # each side of a generated image, a multiple of 8
MAX_GENERATION_STEPS = 100
GUIDANCE_RANGE = (0.0, 30.0)
JPEG_QUALITY = 90


class VisionServicer(vision_pb2_grpc.VisionServiceServicer):
    def __init__(self, inspector: ServedModel, limits: ImageLimits, default_threshold: float = DEFAULT_THRESHOLD,
                 segmenter: StudySegmenter | None = None, volume_limits: VolumeLimits = VolumeLimits(),
                 admission: StudyAdmission | None = None, generator: ImageGenerator | None = None):
        self.inspector = inspector
        self.limits = limits
        self.default_threshold = default_threshold
        self.segmenter = segmenter
        self.volume_limits = volume_limits
        self.admission = admission or StudyAdmission(active=4, waiting=16)
        self.generator = generator

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

    async def GenerateImage(self, request: vision_pb2.GenerateImageRequest, context):
        if self.generator is None:
            raise FailedPrecondition("this vision service serves no image generation model "
                                     "(MODALMESH_IMAGE_GENERATION_MODEL)")
        spec = image_spec(request, self.limits)
        encoding = request.encoding or vision_pb2.IMAGE_ENCODING_PNG
        async for event in self.generator.generate(spec, context):
            if isinstance(event, GeneratedPicture):
                picture = event
            else:
                yield _generation_progress(event.stage, event.step, event.total)
        yield _generation_progress("encoding", picture.steps, picture.steps)
        data = await asyncio.to_thread(encode_picture, picture.pixels, encoding)
        height, width = picture.pixels.shape[:2]
        yield vision_pb2.GenerateImageResponse(image=vision_pb2.GeneratedImage(
            data=data, encoding=encoding, width=width, height=height, seed=spec.seed, steps=picture.steps,
            style=spec.style, source=_picture_source(picture), model=self.generator.served.model_info))

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


def image_spec(request: vision_pb2.GenerateImageRequest, limits: ImageLimits) -> ImageSpec:
    """The request as an ImageSpec, or InvalidArgument naming every field that is wrong."""
    violations = [*_text_violations("prompt", request.prompt, required=True),
                  *_text_violations("negative_prompt", request.negative_prompt, required=False),
                  *_side_violations(request, limits)]
    if request.steps > MAX_GENERATION_STEPS:
        violations.append(("steps", f"{request.steps}: give 1 to {MAX_GENERATION_STEPS}, or 0 for the model's default"))
    low, high = GUIDANCE_RANGE
    if request.HasField("guidance_scale") and not low <= request.guidance_scale <= high:   # NaN fails too
        violations.append(("guidance_scale", f"{request.guidance_scale}: give {low:g} to {high:g}"))
    if request.style not in STYLES:
        violations.append(("style", f"{request.style!r} is not a style; choose one of {', '.join(STYLES[1:])}, "
                                    "or '' for none"))
    if request.encoding not in vision_pb2.ImageEncoding.values():
        violations.append(("encoding", f"{request.encoding} is not an ImageEncoding"))
    if violations:
        raise InvalidArgument(violations)
    return ImageSpec(prompt=request.prompt.strip(), negative_prompt=request.negative_prompt.strip(),
                     width=request.width, height=request.height, steps=request.steps,
                     guidance=request.guidance_scale if request.HasField("guidance_scale") else None,
                     seed=request.seed if request.HasField("seed") else secrets.randbelow(2**32),
                     style=request.style)


def _text_violations(field: str, text: str, required: bool) -> list[tuple[str, str]]:
    if required and not text.strip():
        return [(field, "empty: say what the picture shows")]
    if len(text) > MAX_PROMPT_CHARS:
        return [(field, f"{len(text)} characters exceed the limit of {MAX_PROMPT_CHARS}")]
    # Tabs and line breaks are white space; any other control character is refused.
    control = next((c for c in text if unicodedata.category(c) == "Cc" and c not in "\t\n\r"), None)
    if control is not None:
        return [(field, f"contains the control character U+{ord(control):04X}")]
    return []


def _side_violations(request: vision_pb2.GenerateImageRequest, limits: ImageLimits) -> list[tuple[str, str]]:
    low, high = GENERATED_SIDES
    violations = [(name, f"{side}: give {low} to {high} pixels, a multiple of 8, or 0 for the model's default")
                  for name, side in (("width", request.width), ("height", request.height))
                  if side and not (low <= side <= high and side % 8 == 0)]
    if not violations and request.width * request.height > limits.max_pixels:
        violations.append(("width", f"{request.width} x {request.height} = {request.width * request.height} "
                                    f"pixels exceed the limit of {limits.max_pixels}"))
    return violations


def encode_picture(pixels: np.ndarray, encoding: int) -> bytes:
    """RGB pixels as PNG, or as JPEG of quality 90."""
    bgr = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    if encoding == vision_pb2.IMAGE_ENCODING_JPEG:
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    else:
        ok, data = cv2.imencode(".png", bgr)
    if not ok:
        raise RuntimeError("encoding the generated image failed")
    return data.tobytes()


def _generation_progress(stage: str, step: int, total: int) -> vision_pb2.GenerateImageResponse:
    return vision_pb2.GenerateImageResponse(progress=vision_pb2.ImageGenerationProgress(
        stage=stage, step=step, total_steps=total))


def _picture_source(picture: GeneratedPicture) -> vision_pb2.PictureSource | None:
    if picture.match is None:
        return None
    found = picture.match.picture
    return vision_pb2.PictureSource(picture_id=found.picture_id, caption=found.caption,
                                    similarity=picture.match.similarity, credit=found.credit)
