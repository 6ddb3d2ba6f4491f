"""A MONAI bundle by path: a tiny bundle in the layout of the Model Zoo's spleen_ct_segmentation (its transforms,
inferer and metadata; a small UNet with random weights) loads through MODALMESH_SEGMENTATION_MODEL and segments
over gRPC with mutual TLS exactly as MONAI's own bundle pipeline does; by Hugging Face id too, from the local
cache (how the Model Zoo publishes bundles, and what a cluster's model-cache volume holds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from modalmesh.v1 import vision_pb2, vision_pb2_grpc
from services.vision.phantoms import make_phantom
from services.vision.segmentation import count_windows, to_study_grid
from services.vision.study_stream import collect_reply, study_requests
from services.vision.volumes import nifti_bytes
from tests.segmentation_models import write_tiny_bundle
from tests.support import install_in_hub_cache, start_service

PIXDIM, ROI = (2.0, 2.0, 2.5), (48, 48, 48)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return write_tiny_bundle(tmp_path_factory.mktemp("bundles") / "spleen_ct_segmentation", pixdim=PIXDIM, roi=ROI)


@pytest.fixture(scope="module")
def bundle_service(pki, tmp_path_factory, bundle):
    service = start_service("services.vision", pki, tmp_path_factory.mktemp("vision-bundle"), "vision",
                            segmentation_model=str(bundle))
    yield service
    assert service.stop() == 0, service.log_tail()


def monai_reference(bundle, nifti_path) -> tuple[np.ndarray, np.ndarray]:
    """The bundle run by MONAI alone: its preprocessing (LoadImaged from the file), network, weights, inferer.
    Returns the argmax labels on the prepared grid and that grid's affine."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["device"] = "$torch.device('cpu')"
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    network.eval()
    image = parser.get_parsed_content("preprocessing")({"image": str(nifti_path)})["image"]
    with torch.inference_mode():
        prediction = parser.get_parsed_content("inferer")(image[None], network)
    return prediction[0].argmax(0).numpy().astype(np.uint8), np.asarray(image.affine, np.float64)


@pytest.mark.slow
def test_a_bundle_segments_over_grpc_as_monai_runs_it(bundle, bundle_service, tmp_path):
    phantom = make_phantom(9140, (80, 88, 64), (1.6, 1.6, 2.0), orientation="LPS")
    data = nifti_bytes(phantom.volume.voxels, phantom.volume.affine)
    with bundle_service.channel() as channel:
        reply = collect_reply(vision_pb2_grpc.VisionServiceStub(channel).SegmentVolume(
            study_requests(vision_pb2.VolumeHeader(format=vision_pb2.VOLUME_FORMAT_NIFTI,
                                                   label_format=vision_pb2.LABEL_FORMAT_RAW), data), timeout=120))
    result = reply.result
    # The bundle's metadata names the labels and the model.
    assert dict(result.label_names) == {0: "background", 1: "spleen"}
    assert [s.name for s in result.structures] == ["spleen"]
    assert result.model.name == "Tiny spleen-layout bundle" and result.model.version == "0.0.1-test"
    assert "MONAI bundle" in result.model.provenance
    labels = np.frombuffer(reply.labels, np.uint8).reshape(80, 88, 64)

    nifti_path = tmp_path / "study.nii.gz"
    nifti_path.write_bytes(data)
    reference, grid_affine = monai_reference(bundle, nifti_path)
    # The bundle's Spacingd pixdim and its inferer's roi_size and overlap set the windows.
    windows = [p for p in reply.progress if p.stage == vision_pb2.SEGMENTATION_STAGE_SEGMENTING]
    assert windows[-1].windows_total == count_windows(reference.shape, ROI, 0.5)
    assert np.allclose(np.abs(np.diag(grid_affine))[:3], PIXDIM)
    expected = to_study_grid(reference, grid_affine, labels.shape, phantom.volume.affine)
    assert 0 < np.count_nonzero(expected) < expected.size   # random weights, but not a constant answer
    agreement = np.mean(labels == expected)
    assert agreement >= 0.999, agreement


@pytest.mark.slow
def test_a_bundle_by_hugging_face_id_loads_from_the_local_cache(pki, tmp_path, bundle):
    hf_home = tmp_path / "hf"
    install_in_hub_cache(bundle, hf_home, "MONAI/spleen_ct_segmentation")
    service = start_service("services.vision", pki, tmp_path, "vision",
                            segmentation_model="MONAI/spleen_ct_segmentation",
                            environment={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})
    try:
        phantom = make_phantom(9141, (48, 48, 48), (2.0, 2.0, 2.0))
        with service.channel() as channel:
            reply = collect_reply(vision_pb2_grpc.VisionServiceStub(channel).SegmentVolume(
                study_requests(vision_pb2.VolumeHeader(format=vision_pb2.VOLUME_FORMAT_NIFTI),
                               nifti_bytes(phantom.volume.voxels, phantom.volume.affine)), timeout=120))
        assert reply.result.model.name == "Tiny spleen-layout bundle"
        assert dict(reply.result.label_names) == {0: "background", 1: "spleen"}
    finally:
        assert service.stop() == 0, service.log_tail()
