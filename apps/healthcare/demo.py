"""The synthetic demo: three made-up patients whose studies, vitals and notes go through the real services.

Each patient has three studies of one phantom anatomy (services/vision/phantoms.py) three months apart,
segmented by VisionService like any upload: one lesion grows (a finding is raised), one is stable, one
shrinks. Each has a bedside vitals stream with an episode in its recent history, fed to IoTService, then
continued live one simulated minute every few seconds. Notes are summarised by TextService; one patient
has a voice note, spoken by AudioService.Synthesize and transcribed back by AudioService.Transcribe.

Every demo patient carries the attribute ``synthetic`` (the seeds it was drawn from) and the pages say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from apps.healthcare.clinic import SYNTHETIC, Clinic
from apps.healthcare.monitoring import VITALS_ASSET
from apps.healthcare.privacy import every
from apps.twins import now_ms
from modalmesh.v1 import audio_pb2, common_pb2, iot_pb2
from services.iot.vitals import PATIENT_VITALS, Episode, simulate_vitals
from services.vision.phantoms import make_phantom
from services.vision.volumes import nifti_bytes

log = logging.getLogger(__name__)

DAY_MS = 24 * 3600 * 1000
STUDY_DAYS_AGO = (182, 91, 0)
HISTORY_MINUTES = 6 * 60
LIVE_BLOCK_MINUTES = 24 * 60


@dataclass(frozen=True)
class DemoPatient:
    sex: str
    birth_year: int
    anatomy_seed: int
    lesion_radii_mm: tuple[float, float, float]
    episode: Episode          # minutes from the start of the vitals history
    vitals_seed: int
    notes: tuple[str, ...]
    voice_note: str = ""


PATIENTS = (
    DemoPatient("female", 1961, 11, (10.0, 14.0, 18.0), Episode("tachycardia", 200, 70), 1,
                ("Follow-up of a hypodense liver lesion found on staging CT. Patient reports mild right upper "
                 "quadrant discomfort after meals. No weight loss. Appetite normal. Plan: repeat imaging in three "
                 "months and review at the multidisciplinary meeting.",
                 "Episode of palpitations overnight, resolved without treatment. Heart rate settled by morning. "
                 "Electrolytes within normal limits. Continue observation."),
                "patient feels well today and the pain is better"),
    DemoPatient("male", 1954, 23, (16.0, 16.0, 16.0), Episode("desaturation", 150, 60), 2,
                ("Stable appearance of the known liver lesion on surveillance imaging. Patient is asymptomatic. "
                 "Continue six-monthly surveillance.",
                 "Brief desaturation during sleep, recovered with repositioning. Oxygen not required. Consider "
                 "a sleep study referral.")),
    DemoPatient("female", 1978, 37, (19.0, 15.0, 11.0), Episode("fever", 120, 120), 3,
                ("Third cycle of systemic therapy completed. Tolerating treatment well apart from fatigue. "
                 "Lesion responding on imaging.",
                 "Low grade fever in the evening, cultures sent. Paracetamol given. Review results tomorrow.")),
)
VOICE_PHRASES = ("patient feels well today and the pain is better",
                 "patient reports more pain today",
                 "no change since yesterday")


async def seed(clinic: Clinic, iot, audio, timeout_s: float, start_ms: int | None = None) -> list[str]:
    """Admit the demo patients and run their studies, vitals history and notes through the services;
    returns their pseudonyms."""
    start_ms = start_ms or now_ms()
    admitted = []
    for demo in PATIENTS:
        twin = await asyncio.to_thread(clinic.admit, demo.sex, demo.birth_year,
                                       synthetic={"anatomySeed": demo.anatomy_seed, "vitalsSeed": demo.vitals_seed})
        admitted.append(twin.twin_id)
        await _vitals_history(iot, twin.attributes[VITALS_ASSET], demo, start_ms, timeout_s)
        for days_ago, radius in zip(STUDY_DAYS_AGO, demo.lesion_radii_mm):
            await _study(clinic, twin.twin_id, demo, radius, start_ms - days_ago * DAY_MS)
        for hours_ago, text in zip((30, 6), demo.notes):
            await clinic.notes.add_text(twin.twin_id, text, at_ms=start_ms - hours_ago * 3600_000)
        if demo.voice_note:
            spoken = await audio.Synthesize(audio_pb2.SynthesizeRequest(
                text=demo.voice_note, encoding=audio_pb2.AUDIO_ENCODING_WAV, sample_rate_hz=16000), timeout=timeout_s)
            await clinic.notes.add_voice(twin.twin_id, spoken.audio.data, phrases=list(VOICE_PHRASES))
    log.info("demo seeded", extra={"patients": len(admitted)})
    return admitted


async def wait_until_serving(channels: dict, interval_s: float = 2.0) -> None:
    """Return once every channel's service says SERVING (the local mesh starts them all at once)."""
    waiting = dict(channels)
    while waiting:
        for name, channel in list(waiting.items()):
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    del waiting[name]
        if waiting:
            await asyncio.sleep(interval_s)


async def _study(clinic: Clinic, patient_id: str, demo: DemoPatient, radius_mm: float, acquired_ms: int) -> None:
    phantom = await asyncio.to_thread(make_phantom, demo.anatomy_seed, lesion_radius_mm=radius_mm,
                                      noise_seed=demo.anatomy_seed * 1000 + int(radius_mm * 10) + acquired_ms % 997)
    data = await asyncio.to_thread(nifti_bytes, phantom.volume.voxels, phantom.volume.affine)
    job = clinic.jobs.create(patient_id, len(data))

    async def body():
        yield data

    upload = await clinic.ingestor.receive(job, body())
    await clinic.ingestor.ingest(job, upload, acquired_ms)


async def _vitals_history(iot, asset_id: str, demo: DemoPatient, start_ms: int, timeout_s: float) -> None:
    await iot.RegisterAsset(iot_pb2.RegisterAssetRequest(asset_id=asset_id, asset_type=PATIENT_VITALS.name),
                            timeout=timeout_s)
    first = (start_ms // 60_000 - HISTORY_MINUTES) * 60_000
    times, values = simulate_vitals(demo.vitals_seed, first, HISTORY_MINUTES, [demo.episode])
    await ingest_rows(iot, asset_id, times, values, timeout_s)


async def ingest_rows(iot, asset_id: str, times: np.ndarray, values: np.ndarray, timeout_s: float) -> None:
    request = iot_pb2.IngestRequest(
        sequence=1, asset_id=asset_id, sensors=list(PATIENT_VITALS.sensors),
        timestamps_ms=common_pb2.Tensor(dtype=common_pb2.DATA_TYPE_INT64, shape=[len(times)],
                                        data=np.asarray(times, "<i8").tobytes()),
        values=common_pb2.Tensor(dtype=common_pb2.DATA_TYPE_FP32, shape=list(values.shape),
                                 data=np.asarray(values, "<f4").tobytes()))

    async def requests():
        yield request

    async for _ in iot.Ingest(requests(), timeout=timeout_s):
        pass


class LiveVitals:
    """Keeps the demo patients' monitors going: one simulated minute per ``interval_s`` of wall time
    (accelerated), continuing after the last row IoTService stored, across restarts of the app."""

    def __init__(self, clinic: Clinic, iot, interval_s: float, timeout_s: float):
        self.clinic, self.iot, self.interval_s, self.timeout_s = clinic, iot, interval_s, timeout_s
        self._pending: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    async def run(self) -> None:
        await every(self.interval_s, self.tick, "demo vitals")

    async def tick(self) -> None:
        for twin in await asyncio.to_thread(self.clinic.patient_list):
            asset_id = twin.attributes.get(VITALS_ASSET)
            seed = (twin.attributes.get(SYNTHETIC) or {}).get("vitalsSeed")
            if not (asset_id and seed):
                continue
            times, values = await self._next_row(asset_id, seed)
            if times is not None:
                await ingest_rows(self.iot, asset_id, times, values, self.timeout_s)

    async def _next_row(self, asset_id: str, seed: int):
        times, values = self._pending.get(asset_id, (np.empty(0, np.int64), None))
        if not len(times):
            reply = await self.iot.RegisterAsset(iot_pb2.RegisterAssetRequest(
                asset_id=asset_id, asset_type=PATIENT_VITALS.name), timeout=self.timeout_s)
            if not reply.asset.stored_rows:
                return None, None   # its history is still being seeded
            times, values = simulate_vitals(seed, reply.asset.last_timestamp_ms + 60_000, LIVE_BLOCK_MINUTES)
        self._pending[asset_id] = (times[1:], values[1:])
        return times[:1], values[:1]

