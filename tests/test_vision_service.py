"""VisionService.Inspect over a real socket with mutual TLS: defects found on held-out synthetic surfaces,
clean surfaces pass, every input form, and every kind of bad input refused with field details."""

from __future__ import annotations

import struct
import zlib

import cv2
import grpc
import numpy as np
import pytest

from modalmesh.v1 import common_pb2, vision_pb2, vision_pb2_grpc
from services.runtime.errors import bad_request_of
from services.vision.textures import CLASSES, product_image
from tests.support import start_service

# Seeds the training script never draws from (it uses 20261127..20261129).
HELDOUT_SEED = 4242
KIND_OF = {vision_pb2.DEFECT_CLASS_SCRATCH: "scratch", vision_pb2.DEFECT_CLASS_SPOT: "spot",
           vision_pb2.DEFECT_CLASS_CRACK: "crack"}


@pytest.fixture(scope="module")
def vision_service(pki, tmp_path_factory):
    service = start_service("services.vision", pki, tmp_path_factory.mktemp("vision"), "vision")
    yield service
    assert service.stop() == 0, service.log()[-2000:]


@pytest.fixture(scope="module")
def vision(vision_service):
    channel = vision_service.channel()
    yield vision_pb2_grpc.VisionServiceStub(channel)
    channel.close()


def pixels(image: np.ndarray) -> vision_pb2.Image:
    return vision_pb2.Image(pixels=common_pb2.Tensor(dtype=common_pb2.DATA_TYPE_UINT8, shape=list(image.shape),
                                                     data=image.tobytes()))


def encoded(image: np.ndarray, extension: str, *params) -> vision_pb2.Image:
    ok, data = cv2.imencode(extension, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), list(params))
    assert ok
    return vision_pb2.Image(encoded=data.tobytes())


def mask_of(response: vision_pb2.InspectResponse) -> np.ndarray:
    assert response.mask.dtype == common_pb2.DATA_TYPE_UINT8
    return np.frombuffer(response.mask.data, np.uint8).reshape(tuple(response.mask.shape))


def box_iou(a, b) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / (a[2] * a[3] + b[2] * b[3] - ix * iy)


def test_defects_on_heldout_surfaces_are_found_with_their_class_and_box(vision):
    rng = np.random.default_rng(HELDOUT_SEED)
    found, total, ious = 0, 0, []
    for kind in ("scratch", "spot", "crack") * 5:
        sample = product_image(rng, 192, defects=[kind])
        if not sample.defects:
            continue
        reply = vision.Inspect(vision_pb2.InspectRequest(image=pixels(sample.image)), timeout=30)
        truth = sample.defects[0].box
        same_class = [d for d in reply.defects if KIND_OF[d.defect_class] == kind]
        best = max((box_iou(truth, (d.box.x, d.box.y, d.box.width, d.box.height)) for d in same_class), default=0)
        total += 1
        found += best >= 0.5 and reply.verdict == vision_pb2.VERDICT_FAIL
        ious.append(best)
    assert total == 15
    assert found >= 13, f"{found} of {total} defects found with the right class and box IoU >= 0.5: {ious}"


def test_the_mask_marks_the_defect_pixels(vision):
    sample = product_image(np.random.default_rng(HELDOUT_SEED + 1), 160, defects=["spot", "crack"])
    mask = mask_of(vision.Inspect(vision_pb2.InspectRequest(image=pixels(sample.image)), timeout=30))
    assert mask.shape == sample.mask.shape
    for class_id in (CLASSES.index("spot"), CLASSES.index("crack")):
        truth, predicted = sample.mask == class_id, mask == class_id
        dice = 2 * np.sum(truth & predicted) / (truth.sum() + predicted.sum())
        assert dice > 0.6, (CLASSES[class_id], dice)


def test_clean_surfaces_pass(vision):
    rng = np.random.default_rng(HELDOUT_SEED + 2)
    replies = [vision.Inspect(vision_pb2.InspectRequest(image=pixels(product_image(rng, 192, surface=s).image)),
                              timeout=30)
               for s in ("brushed_metal", "cast", "woven", "painted") * 3]
    passed = [r.verdict == vision_pb2.VERDICT_PASS for r in replies]
    assert sum(passed) >= 10, [(r.defect_score, len(r.defects)) for r in replies]
    for reply in replies:
        assert reply.verdict == (vision_pb2.VERDICT_FAIL if reply.defect_score >= 0.5 else vision_pb2.VERDICT_PASS)
        assert reply.threshold == pytest.approx(0.5)


def test_png_bmp_jpeg_rgb_and_grey_pixels_all_work(vision):
    sample = product_image(np.random.default_rng(HELDOUT_SEED + 3), (144, 200), defects=["spot"])
    direct = vision.Inspect(vision_pb2.InspectRequest(image=pixels(sample.image)), timeout=30)
    for lossless in (encoded(sample.image, ".png"), encoded(sample.image, ".bmp")):
        reply = vision.Inspect(vision_pb2.InspectRequest(image=lossless), timeout=30)
        assert (reply.width, reply.height) == (200, 144)
        np.testing.assert_array_equal(mask_of(reply), mask_of(direct))
    jpeg = vision.Inspect(vision_pb2.InspectRequest(image=encoded(sample.image, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 92)),
                          timeout=30)
    assert [KIND_OF[d.defect_class] for d in jpeg.defects][:1] == ["spot"]
    grey = cv2.cvtColor(sample.image, cv2.COLOR_RGB2GRAY)
    reply = vision.Inspect(vision_pb2.InspectRequest(image=pixels(grey)), timeout=30)
    assert mask_of(reply).shape == (144, 200)
    assert "spot" in [KIND_OF[d.defect_class] for d in reply.defects]


def test_mask_encodings_and_threshold(vision):
    sample = product_image(np.random.default_rng(HELDOUT_SEED + 4), 128, defects=["crack"])
    image = pixels(sample.image)
    as_tensor = vision.Inspect(vision_pb2.InspectRequest(image=image), timeout=30)
    as_png = vision.Inspect(vision_pb2.InspectRequest(image=image, mask_encoding=vision_pb2.MASK_ENCODING_PNG))
    none = vision.Inspect(vision_pb2.InspectRequest(image=image, mask_encoding=vision_pb2.MASK_ENCODING_NONE))
    decoded = cv2.imdecode(np.frombuffer(as_png.mask_png, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(decoded, mask_of(as_tensor))
    assert not as_png.HasField("mask") and not none.HasField("mask") and not none.mask_png
    assert len(none.defects) == len(as_tensor.defects) and none.defect_score == as_tensor.defect_score
    assert as_tensor.defect_score > 0.5
    strict = vision.Inspect(vision_pb2.InspectRequest(image=image, threshold=1.0))
    assert strict.threshold == 1.0
    assert strict.verdict == (vision_pb2.VERDICT_FAIL if strict.defect_score >= 1.0 else vision_pb2.VERDICT_PASS)


def test_every_response_names_the_model_and_its_provenance(vision):
    image = product_image(np.random.default_rng(1), 64).image
    model = vision.Inspect(vision_pb2.InspectRequest(image=pixels(image)), timeout=30).model
    assert model.name == "surface-defects"
    assert "scripts/train_defect_model.py" in model.provenance and "F1" in model.provenance
    assert len(model.version) == 12 and model.device == "cpu" and model.dtype == "float32"


# -- bad input ------------------------------------------------------------------------------------------------


def _png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with only a scrap of data (a bomb needs no real data)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
            + chunk(b"IEND", b""))


def _jpeg_claiming(width: int, height: int) -> bytes:
    ok, data = cv2.imencode(".jpg", np.zeros((32, 32, 3), np.uint8))
    data = bytearray(data.tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _tensor(dtype=common_pb2.DATA_TYPE_UINT8, shape=(32, 32, 3), data: bytes | None = None) -> vision_pb2.Image:
    size = int(np.prod(shape)) if data is None else None
    return vision_pb2.Image(pixels=common_pb2.Tensor(dtype=dtype, shape=list(shape),
                                                     data=b"\0" * size if data is None else data))


BAD_REQUESTS = {
    "no image": (vision_pb2.InspectRequest(), "image"),
    "empty bytes": (vision_pb2.InspectRequest(image=vision_pb2.Image(encoded=b"")), "image.encoded"),
    "not an image": (vision_pb2.InspectRequest(image=vision_pb2.Image(encoded=b"%PDF-1.7 not a picture")),
                     "image.encoded"),
    "png bomb": (vision_pb2.InspectRequest(image=vision_pb2.Image(encoded=_png(100_000, 100_000))), "image.encoded"),
    "png too wide": (vision_pb2.InspectRequest(image=vision_pb2.Image(encoded=_png(8192, 64))), "image.encoded"),
    "png corrupt data": (vision_pb2.InspectRequest(image=vision_pb2.Image(encoded=_png(64, 64))), "image.encoded"),
    "jpeg bomb": (vision_pb2.InspectRequest(image=vision_pb2.Image(encoded=_jpeg_claiming(60_000, 60_000))),
                  "image.encoded"),
    "jpeg truncated": (vision_pb2.InspectRequest(image=vision_pb2.Image(encoded=b"\xff\xd8\xff\xe0\x00\x10JFIF")),
                       "image.encoded"),
    "bmp header only": (vision_pb2.InspectRequest(image=vision_pb2.Image(encoded=b"BM" + b"\0" * 10)),
                        "image.encoded"),
    "float pixels": (vision_pb2.InspectRequest(image=_tensor(dtype=common_pb2.DATA_TYPE_FP32, data=b"\0" * 4 * 3072)),
                     "image.pixels.dtype"),
    "four channels": (vision_pb2.InspectRequest(image=_tensor(shape=(32, 32, 4))), "image.pixels.shape"),
    "one dimension": (vision_pb2.InspectRequest(image=_tensor(shape=(1024,))), "image.pixels.shape"),
    "zero dimension": (vision_pb2.InspectRequest(image=_tensor(shape=(0, 32, 3))), "image.pixels.shape"),
    "too small": (vision_pb2.InspectRequest(image=_tensor(shape=(8, 8))), "image.pixels.shape"),
    "too many pixels": (vision_pb2.InspectRequest(image=_tensor(shape=(4000, 4000, 3), data=b"")),
                        "image.pixels.shape"),
    "short data": (vision_pb2.InspectRequest(image=_tensor(shape=(32, 32, 3), data=b"\0" * 100)),
                   "image.pixels.data"),
    "threshold zero": (vision_pb2.InspectRequest(image=_tensor(), threshold=0.0), "threshold"),
    "threshold nan": (vision_pb2.InspectRequest(image=_tensor(), threshold=float("nan")), "threshold"),
    "threshold above one": (vision_pb2.InspectRequest(image=_tensor(), threshold=1.5), "threshold"),
}


@pytest.mark.parametrize("name", BAD_REQUESTS)
def test_bad_input_is_refused_with_field_details(vision, vision_service, name):
    request, field = BAD_REQUESTS[name]
    with pytest.raises(grpc.RpcError) as error:
        vision.Inspect(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
    violations = bad_request_of(error.value)
    assert violations and violations[0][0] == field, violations


def test_service_keeps_serving_after_bad_input(vision, vision_service):
    for request, _ in BAD_REQUESTS.values():
        with pytest.raises(grpc.RpcError):
            vision.Inspect(request, timeout=30)
    assert vision_service.health() == "SERVING"
    assert vision_service.health("modalmesh.v1.VisionService") == "SERVING"
    reply = vision.Inspect(vision_pb2.InspectRequest(image=pixels(product_image(np.random.default_rng(2), 64).image)))
    assert reply.model.name == "surface-defects"


def test_a_request_past_the_message_limit_gets_resource_exhausted(vision):
    big = vision_pb2.Image(encoded=b"\x89PNG\r\n\x1a\n" + b"\0" * (17 * 1024 * 1024))
    with pytest.raises(grpc.RpcError) as error:
        vision.Inspect(vision_pb2.InspectRequest(image=big), timeout=30)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_open_inference_protocol_gives_the_same_mask_as_inspect(vision, vision_service):
    from inference import grpc_service_pb2 as oip
    from inference import grpc_service_pb2_grpc as oip_grpc

    images = np.stack([product_image(np.random.default_rng(HELDOUT_SEED + 5 + i), 96, defects=["spot"]).image
                       for i in range(2)])
    request = oip.ModelInferRequest(model_name="surface-defects", inputs=[oip.ModelInferRequest.InferInputTensor(
        name="IMAGE", datatype="UINT8", shape=list(images.shape))], raw_input_contents=[images.tobytes()])
    with vision_service.channel() as channel:
        reply = oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    outputs = {o.name: (o, raw) for o, raw in zip(reply.outputs, reply.raw_output_contents)}
    masks = np.frombuffer(outputs["MASK"][1], np.uint8).reshape(tuple(outputs["MASK"][0].shape))
    scores = np.frombuffer(outputs["DEFECT_SCORE"][1], "<f4").reshape(tuple(outputs["DEFECT_SCORE"][0].shape))
    assert masks.shape == (2, 96, 96) and scores.shape == (2, 1)
    for i in range(2):
        typed = vision.Inspect(vision_pb2.InspectRequest(image=pixels(images[i])), timeout=30)
        np.testing.assert_array_equal(masks[i], mask_of(typed))
        assert scores[i, 0] == pytest.approx(typed.defect_score)
