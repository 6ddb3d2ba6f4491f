"""Study ingest: an upload spooled to disk, segmented by the vision service, kept as files, and recorded
on the patient's twin in one transaction (the study and any finding it raises).

The order makes a crash harmless: files first (each written whole or not at all), the twin last.
A kill -9 before the twin's commit leaves files no twin lists (cleared at the next start) and a
client that saw no acknowledgement; after it, the study is on the twin and its files are on disk.
A bad study is refused before anything is written.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from apps.healthcare import patients
from apps.healthcare.jobs import DONE, FAILED, QUEUED, SAVING, Job, Jobs
from apps.healthcare.privacy import error_fields
from apps.healthcare.segmentation import (DICOM_ZIP, STAGES, SegmentationUnavailable, StudyRejected, segment,
                                          study_format)
from apps.healthcare.studies import IMAGE, LABELS, StudyFiles
from apps.twins import RevisionConflict, TwinStore
from modalmesh.v1 import vision_pb2
from services.runtime.errors import ServiceError
from services.vision import volumes

log = logging.getLogger(__name__)

CONFLICT_RETRIES = 20


class IngestError(Exception):
    """Why a study was not ingested, as the page and the API say it."""

    def __init__(self, status: int, message: str, violations: list[tuple[str, str]] = ()):
        super().__init__(message)
        self.status, self.message, self.violations = status, message, list(violations)

    def as_dict(self) -> dict:
        return {"status": self.status, "message": self.message, "violations": [list(v) for v in self.violations]}


@dataclass
class Ingestor:
    twins: TwinStore
    files: StudyFiles
    vision: object             # VisionServiceStub
    jobs: Jobs
    rule: patients.GrowthRule
    spool: Path                # uploads waiting to be segmented
    max_study_bytes: int
    segment_timeout_s: float
    concurrent: asyncio.Semaphore

    async def receive(self, job: Job, body: AsyncIterator[bytes]) -> Path:
        """The upload in a spool file; 413 as soon as it passes the limit."""
        self.spool.mkdir(parents=True, exist_ok=True)
        path = self.spool / f"{job.job_id}.upload"
        received = 0
        try:
            with open(path, "wb") as out:
                async for piece in body:
                    received += len(piece)
                    if received > self.max_study_bytes:
                        raise IngestError(413, f"the study is over the limit of {self.max_study_bytes} bytes")
                    await asyncio.to_thread(out.write, piece)
                    await self.jobs.update(job, uploaded_bytes=received)
            if received == 0:
                raise IngestError(400, "the upload is empty: send the study's file as the request body")
        except BaseException as error:
            path.unlink(missing_ok=True)
            await self._fail(job, error)
            raise
        await self.jobs.update(job, total_bytes=received, state=QUEUED)
        return path

    async def ingest(self, job: Job, upload: Path, acquired_ms: int) -> dict:
        """Segment, keep and record the study; the study's twin entry, or IngestError."""
        try:
            async with self.concurrent:
                kind = _format(upload)
                study_id = patients.new_id("S")
                segmentation = await self._segment(job, upload, kind, study_id)
                await self.jobs.update(job, state=SAVING, study_id=study_id)
                record = patients.study_record(acquired_ms, segmentation.result, kind)
                await asyncio.to_thread(self._keep_files, job.patient_id, study_id, upload, kind, segmentation.labels)
                await asyncio.to_thread(self.record, job.patient_id, study_id, record)
        except BaseException as error:
            await self._fail(job, error)
            raise
        finally:
            upload.unlink(missing_ok=True)
        await self.jobs.update(job, state=DONE)
        log.info("study ingested", extra={"structures": len(record["structures"])})
        return {"studyId": study_id, **record}

    async def _segment(self, job: Job, upload: Path, kind: str, study_id: str):
        async def progress(update: vision_pb2.SegmentationProgress) -> None:
            await self.jobs.update(job, state=STAGES.get(update.stage, job.state),
                                   sent_bytes=max(job.sent_bytes, update.bytes_received),
                                   windows_done=max(job.windows_done, update.windows_done),
                                   windows_total=update.windows_total or job.windows_total)
        try:
            return await segment(self.vision, upload, kind, study_id, self.segment_timeout_s, progress)
        except StudyRejected as refused:
            status = 413 if refused.code == "RESOURCE_EXHAUSTED" and refused.violations else 400
            raise IngestError(status, f"the vision service refused the study: {refused.message}",
                              refused.violations) from None
        except SegmentationUnavailable as error:
            raise IngestError(503, f"segmentation unavailable, send the study again later ({error})") from None

    def _keep_files(self, patient_id: str, study_id: str, upload: Path, kind: str, labels: bytes) -> None:
        if kind == DICOM_ZIP:   # kept as NIfTI, the form the viewer and the download use
            try:
                volume = volumes.read_dicom_zip(upload.read_bytes(), volumes.VolumeLimits(self.max_study_bytes))
            except ServiceError as error:   # the service read it, so this is unexpected; still a clear refusal
                raise IngestError(400, f"the DICOM series cannot be read: {error.message}") from None
            self.files.write_bytes(patient_id, study_id, IMAGE, volumes.nifti_bytes(volume.voxels, volume.affine))
        else:
            self.files.write_gzipped_copy(patient_id, study_id, IMAGE, upload)
        self.files.write_bytes(patient_id, study_id, LABELS, labels)

    def record(self, patient_id: str, study_id: str, study: dict) -> None:
        """The twin's one update for the study: retried on a concurrent change, so two studies of one
        patient ingested at once both land and each compares with the right predecessor."""
        for _ in range(CONFLICT_RETRIES):
            twin = self.twins.get(patient_id)
            patch = patients.imaging_patch(twin, study_id, study, self.rule)
            try:
                self.twins.modify(patient_id, patch, kind="study", expected_revision=twin.revision)
                return
            except RevisionConflict:
                continue
        raise IngestError(503, "the patient's record is changing too fast; send the study again")

    async def _fail(self, job: Job, error: BaseException) -> None:
        if isinstance(error, IngestError):
            detail = error.as_dict()
        elif isinstance(error, asyncio.CancelledError):
            detail = {"status": 503, "message": "the app is shutting down; send the study again", "violations": []}
        else:
            log.error("ingest failed", extra=error_fields(error))
            detail = {"status": 500, "message": "internal error; the app's log has the details", "violations": []}
        await self.jobs.update(job, state=FAILED, error=detail)


def _format(upload: Path) -> str:
    try:
        return study_format(upload)
    except ValueError as error:
        raise IngestError(400, str(error)) from None
