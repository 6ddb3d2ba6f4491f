"""modalmesh.v1.VisionService: Inspect on the batched surface-defect model."""

from __future__ import annotations

import asyncio
import math

from modalmesh.v1 import common_pb2, vision_pb2, vision_pb2_grpc
from services.runtime.errors import InvalidArgument
from services.runtime.served_model import ServedModel
from services.runtime.tensors import encode_tensor
from services.vision.images import ImageLimits, encode_png, image_rgb
from services.vision.inspection import Inspection
from services.vision.textures import CLASSES

DEFAULT_THRESHOLD = 0.5
DEFECT_CLASSES = {name: i for i, name in enumerate(CLASSES) if i}   # the proto's DefectClass numbers


class VisionServicer(vision_pb2_grpc.VisionServiceServicer):
    def __init__(self, inspector: ServedModel, limits: ImageLimits, default_threshold: float = DEFAULT_THRESHOLD):
        self.inspector = inspector
        self.limits = limits
        self.default_threshold = default_threshold

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


def _defect(found) -> vision_pb2.Defect:
    x, y, w, h = found.box
    return vision_pb2.Defect(defect_class=DEFECT_CLASSES[found.kind], box=vision_pb2.BoundingBox(
        x=x, y=y, width=w, height=h), score=found.score, area=found.pixels)
