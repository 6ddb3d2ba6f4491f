"""What happens to a machine's inspection image or acoustic clip: the vision or audio service scores
it, the picture for people is rendered, and the result becomes the twin's state."""

from __future__ import annotations

import asyncio
import logging

import grpc
import numpy as np

from apps.clients import Availability
from apps.manufacturing import assets, pictures
from apps.manufacturing.updates import FleetUpdates
from apps.twins import TwinStore, finite
from modalmesh.v1 import audio_pb2, audio_pb2_grpc, common_pb2, vision_pb2, vision_pb2_grpc
from services.iot.mqtt_bridge import topics
from services.runtime.tensors import decode_tensor

log = logging.getLogger(__name__)

VISION, AUDIO = "vision", "audio"


class MediaRecorder:
    def __init__(self, vision: vision_pb2_grpc.VisionServiceStub, audio: audio_pb2_grpc.AudioServiceStub,
                 twins: TwinStore, images: pictures.LatestImages, availability: Availability,
                 updates: FleetUpdates, call_timeout_s: float):
        self.vision, self.audio, self.twins, self.images = vision, audio, twins, images
        self.availability, self.updates, self.timeout = availability, updates, call_timeout_s

    async def __call__(self, where: topics.AssetTopic, media: topics.MediaMessage) -> None:
        record = {topics.INSPECTION: self.inspect, topics.ACOUSTIC: self.listen}.get(where.kind)
        if record is not None:
            await record(where, media)
            await self.updates.bump()

    async def inspect(self, where: topics.AssetTopic, media: topics.MediaMessage) -> None:
        request = vision_pb2.InspectRequest(image=vision_pb2.Image(encoded=media.data),
                                            mask_encoding=vision_pb2.MASK_ENCODING_TENSOR)
        reply = await self._call(VISION, self.vision.Inspect(request, timeout=self.timeout))
        if reply is None:
            return
        defects = [pictures.BoxedDefect(_defect_label(d.defect_class), d.score,
                                        (d.box.x, d.box.y, d.box.width, d.box.height)) for d in reply.defects]
        png = await asyncio.to_thread(pictures.inspection_overlay, media.data, defects, _array(reply.mask))
        properties = {
            "verdict": vision_pb2.Verdict.Name(reply.verdict).removeprefix("VERDICT_").lower(),
            "defectScore": finite(reply.defect_score), "threshold": finite(reply.threshold),
            "defects": [{"class": d.label, "score": finite(d.score), "box": list(d.box)} for d in defects],
            "timestampMs": media.timestamp_ms, "model": assets.model_name(reply.model),
        }
        await asyncio.to_thread(self._record, where, assets.INSPECTION, pictures.INSPECTION_IMAGE, properties,
                                media.timestamp_ms, png)

    async def listen(self, where: topics.AssetTopic, media: topics.MediaMessage) -> None:
        request = audio_pb2.ScoreAnomalyRequest(audio=audio_pb2.Audio(data=media.data))
        reply = await self._call(AUDIO, self.audio.ScoreAnomaly(request, timeout=self.timeout))
        if reply is None:
            return
        png = await asyncio.to_thread(pictures.spectrogram_image, _array(reply.log_mel))
        properties = {
            "score": finite(reply.score), "threshold": finite(reply.threshold), "anomalous": reply.anomalous,
            "timestampMs": media.timestamp_ms, "model": assets.model_name(reply.model),
        }
        await asyncio.to_thread(self._record, where, assets.ACOUSTIC, pictures.SPECTROGRAM_IMAGE, properties,
                                media.timestamp_ms, png)

    async def _call(self, service: str, call):
        """The reply, or None: a bad clip or image is the publisher's fault, an outage is reported."""
        try:
            reply = await call
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
                log.warning("media refused", extra={"service": service, "code": error.code().name,
                                                    "detail": error.details()})
                self.availability.succeeded(service)
            else:
                outage = self.availability.failed(service, error)
                log.warning("service unavailable", extra={"service": service, "code": outage.code})
            return None
        self.availability.succeeded(service)
        return reply

    def _record(self, where: topics.AssetTopic, feature: str, image_kind: str, properties: dict,
                timestamp_ms: int, png: bytes) -> None:
        self.twins.ensure(where.asset_id, assets.definition(where.asset_type), {"assetType": where.asset_type})
        self.images.put(where.asset_id, image_kind, timestamp_ms, png)
        self.twins.report(where.asset_id, feature, properties, kind=feature)


def _defect_label(defect_class: int) -> str:
    return vision_pb2.DefectClass.Name(defect_class).removeprefix("DEFECT_CLASS_").lower()


def _array(tensor: common_pb2.Tensor) -> np.ndarray | None:
    """The response's image-like tensor, or None where the service sent none."""
    return decode_tensor(tensor) if tensor.shape else None
