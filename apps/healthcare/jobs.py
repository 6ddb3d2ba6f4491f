"""Ingest jobs and their progress, which the pages follow over Server-Sent Events.

A job lives in memory: it is the progress of one upload, not a record. What lasts is the twin's
update at its end (and the files before it); a job lost to a restart is a study whose client never
saw it acknowledged, and the client sends it again.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field

UPLOADING, QUEUED, SAVING, DONE, FAILED = "uploading", "queued", "saving", "done", "failed"
FINISHED = (DONE, FAILED)
KEPT_JOBS = 256   # finished jobs remembered for pages that ask late


@dataclass
class Job:
    job_id: str
    patient_id: str
    state: str = UPLOADING
    # Bytes of the upload the app received, then bytes the vision service received of them.
    total_bytes: int = 0
    uploaded_bytes: int = 0
    sent_bytes: int = 0
    windows_done: int = 0
    windows_total: int = 0
    study_id: str | None = None
    error: dict | None = None    # {"status": HTTP status, "message": ..., "violations": [[field, description]]}
    version: int = 0
    started_s: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "started_s"}


class Jobs:
    def __init__(self):
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._changed = asyncio.Condition()
        self.closed = False

    def create(self, patient_id: str, total_bytes: int) -> Job:
        job = Job("J-" + secrets.token_hex(6), patient_id, total_bytes=total_bytes)
        self._jobs[job.job_id] = job
        self._forget_old()
        return job

    def get(self, job_id: str) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise LookupError("no such job") from None

    def active(self, patient_id: str) -> list[Job]:
        return [job for job in self._jobs.values() if job.patient_id == patient_id and job.state not in FINISHED]

    async def update(self, job: Job, **changes) -> None:
        for name, value in changes.items():
            setattr(job, name, value)
        async with self._changed:
            job.version += 1
            self._changed.notify_all()

    async def wait_newer(self, job: Job, seen: int, timeout: float) -> int:
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(
                    lambda: job.version > seen or self.closed), timeout)
            except TimeoutError:
                pass
            return job.version

    async def close(self) -> None:
        async with self._changed:
            self.closed = True
            self._changed.notify_all()

    def _forget_old(self) -> None:
        finished = [job_id for job_id, job in self._jobs.items() if job.state in FINISHED]
        for job_id in finished[:max(0, len(finished) - KEPT_JOBS)]:
            del self._jobs[job_id]
