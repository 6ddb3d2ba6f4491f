"""VisionService.SegmentVolume over a real socket with mutual TLS, on the packaged abdomen-phantom model:
held-out Dice, a 256 x 256 x 128 study in 1 MiB chunks, DICOM and NIfTI of one volume, four studies at once,
the stream protocol, label formats and geometry, measurements against the labels returned, the network over
the Open Inference Protocol, bad input, admission, cancellation and deadlines.
"""

from __future__ import annotations

import gzip
import json
import threading
import time

import grpc
import nibabel as nib
import numpy as np
import pytest

from modalmesh.v1 import common_pb2, vision_pb2, vision_pb2_grpc
from services.runtime.errors import bad_request_of
from services.vision.phantoms import make_phantom
from services.vision.segmentation import ABDOMEN_PHANTOM, MODELS_DIR, PROVENANCE_FILE, count_windows
from services.vision.volume_model import SegmentationSpec, as_meta_tensor, preparation
from services.vision.study_stream import collect_reply, study_requests
from services.vision.volumes import VolumeLimits, dicom_zip_bytes, nifti_bytes, read_dicom_zip, read_nifti
from tests.support import metric, start_service

NIFTI, DICOM, RAW = vision_pb2.VOLUME_FORMAT_NIFTI, vision_pb2.VOLUME_FORMAT_DICOM_ZIP, vision_pb2.VOLUME_FORMAT_RAW
STAGE = vision_pb2.SegmentationStage
MiB = 1024 * 1024
MODEL = ABDOMEN_PHANTOM
# Anatomy seeds the training script never draws from (it trains on 1000+), on grids it never trains on
# (scripts/train_segmentation_model.py, TRAIN_GRIDS).
HELDOUT_SEEDS = (9100, 9101, 9102)


@pytest.fixture(scope="module")
def vision_service(pki, tmp_path_factory):
    """The packaged model, as a deployment gets it; windows wait up to 100 ms for company (so four concurrent
    studies share batches, and a long study takes long enough to cancel); 4 studies at once and 1 waiting."""
    service = start_service("services.vision", pki, tmp_path_factory.mktemp("vision-seg"), "vision",
                            segmentation_max_queue_delay_ms=100, max_concurrent_studies=4, max_queued_studies=1,
                            max_volume_bytes=64 * MiB)
    yield service
    assert service.stop() == 0, service.log_tail()


@pytest.fixture(scope="module")
def vision(vision_service):
    with vision_service.channel() as channel:
        yield vision_pb2_grpc.VisionServiceStub(channel)


def segment(stub, data: bytes, timeout: float = 120, chunk_bytes: int = MiB, **header):
    header.setdefault("format", NIFTI)
    requests = study_requests(vision_pb2.VolumeHeader(**header), data, chunk_bytes)
    return collect_reply(stub.SegmentVolume(requests, timeout=timeout))


def nifti_of(phantom, compress: bool = True) -> bytes:
    return nifti_bytes(phantom.volume.voxels, phantom.volume.affine, compress=compress)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def labels_of(reply) -> np.ndarray:
    return read_nifti(reply.labels, VolumeLimits()).voxels.astype(np.uint8)


def by_name(reply) -> dict[str, vision_pb2.StructureMeasurement]:
    return {s.name: s for s in reply.result.structures}


def truth_ml(phantom, label: int) -> float:
    return np.count_nonzero(phantom.labels == label) * abs(np.linalg.det(phantom.volume.affine[:3, :3])) / 1000


# -- the packaged model -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_heldout_dice_per_label_through_the_api(vision):
    """Mean Dice >= 0.9 per label over held-out seeds on two grids not trained on; no study below 0.85 (the
    smallest lesions, 8-9 mm across four 2 mm voxels of the model's grid, are the hardest)."""
    scores = {"organ": [], "lesion": []}
    for shape, spacing in (((96, 96, 96), (2.2, 2.2, 2.2)), ((80, 112, 72), (2.3, 1.7, 2.6))):
        for seed in HELDOUT_SEEDS:
            phantom = make_phantom(seed, shape, spacing)
            labels = labels_of(segment(vision, nifti_of(phantom)))
            for label, name in ((1, "organ"), (2, "lesion")):
                scores[name].append(dice(labels == label, phantom.labels == label))
    for name, values in scores.items():
        assert np.mean(values) >= 0.9 and min(values) >= 0.85, (name, np.round(values, 3))


@pytest.mark.slow
def test_a_study_past_the_message_limit_streams_in_chunks_and_is_measured(vision):
    phantom = make_phantom(9103, (256, 256, 128), (1.5, 1.5, 2.5), lesion_radius_mm=14)
    data = nifti_of(phantom)
    assert len(data) > 4 * MiB
    reply = segment(vision, data, study_id="big-study")
    assert reply.study_ids == {"big-study"}
    # Progress in order: bytes arriving, then preparing, windows going through, measuring.
    stages = [p.stage for p in reply.progress]
    assert stages == sorted(stages) and stages[0] == STAGE.Value("SEGMENTATION_STAGE_RECEIVING")
    received = [p.bytes_received for p in reply.progress if p.stage == STAGE.Value("SEGMENTATION_STAGE_RECEIVING")]
    assert received == sorted(received) and received[-1] == len(data) and len(received) >= 4
    windows = [p for p in reply.progress if p.stage == STAGE.Value("SEGMENTATION_STAGE_SEGMENTING")]
    assert [w.windows_done for w in windows] == sorted(w.windows_done for w in windows)
    assert windows[-1].windows_done == windows[-1].windows_total > 1
    assert reply.progress[-1].stage == STAGE.Value("SEGMENTATION_STAGE_MEASURING")
    measured = by_name(reply)
    for label, name in ((1, "organ"), (2, "lesion")):
        truth = truth_ml(phantom, label)
        # Within 8%: the model's outline of the organ runs a voxel wide at places (+3 to +7% on held-out studies).
        assert measured[name].volume_ml == pytest.approx(truth, rel=0.08), (name, measured[name].volume_ml, truth)
    assert list(reply.result.geometry.shape) == [256, 256, 128]
    assert reply.result.model.name == MODEL and "synthetic" in reply.result.model.provenance


@pytest.mark.slow
def test_a_dicom_series_and_a_nifti_of_the_same_volume_measure_the_same(vision):
    series = dicom_zip_bytes(make_phantom(9104, (96, 96, 96), (2.0, 2.0, 2.0), orientation="LPS").volume)
    volume = read_dicom_zip(series, VolumeLimits())   # the int16 voxels the series carries, as a NIfTI too
    from_dicom = segment(vision, series, format=DICOM)
    from_nifti = segment(vision, nifti_bytes(volume.voxels, volume.affine))
    assert from_dicom.result.geometry == from_nifti.result.geometry
    assert from_dicom.result.geometry.orientation == "LPS"
    counts = {s.name: s.voxel_count for s in from_dicom.result.structures}
    assert counts == {s.name: s.voxel_count for s in from_nifti.result.structures}
    assert counts["organ"] > 0 and counts["lesion"] > 0
    assert from_dicom.labels == from_nifti.labels


def test_the_command_line_segments_a_dicom_folder_as_the_api_does_its_zip(vision, vision_service, tmp_path):
    """`modalmesh segment` over a folder of slices (as a scanner exports them) measures what the API measures
    for the same series zipped, and saves the labels as NIfTI on the study's grid."""
    import io
    import subprocess
    import sys
    import zipfile

    series = dicom_zip_bytes(make_phantom(9105, (96, 96, 80), (2.0, 2.0, 2.5), orientation="LPS").volume)
    folder = tmp_path / "series"
    zipfile.ZipFile(io.BytesIO(series)).extractall(folder)
    labels = tmp_path / "labels.nii.gz"
    ran = subprocess.run([sys.executable, "-m", "modalmesh.cli", "segment", f"127.0.0.1:{vision_service.port}",
                          str(folder), "--labels", str(labels), "--home", str(vision_service.home.root)],
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert "segmenting: " in ran.stderr and "windows" in ran.stderr
    printed = json.loads(ran.stdout)
    expected = segment(vision, series, format=DICOM).result
    assert {s["name"]: int(s["voxel_count"]) for s in printed["structures"]} == {
        s.name: s.voxel_count for s in expected.structures}
    saved = nib.load(labels)
    assert saved.shape == (96, 96, 80) and np.allclose(saved.affine, read_dicom_zip(series, VolumeLimits()).affine)


@pytest.mark.slow
def test_four_studies_at_once_are_all_right_and_share_batches(vision, vision_service):
    phantoms = [make_phantom(9110 + i, (96, 96, 96), (2.0, 2.0, 2.0)) for i in range(4)]
    replies: list = [None] * 4

    def run(i: int) -> None:
        replies[i] = segment(vision, nifti_of(phantoms[i]), study_id=f"study-{i}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    for i, (phantom, reply) in enumerate(zip(phantoms, replies)):
        assert reply.study_ids == {f"study-{i}"}
        labels = labels_of(reply)
        assert dice(labels == 1, phantom.labels == 1) >= 0.9 and dice(labels == 2, phantom.labels == 2) >= 0.85
    metrics = vision_service.metrics()
    batches = metric(metrics, "modalmesh_batch_size_count", model=MODEL)
    up_to_one_study = metric(metrics, "modalmesh_batch_size_bucket", model=MODEL, le="4.0")
    # A study hands the batcher at most 4 windows at a time: a larger batch holds windows of several studies.
    assert batches - up_to_one_study > 0, (batches, up_to_one_study)


# -- the stream, label formats and geometry ----------------------------------------------------


def test_labels_come_back_on_the_study_grid_in_every_format(vision):
    phantom = make_phantom(9120, (64, 72, 56), (2.5, 2.2, 3.0), orientation="LPS")
    data = nifti_of(phantom)
    as_nifti = segment(vision, data, study_id="a")
    image = nib.Nifti1Image.from_bytes(gzip.decompress(as_nifti.labels))
    assert image.shape == (64, 72, 56) and image.get_data_dtype() == np.uint8
    assert np.allclose(image.affine, phantom.volume.affine)
    geometry = as_nifti.result.geometry
    assert geometry.orientation == "LPS" and list(geometry.shape) == [64, 72, 56]
    assert np.allclose(np.reshape(geometry.affine, (4, 4)), phantom.volume.affine)
    assert np.allclose(geometry.spacing_mm, (2.5, 2.2, 3.0))
    assert as_nifti.result.label_format == vision_pb2.LABEL_FORMAT_NIFTI_GZ
    assert as_nifti.result.label_bytes == len(as_nifti.labels)

    as_raw = segment(vision, data, label_format=vision_pb2.LABEL_FORMAT_RAW)
    raw = np.frombuffer(as_raw.labels, np.uint8).reshape(64, 72, 56)
    assert np.array_equal(raw, np.asarray(image.dataobj))
    as_none = segment(vision, data, label_format=vision_pb2.LABEL_FORMAT_NONE)
    assert as_none.labels == b"" and as_none.result.label_bytes == 0
    assert [s.voxel_count for s in as_none.result.structures] == [s.voxel_count for s in as_raw.result.structures]
    assert dict(as_nifti.result.label_names) == {0: "background", 1: "organ", 2: "lesion"}
    assert as_nifti.result.model.name == MODEL and as_nifti.result.model.provenance


def test_measurements_describe_the_labels_returned(vision):
    phantom = make_phantom(9121, (64, 64, 64), (2.0, 2.0, 2.0), orientation="LPS")
    reply = segment(vision, nifti_of(phantom), label_format=vision_pb2.LABEL_FORMAT_RAW)
    labels = np.frombuffer(reply.labels, np.uint8).reshape(64, 64, 64)
    affine = phantom.volume.affine
    for structure in reply.result.structures:
        where = np.argwhere(labels == structure.label)
        assert structure.voxel_count == len(where)
        assert structure.volume_ml == pytest.approx(len(where) * 8.0 / 1000)
        if len(where):
            assert list(structure.bounding_box.min_index) == where.min(0).tolist()
            assert list(structure.bounding_box.max_index) == where.max(0).tolist()
            assert np.allclose(structure.centroid_mm, (affine @ [*where.mean(0), 1])[:3])
        else:
            assert not structure.bounding_box.min_index and not structure.centroid_mm


def test_raw_voxels_with_their_geometry(vision):
    phantom = make_phantom(9122, (48, 56, 40), (2.0, 2.0, 2.0))
    voxels = phantom.volume.voxels.astype(np.int16)
    reply = segment(vision, voxels.tobytes(), format=RAW, raw=vision_pb2.RawVolume(
        dtype=common_pb2.DATA_TYPE_INT16, shape=[48, 56, 40], spacing_mm=[2.0, 2.0, 2.0], orientation="LPS",
        origin_mm=[10, 20, 30]), label_format=vision_pb2.LABEL_FORMAT_RAW)
    geometry = reply.result.geometry
    assert geometry.orientation == "LPS" and list(geometry.shape) == [48, 56, 40]
    assert np.reshape(geometry.affine, (4, 4))[:3, 3].tolist() == [-10, -20, 30]
    assert len(reply.labels) == 48 * 56 * 40


def test_progress_comes_in_order_with_the_study_id(vision):
    phantom = make_phantom(9123, (96, 96, 96), (2.0, 2.0, 2.0))
    data = nifti_of(phantom, compress=False)
    reply = segment(vision, data, chunk_bytes=64 * 1024, study_id="study-7")
    assert reply.study_ids == {"study-7"}
    received = [p.bytes_received for p in reply.progress if p.stage == STAGE.Value("SEGMENTATION_STAGE_RECEIVING")]
    # Progress every MiB, not every 64 KiB chunk.
    assert received == sorted(received) and received[-1] == len(data) and len(received) <= len(data) // MiB + 1
    assert all(p.total_bytes == len(data) for p in reply.progress[:len(received)])
    names = [STAGE.Name(p.stage) for p in reply.progress[len(received):]]
    assert names[0] == "SEGMENTATION_STAGE_PREPARING" and names[-1] == "SEGMENTATION_STAGE_MEASURING"
    windows = [p for p in reply.progress if p.stage == STAGE.Value("SEGMENTATION_STAGE_SEGMENTING")]
    assert windows[0].windows_done == 0 and windows[-1].windows_done == windows[-1].windows_total > 1


def test_the_network_alone_over_the_open_inference_protocol(vision_service):
    from inference import grpc_service_pb2 as oip
    from inference import grpc_service_pb2_grpc as oip_grpc

    spec = json.loads((MODELS_DIR / MODEL / PROVENANCE_FILE).read_text())["spec"]
    roi, classes = list(spec["roi_size"]), len(spec["labels"])

    def infer(windows: np.ndarray):
        return oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(oip.ModelInferRequest(
            model_name=MODEL, inputs=[oip.ModelInferRequest.InferInputTensor(
                name="WINDOW", datatype="FP32", shape=list(windows.shape))],
            raw_input_contents=[windows.tobytes()]), timeout=30)

    windows = np.random.default_rng(0).random((2, 1, *roi), dtype=np.float32)
    with vision_service.channel() as channel:
        reply = infer(windows)
        with pytest.raises(grpc.RpcError) as caught:
            infer(windows[:, :, :roi[0] - 8])
    probabilities = np.frombuffer(reply.raw_output_contents[0], "<f2").reshape(tuple(reply.outputs[0].shape))
    assert reply.outputs[0].name == "PROBABILITIES" and probabilities.shape == (2, classes, *roi)
    assert np.allclose(probabilities.astype(np.float32).sum(1), 1.0, atol=5e-3)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "WINDOW" in [f for f, _ in bad_request_of(caught.value)]


# -- bad input ---------------------------------------------------------------------------------------------------


def _header(**fields) -> vision_pb2.SegmentVolumeRequest:
    return vision_pb2.SegmentVolumeRequest(header=vision_pb2.VolumeHeader(**fields))


def _chunk(offset: int, data: bytes) -> vision_pb2.SegmentVolumeRequest:
    return vision_pb2.SegmentVolumeRequest(chunk=vision_pb2.VolumeChunk(offset=offset, data=data))


def _stream(data: bytes, **fields) -> list[vision_pb2.SegmentVolumeRequest]:
    return list(study_requests(vision_pb2.VolumeHeader(**{"format": NIFTI, **fields}), data, 256 * 1024))


def _nifti(voxels: np.ndarray, affine=np.diag([2.0, 2.0, 2.0, 1.0]), compress=True) -> bytes:
    image = nib.Nifti1Image(voxels, affine)
    data = image.to_bytes()
    return gzip.compress(data) if compress else data


def _zero_spacing_nifti() -> bytes:
    """A NIfTI-1 file whose header says the j spacing is 0 mm (pixdim[2], bytes 84-87 of the header)."""
    data = bytearray(_nifti(np.zeros((32, 32, 32), np.float32), compress=False))
    data[84:88] = np.float32(0.0).tobytes()
    return bytes(data)


def _bad_cases():
    small = make_phantom(9130, (32, 32, 32), (2.0, 2.0, 2.0))
    plain = nifti_of(small, compress=False)
    packed = nifti_of(small)
    nan = small.volume.voxels.copy()
    nan[5, 6, 7] = np.nan
    corrupt = bytearray(packed)
    corrupt[len(corrupt) // 2:len(corrupt) // 2 + 64] = bytes(64)
    raw = dict(dtype=common_pb2.DATA_TYPE_FP32, shape=[32, 32, 32], spacing_mm=[2.0, 2.0, 2.0])
    raw_bytes = small.volume.voxels.tobytes()
    return {
        "truncated nifti": (_stream(plain[:len(plain) // 2]), "INVALID_ARGUMENT", "chunk.data"),
        "corrupt nifti.gz": (_stream(bytes(corrupt)), "INVALID_ARGUMENT", "chunk.data"),
        "not a nifti": (_stream(b"hello, this is not a NIfTI file at all" * 20), "INVALID_ARGUMENT", "chunk.data"),
        "corrupt dicom zip": (_stream(b"PK\x03\x04" + bytes(range(256)) * 8, format=DICOM), "INVALID_ARGUMENT",
                              "chunk.data"),
        "dicom zip that is nifti": (_stream(packed, format=DICOM), "INVALID_ARGUMENT", "chunk.data"),
        "2d image": (_stream(_nifti(np.zeros((64, 64), np.float32))), "INVALID_ARGUMENT", "chunk.data"),
        "single slice": (_stream(_nifti(np.zeros((64, 64, 1), np.float32))), "INVALID_ARGUMENT", "chunk.data"),
        "zero spacing nifti": (_stream(_zero_spacing_nifti()), "INVALID_ARGUMENT", "chunk.data"),
        "nan voxels nifti": (_stream(_nifti(nan)), "INVALID_ARGUMENT", "chunk.data"),
        "nan voxels raw": (_stream(nan.tobytes(), format=RAW, raw=vision_pb2.RawVolume(**raw)), "INVALID_ARGUMENT",
                           "chunk.data"),
        "negative spacing raw": (_stream(raw_bytes, format=RAW, raw=vision_pb2.RawVolume(
            **{**raw, "spacing_mm": [2.0, -1.0, 2.0]})), "INVALID_ARGUMENT", "header.raw.spacing_mm"),
        "zero spacing raw": (_stream(raw_bytes, format=RAW, raw=vision_pb2.RawVolume(
            **{**raw, "spacing_mm": [0.0, 2.0, 2.0]})), "INVALID_ARGUMENT", "header.raw.spacing_mm"),
        "raw without geometry": (_stream(raw_bytes, format=RAW), "INVALID_ARGUMENT", "header.raw"),
        "raw 2d shape": (_stream(raw_bytes, format=RAW, raw=vision_pb2.RawVolume(
            **{**raw, "shape": [1024, 32, 1]})), "INVALID_ARGUMENT", "header.raw.shape"),
        "raw size mismatch": (_stream(raw_bytes[:-4], format=RAW, raw=vision_pb2.RawVolume(**raw)),
                              "INVALID_ARGUMENT", "header.total_bytes"),
        "raw bad orientation": (_stream(raw_bytes, format=RAW, raw=vision_pb2.RawVolume(**raw, orientation="RRS")),
                                "INVALID_ARGUMENT", "header.raw.orientation"),
        "no format": (_stream(packed, format=vision_pb2.VOLUME_FORMAT_UNSPECIFIED), "INVALID_ARGUMENT",
                      "header.format"),
        "unknown format": (_stream(packed, format=42), "INVALID_ARGUMENT", "header.format"),
        "unknown label format": (_stream(packed, label_format=42), "INVALID_ARGUMENT", "header.label_format"),
        "no total": ([_header(format=NIFTI), _chunk(0, packed)], "INVALID_ARGUMENT", "header.total_bytes"),
        "empty stream": ([], "INVALID_ARGUMENT", "header"),
        "chunk before header": ([_chunk(0, packed), *_stream(packed)], "INVALID_ARGUMENT", "header"),
        "second header": (_stream(packed)[:2] + [_header(format=NIFTI, total_bytes=len(packed))],
                          "INVALID_ARGUMENT", "header"),
        "chunks out of order": (_stream(plain)[:1] + [_chunk(256 * 1024, plain[256 * 1024:512 * 1024])],
                                "INVALID_ARGUMENT", "chunk.offset"),
        "chunk repeated": (_stream(plain)[:2] + _stream(plain)[1:2], "INVALID_ARGUMENT", "chunk.offset"),
        "fewer bytes than declared": ([_header(format=NIFTI, total_bytes=len(packed) + 10), _chunk(0, packed)],
                                      "INVALID_ARGUMENT", "header.total_bytes"),
        "more bytes than declared": ([_header(format=NIFTI, total_bytes=100), _chunk(0, packed)],
                                     "INVALID_ARGUMENT", "chunk.data"),
        "declared size beyond the limit": ([_header(format=NIFTI, total_bytes=2**40)], "RESOURCE_EXHAUSTED", None),
    }


BAD_CASES = _bad_cases()


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_gets_a_clear_status_with_the_field(vision, vision_service, case):
    requests, code, field = BAD_CASES[case]
    with pytest.raises(grpc.RpcError) as caught:
        collect_reply(vision.SegmentVolume(iter(requests), timeout=60))
    error = caught.value
    assert error.code().name == code, (case, error.code(), error.details())
    if field:
        fields = [f for f, _ in bad_request_of(error)]
        assert field in fields, (case, fields, error.details())
    assert error.details() and "Traceback" not in error.details()
    assert vision_service.health("modalmesh.v1.VisionService") == "SERVING"


def test_a_declared_size_past_the_limit_is_refused_before_any_chunk(vision):
    sent_header, never = threading.Event(), threading.Event()

    def requests():
        yield _header(format=NIFTI, total_bytes=10 * 2**30)
        sent_header.set()
        never.wait(30)   # the server must answer without waiting for a chunk

    started = time.monotonic()
    try:
        with pytest.raises(grpc.RpcError) as caught:
            collect_reply(vision.SegmentVolume(requests(), timeout=20))
    finally:
        never.set()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "MODALMESH_MAX_VOLUME_BYTES" in caught.value.details()
    assert time.monotonic() - started < 10


def test_studies_past_the_admission_limits_are_refused_at_once(vision):
    """Four studies in work and one waiting (the service's settings here); a sixth is refused."""
    data = nifti_of(make_phantom(9131, (32, 32, 32), (2.0, 2.0, 2.0)))
    release = threading.Event()

    def held():   # a header, then nothing until released: the study holds its slot
        yield _header(format=NIFTI, total_bytes=len(data))
        release.wait(60)
        yield _chunk(0, data)

    calls = [vision.SegmentVolume(held(), timeout=60) for _ in range(5)]
    try:
        time.sleep(1.0)
        with pytest.raises(grpc.RpcError) as caught:
            segment(vision, data, timeout=20)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "MODALMESH_MAX_CONCURRENT_STUDIES" in caught.value.details()
    finally:
        release.set()
    for call in calls:   # the held studies go through once released, the waiting one included
        assert collect_reply(call).result.structures


@pytest.fixture(scope="module")
def long_study():
    """1.5 mm voxels over 384 x 384 x 450 mm: 80 windows on the model's grid, many seconds of work even on a
    fast machine. (header, bytes, windows)"""
    volume = make_phantom(9132, (256, 256, 300), (1.5, 1.5, 1.5)).volume
    header = vision_pb2.VolumeHeader(format=RAW, raw=vision_pb2.RawVolume(
        dtype=common_pb2.DATA_TYPE_INT16, shape=[256, 256, 300], spacing_mm=[1.5, 1.5, 1.5]))
    spec = SegmentationSpec.from_json(json.loads((MODELS_DIR / MODEL / PROVENANCE_FILE).read_text())["spec"])
    prepared = preparation(spec)(as_meta_tensor(volume.voxels, volume.affine))
    return header, volume.voxels.astype(np.int16).tobytes(), count_windows(prepared.shape[1:], spec.roi_size,
                                                                           spec.overlap)


def windows_run(service) -> float:
    return metric(service.metrics(), "modalmesh_batch_size_sum", model=MODEL)


def assert_windows_stop(service, before: float, total: int, most: float = 0.5) -> None:
    """No window of the abandoned study reaches the network any more, and at most `most` of them ever did."""
    time.sleep(1.0)
    done = windows_run(service) - before
    time.sleep(1.0)
    assert windows_run(service) - before == done
    assert done < total * most, (done, total)
    assert service.health("modalmesh.v1.VisionService") == "SERVING"


@pytest.mark.slow
def test_a_cancelled_study_stops_sending_windows(vision, vision_service, long_study):
    before = windows_run(vision_service)
    header, data, windows = long_study
    call = vision.SegmentVolume(study_requests(header, data), timeout=120)
    total = 0
    for response in call:   # cancelled once its first windows are back
        if response.progress.stage == STAGE.Value("SEGMENTATION_STAGE_SEGMENTING") and response.progress.windows_done:
            total = response.progress.windows_total
            call.cancel()
            break
    assert total == windows >= 24
    assert_windows_stop(vision_service, before, total)


@pytest.mark.slow
def test_a_study_past_its_deadline_stops_sending_windows(vision, vision_service, long_study):
    before = windows_run(vision_service)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        collect_reply(vision.SegmentVolume(study_requests(*long_study[:2]), timeout=2.5))
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 5
    # How far 2.5 s get depends on the machine; what matters is that the rest never runs.
    assert_windows_stop(vision_service, before, total=long_study[2], most=0.9)
