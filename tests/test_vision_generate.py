"""VisionService.GenerateImage over a real socket with mutual TLS.

The picture library (the default): clear prompts find their photograph, sizes, styles, seeds, progress,
batching of concurrent calls, a user's folder of captioned pictures, and bad input refused with the field
named. A diffusers pipeline: a tiny Stable Diffusion pipeline (tests/diffusion.py) saved locally, served by path
and by Hugging Face id from a local cache (HF_HUB_OFFLINE=1): progress per denoising step, sizes,
determinism by seed, and a cancelled call that stops the denoising.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from inference import grpc_service_pb2, grpc_service_pb2_grpc
from modalmesh.launch import launch
from modalmesh.v1 import vision_pb2, vision_pb2_grpc
from services.runtime.errors import FailedPrecondition, bad_request_of
from services.vision.images import ImageLimits
from services.vision.picture_styles import STYLES
from services.vision.servicer import VisionServicer
from tests.diffusion import TINY_ID, build_tiny_stable_diffusion
from tests.support import install_in_hub_cache, metric, serving_together, start_service, wait_for

MAX_PIXELS = 2048 * 1024      # below 2048 x 2048, so "too many pixels" can be asked for


# -- services ---------------------------------------------------------------------------------------

def draw_picture_folder(folder: Path) -> Path:
    """A user's folder: captions from captions.json, a sidecar .txt and a file name; two files to skip."""
    folder.mkdir()
    sunset = np.zeros((240, 320, 3), np.uint8)
    sunset[:150] = (40, 120, 250)                                       # BGR: an orange sky
    cv2.circle(sunset, (160, 150), 45, (60, 230, 255), -1)              # a yellow sun on the horizon
    cv2.ellipse(sunset, (100, 240), (180, 90), 0, 180, 360, (40, 150, 40), -1)   # green hills
    cv2.ellipse(sunset, (260, 240), (160, 70), 0, 180, 360, (30, 120, 30), -1)
    cv2.imwrite(str(folder / "sunset.png"), sunset)
    boat = np.full((200, 300, 3), (200, 120, 40), np.uint8)             # a blue sea
    cv2.fillPoly(boat, [np.array([[150, 40], [150, 140], [210, 140]])], (255, 255, 255))   # a sail
    cv2.imwrite(str(folder / "boat.jpg"), boat)
    (folder / "boat.txt").write_text("A small sailing boat on a calm blue sea\n")
    cv2.imwrite(str(folder / "lighthouse_on_a-rocky-cliff.png"), np.full((128, 96, 3), 90, np.uint8))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 20)
    cv2.imwrite(str(folder / "too-wide.png"), np.zeros((16, 5000, 3), np.uint8))
    (folder / "captions.json").write_text(json.dumps({
        "sunset.png": {"caption": "A yellow sun setting over green hills", "credit": "drawn by the tests; CC0"}}))
    return folder


@pytest.fixture(scope="module")
def library_service(pki, tmp_path_factory):
    folder = draw_picture_folder(tmp_path_factory.mktemp("user") / "my-pictures")
    service = start_service("services.vision", pki, tmp_path_factory.mktemp("vision-library"), "vision",
                            segmentation_model="", picture_folders=str(folder), max_image_pixels=MAX_PIXELS)
    yield service
    assert service.stop() == 0, service.log_tail()


@pytest.fixture(scope="module")
def library(library_service):
    with library_service.channel() as channel:
        yield vision_pb2_grpc.VisionServiceStub(channel)


def generate(stub, timeout: float = 60, **fields) -> list[vision_pb2.GenerateImageResponse]:
    return list(stub.GenerateImage(vision_pb2.GenerateImageRequest(**fields), timeout=timeout))


def image_of(replies) -> vision_pb2.GeneratedImage:
    assert replies[-1].WhichOneof("event") == "image"
    return replies[-1].image


def pixels_of(image: vision_pb2.GeneratedImage) -> np.ndarray:
    decoded = cv2.imdecode(np.frombuffer(image.data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and decoded.shape[:2] == (image.height, image.width)
    return decoded


def colourfulness(pixels: np.ndarray) -> float:
    """Mean spread between a pixel's strongest and weakest channel: 0 for grey."""
    return float((pixels.max(axis=2).astype(int) - pixels.min(axis=2)).mean())


# -- the picture library ---------------------------------------------------------------------------

@pytest.mark.parametrize("prompt, picture_id", [
    ("a rocket standing on its launch pad", "skimage:rocket"),
    ("a cup of coffee", "skimage:coffee"),
    ("a cat", "skimage:chelsea"),
    ("the horse galloped across the field", "skimage:horse"),
])
def test_clear_prompts_find_their_picture_named_with_its_model(library, prompt, picture_id):
    image = image_of(generate(library, prompt=prompt, seed=1))
    assert image.source.picture_id == picture_id
    assert 0.4 < image.source.similarity <= 1.0
    assert image.source.caption and "scikit-image" in image.source.credit
    assert (image.width, image.height) == (512, 512) and image.encoding == vision_pb2.IMAGE_ENCODING_PNG
    assert image.data.startswith(b"\x89PNG") and pixels_of(image).std() > 10
    assert image.model.name == "picture-library" and len(image.model.version) == 12
    assert "retrieval, not generation" in image.model.provenance
    assert "all-MiniLM-L6-v2" in image.model.provenance and "scikit-image" in image.model.provenance


@pytest.mark.parametrize("width, height, encoding", [
    (640, 360, vision_pb2.IMAGE_ENCODING_PNG), (64, 2048, vision_pb2.IMAGE_ENCODING_JPEG),
    (1280, 720, vision_pb2.IMAGE_ENCODING_JPEG), (0, 200, vision_pb2.IMAGE_ENCODING_PNG)])
def test_the_size_asked_is_the_size_returned(library, width, height, encoding):
    image = image_of(generate(library, prompt="a rocket at night", width=width, height=height, encoding=encoding))
    assert (image.width, image.height) == (width or 512, height or 512)
    assert image.data.startswith(b"\xff\xd8" if encoding == vision_pb2.IMAGE_ENCODING_JPEG else b"\x89PNG")
    assert pixels_of(image).shape == (height or 512, width or 512, 3)


def test_every_style_looks_different_and_sketch_and_noir_are_grey(library):
    looks = {}
    for style in STYLES:
        image = image_of(generate(library, prompt="a cup of coffee", seed=5, style=style, width=320, height=240))
        assert image.style == style and image.source.picture_id == "skimage:coffee"
        looks[style] = pixels_of(image)
    for i, first in enumerate(STYLES):
        for second in STYLES[i + 1:]:
            assert np.abs(looks[first].astype(int) - looks[second]).mean() > 2, (first, second)
    colour = {style: colourfulness(pixels) for style, pixels in looks.items()}
    assert colour["noir"] < 1 and colour["sketch"] < 0.35 * colour[""], colour
    assert colour["storybook"] > 0.8 * colour[""], colour


def test_the_same_seed_gives_the_same_bytes_and_seeds_vary_the_framing(library):
    ask = dict(prompt="a horse on a farm", style="watercolor", width=256, height=192)
    first, again = image_of(generate(library, seed=7, **ask)), image_of(generate(library, seed=7, **ask))
    assert first.data == again.data and first.seed == 7
    others = {image_of(generate(library, seed=seed, **ask)).data for seed in (8, 9, 10)}
    assert len(others - {first.data}) >= 2
    unseeded = image_of(generate(library, **ask))   # a seed is chosen and reported
    assert image_of(generate(library, seed=unseeded.seed, **ask)).data == unseeded.data


def test_progress_comes_first_stage_by_stage_then_one_image(library):
    replies = generate(library, prompt="the old clock struck midnight", style="noir")
    progress = [(r.progress.stage, r.progress.step, r.progress.total_steps) for r in replies[:-1]]
    assert all(r.WhichOneof("event") == "progress" for r in replies[:-1])
    assert progress == [("queued", 0, 3), ("matching", 0, 3), ("framing", 1, 3), ("styling", 2, 3),
                        ("encoding", 3, 3)]
    image = image_of(replies)
    assert image.steps == 3 and image.source.picture_id == "skimage:clock"


def test_a_user_folder_is_searched_with_its_captions(library, library_service):
    sunset = image_of(generate(library, prompt="the sun going down behind the hills", seed=1))
    assert sunset.source.picture_id == "my-pictures:sunset.png"
    assert sunset.source.caption == "A yellow sun setting over green hills"
    assert sunset.source.credit == "drawn by the tests; CC0"
    boat = image_of(generate(library, prompt="a sailing boat at sea", seed=1))
    assert boat.source.picture_id == "my-pictures:boat.jpg"
    assert boat.source.caption == "A small sailing boat on a calm blue sea"
    lighthouse = image_of(generate(library, prompt="a lighthouse on a cliff", seed=1))
    assert lighthouse.source.caption == "lighthouse on a rocky cliff"
    assert "3 pictures from" in lighthouse.model.provenance
    skipped = [json.loads(line) for line in library_service.log().splitlines() if '"picture skipped"' in line]
    assert sorted(Path(s["path"]).name for s in skipped) == ["broken.jpg", "too-wide.png"]


def test_concurrent_requests_are_batched(library, library_service):
    def batches() -> tuple[float, float]:   # (executions, executions of one row)
        text = library_service.metrics()
        return (metric(text, "modalmesh_batch_size_count", model="picture-library"),
                metric(text, "modalmesh_batch_size_bucket", model="picture-library", le="1.0"))

    before = batches()
    prompts = ["a rocket", "a cup of coffee", "a cat", "a horse", "the moon", "old coins", "a motorbike", "an eye"]
    with ThreadPoolExecutor(len(prompts)) as pool:
        images = list(pool.map(lambda p: image_of(generate(library, prompt=p, style="sketch")), prompts))
    after = batches()
    executions, single = after[0] - before[0], after[1] - before[1]
    assert len({image.source.picture_id for image in images}) == len(prompts)
    assert executions < len(prompts) and single < executions, (executions, single)


BAD_REQUESTS = [
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   \n "}, "prompt"),
    ({"prompt": "x" * 2001}, "prompt"),
    ({"prompt": "a cat\x00"}, "prompt"),
    ({"prompt": "a \x1b[31mred\x1b[0m cat"}, "prompt"),
    ({"prompt": "a cat", "negative_prompt": "dogs\x07"}, "negative_prompt"),
    ({"prompt": "a cat", "width": 63}, "width"),
    ({"prompt": "a cat", "width": 100}, "width"),
    ({"prompt": "a cat", "height": 2056}, "height"),
    ({"prompt": "a cat", "width": 2048, "height": 2048}, "width"),     # past max_image_pixels
    ({"prompt": "a cat", "steps": 101}, "steps"),
    ({"prompt": "a cat", "guidance_scale": 30.5}, "guidance_scale"),
    ({"prompt": "a cat", "guidance_scale": -1}, "guidance_scale"),
    ({"prompt": "a cat", "guidance_scale": math.nan}, "guidance_scale"),
    ({"prompt": "a cat", "style": "pastel"}, "style"),
    ({"prompt": "a cat", "encoding": 7}, "encoding"),
]


@pytest.mark.parametrize("fields, field", BAD_REQUESTS, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_REQUESTS)])
def test_bad_input_is_refused_with_the_field_named(library, fields, field):
    with pytest.raises(grpc.RpcError) as refused:
        generate(library, **fields)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [f for f, _ in bad_request_of(refused.value)], bad_request_of(refused.value)


def test_every_problem_of_a_request_is_named_at_once(library):
    with pytest.raises(grpc.RpcError) as refused:
        generate(library, prompt="", width=65, steps=500, style="crayon")
    assert {f for f, _ in bad_request_of(refused.value)} == {"prompt", "width", "steps", "style"}


def test_tabs_and_line_breaks_are_white_space_not_control_characters(library):
    assert image_of(generate(library, prompt="a cup\tof coffee\r\non the table")).source.picture_id == "skimage:coffee"


def test_the_open_inference_protocol_lists_the_model_and_points_to_generate_image(library_service):
    with library_service.channel() as channel:
        inference = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert inference.ModelReady(grpc_service_pb2.ModelReadyRequest(name="picture-library"), timeout=10).ready
        with pytest.raises(grpc.RpcError) as refused:
            inference.ModelInfer(grpc_service_pb2.ModelInferRequest(model_name="picture-library"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "GenerateImage" in refused.value.details()


def test_without_a_generation_model_the_call_fails_as_a_precondition():
    servicer = VisionServicer(inspector=None, limits=ImageLimits(), generator=None)

    async def first_reply():
        return await anext(servicer.GenerateImage(vision_pb2.GenerateImageRequest(prompt="a cat"), None))

    with pytest.raises(FailedPrecondition, match="MODALMESH_IMAGE_GENERATION_MODEL"):
        asyncio.run(first_reply())


# -- a diffusers pipeline --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    return build_tiny_stable_diffusion(tmp_path_factory.mktemp("models") / "tiny-stable-diffusion")


@pytest.fixture(scope="module")
def diffusion_services(pki, tmp_path_factory, tiny_pipeline):
    """The tiny pipeline served by its local path and by Hugging Face id from a local cache, started side
    by side."""
    hf_home = tmp_path_factory.mktemp("hf-home")
    install_in_hub_cache(tiny_pipeline, hf_home, TINY_ID)
    by_path = dict(image_generation_model=str(tiny_pipeline), image_generation_steps=4, image_generation_guidance=0)
    by_id = dict(image_generation_model=TINY_ID, image_generation_steps=1,
                 environment={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})
    launched = {name: launch("services.vision", pki, tmp_path_factory.mktemp(f"vision-{name}"), "vision",
                             segmentation_model="", model_threads=1, **settings)
                for name, settings in (("path", by_path), ("id", by_id))}
    with serving_together(launched) as services:
        yield services


@pytest.fixture(scope="module")
def diffusion_service(diffusion_services):
    return diffusion_services["path"]


@pytest.fixture(scope="module")
def diffusion(diffusion_service):
    with diffusion_service.channel() as channel:
        yield vision_pb2_grpc.VisionServiceStub(channel)


@pytest.mark.slow
def test_a_diffusion_pipeline_streams_each_denoising_step_then_the_image(diffusion):
    replies = generate(diffusion, prompt="a lighthouse in a storm", width=96, height=64, seed=3, style="noir")
    progress = [(r.progress.stage, r.progress.step, r.progress.total_steps) for r in replies[:-1]]
    assert progress == [("queued", 0, 4), ("denoising", 1, 4), ("denoising", 2, 4), ("denoising", 3, 4),
                        ("decoding", 4, 4), ("encoding", 4, 4)]
    image = image_of(replies)
    assert (image.width, image.height, image.steps, image.seed, image.style) == (96, 64, 4, 3, "noir")
    assert pixels_of(image).shape == (64, 96, 3) and not image.HasField("source")
    assert image.model.name == "tiny-stable-diffusion" and len(image.model.version) == 12
    assert "StableDiffusionPipeline" in image.model.provenance and "local path" in image.model.provenance
    assert image.model.device == "cpu" and image.model.dtype == "float32"


@pytest.mark.slow
def test_a_diffusion_pipeline_is_deterministic_by_seed_and_has_a_default_size(diffusion):
    ask = dict(prompt="a red barn", width=64, height=64, steps=2)
    first, again = image_of(generate(diffusion, seed=11, **ask)), image_of(generate(diffusion, seed=11, **ask))
    other = image_of(generate(diffusion, seed=12, **ask))
    assert first.data == again.data and first.steps == 2
    assert not np.array_equal(pixels_of(first), pixels_of(other))
    default = image_of(generate(diffusion, prompt="a red barn", seed=1))
    assert (default.width, default.height) == (32, 32)   # the tiny UNet's sample size 16 x the VAE's scale 2


@pytest.mark.slow
def test_concurrent_diffusion_requests_with_equal_options_are_denoised_together(diffusion, diffusion_service):
    def batches() -> tuple[float, float]:   # (rows, executions)
        text = diffusion_service.metrics()
        return (metric(text, "modalmesh_batch_size_sum", model="tiny-stable-diffusion"),
                metric(text, "modalmesh_batch_size_count", model="tiny-stable-diffusion"))

    alone = pixels_of(image_of(generate(diffusion, prompt="a boat 1", width=64, height=64, steps=20, seed=21)))
    before = batches()
    asks = [dict(prompt=f"a boat {i}", width=64, height=64, steps=20, seed=20 + i) for i in range(6)]
    asks.append(dict(prompt="a wide boat", width=96, height=64, steps=20, seed=5))   # its own group
    with ThreadPoolExecutor(len(asks)) as pool:
        images = list(pool.map(lambda ask: image_of(generate(diffusion, **ask)), asks))
    rows, executions = (after - first for after, first in zip(batches(), before))
    assert rows == len(asks) and executions < len(asks), (rows, executions)
    assert [(i.width, i.height) for i in images] == [(64, 64)] * 6 + [(96, 64)]
    # Each row has its own generator: in a batch, the seed still decides the picture (to rounding).
    assert np.abs(pixels_of(images[1]).astype(int) - alone).max() <= 2
    assert np.abs(pixels_of(images[2]).astype(int) - alone).max() > 2   # another seed: another picture


@pytest.mark.slow
def test_a_cancelled_call_stops_the_denoising(diffusion, diffusion_service):
    call = diffusion.GenerateImage(vision_pb2.GenerateImageRequest(
        prompt="a long generation", width=192, height=192, steps=100, seed=1), timeout=120)   # ~0.1-0.3 s a step
    for reply in call:
        if reply.progress.stage == "denoising" and reply.progress.step >= 2:
            break
    cancelled_at = time.monotonic()
    call.cancel()
    wait_for(lambda: '"image generation interrupted"' in diffusion_service.log(), timeout=30)
    stopped = next(json.loads(line) for line in diffusion_service.log().splitlines()
                   if '"image generation interrupted"' in line)
    assert 2 <= stopped["step"] < 100 and stopped["steps"] == 100
    assert time.monotonic() - cancelled_at < 5
    assert image_of(generate(diffusion, prompt="the next call", width=64, height=64)).steps == 4


@pytest.mark.slow
def test_a_call_past_its_deadline_fails_and_stops_the_denoising(diffusion, diffusion_service):
    interrupted = diffusion_service.log().count('"image generation interrupted"')
    with pytest.raises(grpc.RpcError) as late:
        generate(diffusion, timeout=1.5, prompt="too slow for its deadline", width=192, height=192, steps=100)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: diffusion_service.log().count('"image generation interrupted"') > interrupted, timeout=10)


@pytest.mark.slow
def test_a_diffusion_pipeline_loads_by_hugging_face_id_from_the_local_cache(diffusion_services):
    with diffusion_services["id"].channel() as channel:
        image = image_of(generate(vision_pb2_grpc.VisionServiceStub(channel), prompt="a cat", seed=1))
    assert image.model.name == TINY_ID and "Hugging Face" in image.model.provenance
    assert (image.width, image.height, image.steps) == (32, 32, 1)
