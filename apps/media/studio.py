"""The studio: a bounded queue of jobs, a few run side by side, and what the pages and the API ask of them.

Jobs run side by side (``concurrent_jobs``), so their story, narration and picture requests reach the
services together and batch there. A cancelled job's task is cancelled: its gRPC calls are cancelled (the
services stop that work) and the video thread stops; its slot goes to the next job at once.

Nothing is silently lost to a restart. A drained process (SIGTERM) puts its running jobs back in the queue;
a process that died (kill -9, a crash) leaves them "running", and the next one counts that as an interruption
and queues them again, each step redone from its kept outputs; a job interrupted more than
``MAX_INTERRUPTIONS`` times is failed with that reason, since it may be what brings the process down.

A finished job can be deleted: its rows go first, in one transaction, then its folder. A process that stops
between the two leaves a folder no job lists; the next start removes such folders (only those named like a
job id), so a deleted job's files never outlive a restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import secrets
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from apps.clients import Availability
from apps.media.jobs import (CANCELLED, DONE, FAILED, FINISHED, PENDING, QUEUED, RUNNING, Job, JobStore,
                             new_job_id, now_ms)
from apps.media.options import MAX_SEED, JobOptions
from apps.media.pipeline import Pipeline, StepFailed

log = logging.getLogger(__name__)

MAX_INTERRUPTIONS = 3
JOB_ID = re.compile(r"M-[0-9a-f]{12}")
JOB_FILE = re.compile(r"story\.txt|video\.mp4|subtitles\.vtt|music\.wav|scene-\d{2}\.(?:png|wav)")
CANCEL_WAIT_S = 15   # a cancelled job's calls end at once; its video thread stops ffmpeg within a second or so
SETTLE_WAIT_S = 5    # a job that has just finished is written before it leaves the jobs in progress
REMOVE_TRIES = 3


class QueueFull(Exception):
    pass


class JobStateError(Exception):
    """What was asked does not fit the job's state (cancel a finished job, retry a running one)."""


class Studio:
    def __init__(self, store: JobStore, pipeline: Pipeline, jobs_dir: Path, availability: Availability,
                 concurrent_jobs: int = 4, max_queued_jobs: int = 16):
        self.store, self.pipeline, self.jobs_dir = store, pipeline, jobs_dir
        self.availability = availability
        self.concurrent_jobs, self.max_queued_jobs = concurrent_jobs, max_queued_jobs
        self._live: dict[str, Job] = {}            # queued and running jobs
        self._queue: list[str] = []                # queued job ids, first to run first
        self._running: dict[str, asyncio.Task] = {}
        self._cancelling: set[str] = set()
        self._changed = asyncio.Condition()        # any job changed, or the queue did
        self._admission = asyncio.Lock()           # one submission or retry at a time: the bound holds
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="job-writer")   # writes in the order made
        self.closed = False
        # Set once the jobs an earlier process left are resumed or failed: until then the store still says
        # "running" of jobs nothing runs, so the pages wait for it.
        self.recovered = asyncio.Event()

    # -- what the pages and the API ask ----------------------------------------------------------------

    async def submit(self, options: JobOptions) -> Job:
        if options.seed is None:   # chosen now and recorded: a retry makes the same story and pictures
            options = dataclasses.replace(options, seed=secrets.randbelow(MAX_SEED + 1))
        async with self._admission:
            self._check_room()
            job = Job(new_job_id(), options)
            await self._publish(job)
            self._enqueue(job)
        log.info("job queued", extra={"job_id": job.job_id, "state": job.state})
        return job

    async def get(self, job_id: str) -> Job:
        job = self._live.get(job_id) or await self._load(job_id)
        if job is None:
            raise LookupError(f"no job {job_id[:64]!r}")
        return job

    async def list(self, limit: int = 50) -> list[Job]:
        """Newest first; jobs in progress as they are now."""
        stored = await asyncio.to_thread(self.store.newest, limit)
        return [self._live.get(job.job_id, job) for job in stored]

    async def cancel(self, job_id: str) -> Job:
        job = await self.get(job_id)
        if job.finished:
            raise JobStateError(f"job {job_id} is {job.state}; only queued or running jobs can be cancelled")
        if job_id in self._running:
            task = self._running[job_id]
            if job_id not in self._cancelling:   # once: a second cancel would interrupt the first's bookkeeping
                self._cancelling.add(job_id)
                task.cancel()
            await asyncio.wait([task], timeout=CANCEL_WAIT_S)
            return job
        if job_id in self._queue:
            self._queue.remove(job_id)
            self._live.pop(job_id, None)
            await self._finish(job, CANCELLED)
            await self._queue_moved()
            return job
        raise JobStateError(f"job {job_id} is {job.state}; only queued or running jobs can be cancelled")

    async def retry(self, job_id: str) -> Job:
        """A failed or cancelled job queued again; its finished steps and files are kept, so only what is
        missing is made."""
        async with self._admission:
            job = await self.get(job_id)
            if job.state not in (FAILED, CANCELLED) or job_id in self._live:
                raise JobStateError(f"job {job_id} is {job.state}; only failed or cancelled jobs can be retried")
            self._check_room()
            job.state, job.error, job.finished_ms, job.interruptions = QUEUED, None, None, 0
            _reset_unfinished_steps(job)
            await self._publish(job)
            self._enqueue(job)
        log.info("job queued again", extra={"job_id": job.job_id, "state": job.state})
        return job

    async def delete(self, job_id: str) -> None:
        """A done, failed or cancelled job and its files, for good; JobStateError while it is queued or
        running. Its rows go first (one transaction), then its folder: a process that stops in between leaves
        only a folder nobody lists, which the next start removes. Watchers of a finished job have already had
        its last version, so their streams have ended."""
        await self._until_settled(job_id)
        async with self._admission:   # not retried while it is deleted
            job = await self.get(job_id)
            if not job.finished or job_id in self._live:
                state = "still finishing" if job.finished else job.state
                raise JobStateError(f"job {job_id} is {state}; only a done, failed or cancelled job can be "
                                    "deleted (cancel it first)")
            # Through the writer: after any write of the job still on its way, which would bring it back.
            deleted = await asyncio.get_running_loop().run_in_executor(self._writer, self.store.delete, job_id)
        if not deleted:   # deleted meanwhile by another request
            raise LookupError(f"no job {job_id}")
        await asyncio.to_thread(remove_folder, self.jobs_dir / job_id)
        log.info("job deleted", extra={"job_id": job_id, "state": job.state})
        async with self._changed:
            self._changed.notify_all()

    async def watch(self, job_id: str, seen_version: int, timeout: float) -> Job:
        """The job once its version is past ``seen_version``, or as it is at ``timeout`` or when the studio
        closes."""
        job = await self.get(job_id)
        if job.finished and job_id not in self._live:
            return job
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: job.version > seen_version or self.closed),
                                       timeout)
            except TimeoutError:
                pass
        return job

    def file(self, job_id: str, name: str) -> Path:
        """A file the job kept: story.txt, scene-NN.wav, scene-NN.png, music.wav, video.mp4, subtitles.vtt."""
        if not JOB_ID.fullmatch(job_id) or not JOB_FILE.fullmatch(name):
            raise LookupError(f"no file {name[:64]!r} of job {job_id[:64]!r}")
        path = self.jobs_dir / job_id / name
        if not path.is_file():
            raise LookupError(f"job {job_id} has no {name} (yet)")
        return path

    async def close(self) -> None:
        """Ends every watcher (the event streams) so the web server can stop."""
        async with self._changed:
            self.closed = True
            self._changed.notify_all()

    # -- running ---------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Remove what deletes left unfinished, resume what an earlier process left, then run jobs until
        cancelled (the process drains)."""
        await asyncio.to_thread(self._remove_unlisted_folders)
        await self._resume()
        self.recovered.set()
        workers = [asyncio.create_task(self._worker()) for _ in range(self.concurrent_jobs)]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _worker(self) -> None:
        while True:
            job = await self._next_job()
            # Registered before anything else can run: a cancel finds the job either queued or running.
            task = asyncio.create_task(self._run_job(job))
            self._running[job.job_id] = task
            try:
                await self._queue_moved()
                await asyncio.wait([task])   # a cancelled job ends its task, never this worker
                if job.job_id in self._cancelling and not job.finished:   # cancelled before its task began
                    await self._finish(job, CANCELLED)
            except asyncio.CancelledError:   # draining: the job goes back to the queue for the next process
                task.cancel()
                await asyncio.wait([task])
                raise
            finally:
                self._running.pop(job.job_id, None)

    async def _next_job(self) -> Job:
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._queue))
            return self._live[self._queue.pop(0)]

    async def _run_job(self, job: Job) -> None:
        try:
            job.state, job.started_ms = RUNNING, job.started_ms or now_ms()
            await self._publish(job)
            log.info("job running", extra={"job_id": job.job_id, "state": job.state})
            await self.pipeline.run(job, self.jobs_dir / job.job_id, lambda persist: self._publish(job, persist))
        except asyncio.CancelledError:
            if job.job_id in self._cancelling:
                await self._finish(job, CANCELLED)
                return
            if not asyncio.current_task().cancelling():
                # Nobody cancelled this job: a call was cancelled under it (a closed channel). It failed; left
                # queued it would wait for a next process that the running one never hands it to.
                log.error("a call of the job was cancelled", extra={"job_id": job.job_id})
                step = next((s.name for s in job.steps if s.state in (RUNNING, CANCELLED)), None)
                await self._finish(job, FAILED, {"step": step, "code": "CANCELLED",
                                                 "message": "a call to a service was cancelled; retry the job"})
                return
            await self._requeue_for_next_process(job)
            raise
        except StepFailed as failure:
            await self._finish(job, FAILED, failure.as_dict())
        except Exception as error:   # a defect: the job says so instead of vanishing
            log.exception("job failed unexpectedly", extra={"job_id": job.job_id})
            step = next((s.name for s in job.steps if s.state in (RUNNING, FAILED)), None)
            await self._finish(job, FAILED, {"step": step, "code": "INTERNAL", "message": str(error)})
        else:
            await self._finish(job, DONE)

    async def _finish(self, job: Job, state: str, error: dict | None = None) -> None:
        job.state, job.error, job.finished_ms = state, error, now_ms()
        for step in job.steps:
            if step.state == RUNNING:
                step.state = CANCELLED if state == CANCELLED else FAILED
        self._cancelling.discard(job.job_id)
        await self._publish(job)
        self._live.pop(job.job_id, None)
        async with self._changed:   # it has settled: a delete waiting for that may go on
            self._changed.notify_all()
        log.info("job finished", extra={"job_id": job.job_id, "state": state,
                                        "step": error and error["step"], "code": error and error["code"]})

    async def _requeue_for_next_process(self, job: Job) -> None:
        job.state = QUEUED
        _reset_unfinished_steps(job)
        await self._publish(job)
        log.info("job left queued for the next start", extra={"job_id": job.job_id, "state": job.state})

    async def _resume(self) -> None:
        for job in await asyncio.to_thread(self.store.unfinished):
            if job.state == RUNNING:   # the process it ran in died
                job.interruptions += 1
            if job.interruptions > MAX_INTERRUPTIONS:
                running = next((s.name for s in job.steps if s.state == RUNNING), None)
                await self._finish(job, FAILED, {
                    "step": running, "code": "INTERRUPTED",
                    "message": f"the studio stopped {job.interruptions} times while this job ran, so it is not "
                               "resumed again; retry it to go on from its kept outputs"})
                continue
            job.state = QUEUED
            _reset_unfinished_steps(job)
            await self._publish(job)
            self._enqueue(job)
            log.info("job resumed", extra={"job_id": job.job_id, "state": job.state,
                                           "interruptions": job.interruptions})

    def _remove_unlisted_folders(self) -> None:
        """The folders, named like a job id, of jobs the store does not have: a delete that stopped between
        its rows and its folder. Run before any job does, so every folder that exists was listed first (a job
        is stored when it is submitted, its folder made when it runs)."""
        if not self.jobs_dir.is_dir():
            return
        folders = {path.name: path for path in self.jobs_dir.iterdir()
                   if path.is_dir() and JOB_ID.fullmatch(path.name)}
        for job_id in sorted(folders.keys() - self.store.known(list(folders))):
            remove_folder(folders[job_id])
            log.info("folder of a deleted job removed", extra={"job_id": job_id})

    async def _until_settled(self, job_id: str) -> None:
        """Once a job that has just finished has left the jobs in progress (its last write done)."""
        job = self._live.get(job_id)
        if job is None or not job.finished:
            return
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: job_id not in self._live), SETTLE_WAIT_S)
            except TimeoutError:
                pass

    # -- bookkeeping -----------------------------------------------------------------------------------

    def _check_room(self) -> None:
        if len(self._queue) >= self.max_queued_jobs:
            raise QueueFull(f"{len(self._queue)} jobs are waiting, the most the studio queues; "
                            "try again when one has started")

    def _enqueue(self, job: Job) -> None:
        self._live[job.job_id] = job
        self._queue.append(job.job_id)
        self._number_queue()

    async def _queue_moved(self) -> None:
        for job_id in self._number_queue():
            self._live[job_id].version += 1
        async with self._changed:
            self._changed.notify_all()

    def _number_queue(self) -> list[str]:
        """Queue positions from 1; the ids whose position changed."""
        moved = []
        for job in self._live.values():
            position = self._queue.index(job.job_id) + 1 if job.job_id in self._queue else None
            if job.queue_position != position:
                job.queue_position = position
                moved.append(job.job_id)
        return moved

    async def _publish(self, job: Job, persist: bool = True) -> None:
        """A new version of the job: written first when ``persist`` (a state, a step or a scene finished),
        then every watcher is woken."""
        job.version += 1
        if persist:
            await asyncio.get_running_loop().run_in_executor(self._writer, self.store.save, job.snapshot())
        async with self._changed:
            self._changed.notify_all()

    async def _load(self, job_id: str) -> Job | None:
        if not JOB_ID.fullmatch(job_id):
            return None
        return await asyncio.to_thread(self.store.load, job_id)


def remove_folder(folder: Path) -> None:
    """``folder`` and all in it. A cancelled job's thread may still be ending a write there (a thread outlives
    the task that awaited it), adding a file while the folder is removed, so it is tried again; what still
    stays is removed at the next start."""
    for attempt in range(REMOVE_TRIES):
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            return
        time.sleep(0.2 * (attempt + 1))
    log.warning("job folder not removed; the next start removes it", extra={"job_id": folder.name})


def _reset_unfinished_steps(job: Job) -> None:
    """Steps that did not finish start again (from the outputs they kept); finished ones stay done."""
    for step in job.steps:
        if step.state != DONE:
            step.state = PENDING


__all__ = ["FINISHED", "JobStateError", "QueueFull", "Studio"]
