"""A job cancelled in the studio stops the work inside the services, not only in the app.

The default picture library answers in a blink, so here the vision service serves the tiny diffusers pipeline of
tests/diffusion.py with 100 denoising steps at 256 x 192 (0.1-0.4 s a step on two CPU cores: tens of seconds a
picture). The job is cancelled while its picture is being denoised: the job is cancelled within seconds, the vision
service interrupts the denoising within seconds at a step well below the total (the app cancelled its gRPC call),
stays SERVING and answers the next call, and the job's folder holds no partial picture. Retried once a faster
vision service is back where the app looks, the job makes only its picture and the video, and is done."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from modalmesh.v1 import vision_pb2, vision_pb2_grpc
from tests.diffusion import build_tiny_stable_diffusion
from tests.media import (FINISHED, media_stack, start_media_app,  # noqa: F401 - fixture
                         start_service_on_port)
from tests.support import ServiceProcess, metric, start_service, wait_for

STEPS = 100   # the most image_generation_steps allows
SIZES = {"picture_width": 256, "picture_height": 192,   # ~0.1-0.4 s a denoising step here
         "video_width": 320, "video_height": 180}
INTERRUPTED = '"image generation interrupted"'


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    return build_tiny_stable_diffusion(tmp_path_factory.mktemp("models") / "tiny-stable-diffusion")


def start_vision(pki, tmp: Path, pipeline: Path, steps: int, port: int | None = None) -> ServiceProcess:
    """A vision service serving ``pipeline`` with ``steps`` denoising steps a picture (the studio leaves the
    steps to the model); on ``port`` when given, where the app already looks."""
    # On the CPU wherever the tests run: a GPU would finish the 100 steps before the cancel could reach them.
    settings = dict(segmentation_model="", image_generation_model=str(pipeline), image_generation_steps=steps,
                    device="cpu")
    tmp.mkdir()
    if port is None:
        return start_service("services.vision", pki, tmp, "vision", **settings)
    return start_service_on_port(port, "services.vision", pki, tmp, "vision", **settings)


def interruptions(vision: ServiceProcess) -> list[dict]:
    return [json.loads(line) for line in vision.log().splitlines() if INTERRUPTED in line]


def denoising_started(vision: ServiceProcess) -> bool:
    """The batcher has handed a request to the pipeline (it records a request's wait as it starts it; the
    warm-up at start does not go through the batcher)."""
    return metric(vision.metrics(), "modalmesh_batcher_queue_seconds_count", model="tiny-stable-diffusion") > 0


def step(job: dict, name: str) -> dict:
    return next(s for s in job["steps"] if s["name"] == name)


def partial_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_a_cancelled_job_stops_the_denoising_in_the_vision_service(pki, media_stack, tmp_path, tiny_pipeline):
    vision = start_vision(pki, tmp_path / "vision-slow", tiny_pipeline, STEPS)
    media = fast = None
    try:
        media = start_media_app(pki, tmp_path, media_stack.services | {"vision": vision}, **SIZES)
        job = media.submit(prompt="a lighthouse keeper who finds a message in a bottle", scenes=1, seed=5,
                           music=False)
        job_id, folder = job["job_id"], media.file(job["job_id"], "")
        running = media.wait_job(job_id, timeout=60, until=lambda job: step(job, "pictures")["state"] != "pending"
                                 or job["state"] in FINISHED)
        assert step(running, "pictures")["state"] == "running", (running["error"], running["steps"])
        wait_for(lambda: denoising_started(vision), timeout=30, interval=0.1)
        time.sleep(0.5)   # a few denoising steps in

        cancelled_at = time.monotonic()
        status, cancelled = media.api("POST", f"/jobs/{job_id}/cancel")
        assert status == 200 and cancelled["state"] == "cancelled", cancelled
        assert time.monotonic() - cancelled_at < 5
        assert step(cancelled, "pictures")["state"] == "cancelled" and step(cancelled, "pictures")["done"] == 0

        # The work stopped inside the service: the denoising was interrupted, not left to run to its end.
        try:
            wait_for(lambda: interruptions(vision), timeout=10, interval=0.05)
        except TimeoutError:
            pytest.fail(f"the vision service went on denoising after the job was cancelled:\n{vision.log_tail()}")
        stopped_after_s = time.monotonic() - cancelled_at
        [stopped] = interruptions(vision)
        assert stopped["steps"] == STEPS and stopped["step"] < STEPS // 2 and stopped["rows"] == 1, stopped
        assert stopped_after_s < 5, f"interrupted {stopped_after_s:.1f} s after the cancel at step {stopped['step']}"

        # The service is still well and answers the next call; the job left no picture, whole or partial.
        assert vision.health() == "SERVING"
        with vision.channel() as channel:
            replies = list(vision_pb2_grpc.VisionServiceStub(channel).GenerateImage(
                vision_pb2.GenerateImageRequest(prompt="the next call", width=64, height=64, steps=2), timeout=30))
        assert replies[-1].image.steps == 2 and replies[-1].image.width == 64
        assert not (folder / "scene-01.png").exists() and not partial_files(folder)
        assert media.job(job_id)["state"] == "cancelled"

        # Retried with a faster vision service where the app looks: the picture and the video are made, the
        # story and the narration kept.
        kept = {name: (folder / name).stat().st_mtime_ns for name in ("story.txt", "scene-01.wav")}
        assert vision.stop() == 0, vision.log_tail()
        fast = start_vision(pki, tmp_path / "vision-fast", tiny_pipeline, 2, port=vision.port)
        status, retried = media.api("POST", f"/jobs/{job_id}/retry")
        assert status == 202 and retried["state"] in ("queued", "running"), retried
        done = media.wait_job(job_id, timeout=60)
        assert done["state"] == "done", (done["error"], done["steps"])
        picture = cv2.imread(str(folder / "scene-01.png"))
        assert picture is not None and picture.shape == (192, 256, 3) and np.ptp(picture) > 0
        assert done["models"]["pictures"]["name"] == "tiny-stable-diffusion" and done["video"]["bytes"] > 0
        assert {name: (folder / name).stat().st_mtime_ns for name in kept} == kept
        assert not partial_files(folder) and not interruptions(fast)
    finally:
        for process in (media.app if media else None, fast, vision):
            if process is not None:
                process.stop(10)
