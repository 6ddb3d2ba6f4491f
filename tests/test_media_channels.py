"""Calls cancelled under a media job: replacing a failed channel cancels no call, and a job whose call was
cancelled all the same fails with the reason instead of waiting in the queue forever."""

from __future__ import annotations

import asyncio

import grpc

from apps.clients import Availability
from apps.media.jobs import JobStore
from apps.media.options import JobOptions
from apps.media.pipeline import ServiceChannels
from apps.media.studio import Studio
from apps.twins import open_database
from modalmesh.launch import free_port
from modalmesh.v1 import audio_pb2, audio_pb2_grpc
from services.runtime.channels import secure_channel


def test_a_call_still_on_a_replaced_channel_ends_unavailable_not_cancelled(pki):
    """A job's scenes call the audio service at once. When one scene's UNAVAILABLE replaces the channel,
    another scene's call may just have started on the old one: it must end with its own UNAVAILABLE, since
    a cancelled call reads as a cancelled job."""
    cert = pki.certificate("media")
    address = f"localhost:{free_port()}"   # nothing listens there

    async def two_scenes_against_a_service_that_is_down() -> tuple[BaseException, BaseException]:
        channels = ServiceChannels({"audio": (address, audio_pb2_grpc.AudioServiceStub)},
                                   lambda target: secure_channel(target, cert.ca, cert.cert, cert.key, aio=True))
        stub = channels.stub("audio")
        request = audio_pb2.SynthesizeRequest(text="The harbour at dawn.")
        try:
            await stub.Synthesize(request, timeout=30)
        except grpc.aio.AioRpcError as error:
            first = error
        second = asyncio.ensure_future(stub.Synthesize(request, timeout=30))   # the other scene, same channel
        await asyncio.sleep(0)
        channels.after_unavailable("audio", grace_s=30)   # what the pipeline does after the first failure
        try:
            await second
        except BaseException as error:   # noqa: BLE001 - a CancelledError is what this test looks for
            outcome = error
        await channels.channels["audio"].close()
        return first, outcome

    first, second = asyncio.run(two_scenes_against_a_service_that_is_down())
    assert first.code() == grpc.StatusCode.UNAVAILABLE
    assert isinstance(second, grpc.aio.AioRpcError), f"{type(second).__name__}: {second}"
    assert second.code() == grpc.StatusCode.UNAVAILABLE


class _CallCancelledUnderTheJob:
    """A pipeline whose first step's call was cancelled beneath it (as a closed channel does)."""

    async def run(self, job, folder, changed) -> None:
        job.step("story").state = "running"
        await changed(True)
        raise asyncio.CancelledError()


def test_a_job_whose_call_was_cancelled_fails_with_the_reason(tmp_path):
    async def submit_and_settle():
        store = JobStore(open_database(f"sqlite:///{tmp_path / 'media.sqlite3'}"))
        store.create_schema()
        studio = Studio(store, _CallCancelledUnderTheJob(), tmp_path / "jobs", Availability(), 1, 8)
        running = asyncio.ensure_future(studio.run())
        try:
            job = await studio.submit(JobOptions(prompt="a robot in a harbour"))
            for _ in range(100):
                job = await studio.get(job.job_id)
                if job.finished:
                    break
                await asyncio.sleep(0.05)
            return job
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)

    job = asyncio.run(submit_and_settle())
    assert job.state == "failed", job.state
    assert job.error == {"step": "story", "code": "CANCELLED", "message": "a call to a service was cancelled; retry the job"}
