"""The vision service process: settings, model registry, servicer."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from modalmesh.v1 import vision_pb2_grpc
from services.runtime.batcher import BatchingConfig
from services.runtime.registry import ModelRegistry
from services.runtime.served_model import ServedModel
from services.runtime.server import Runtime, Service, run_service
from services.runtime.settings import ServiceSettings
from services.vision.images import ImageLimits
from services.vision.inspection import SURFACE_DEFECTS, SurfaceDefectModel
from services.vision.segmentation import ABDOMEN_PHANTOM, StudyAdmission, StudySegmenter, VolumeSegmentationModel
from services.vision.servicer import DEFAULT_THRESHOLD, VisionServicer
from services.vision.volumes import VolumeLimits


class VisionSettings(ServiceSettings):
    workload: str = "vision"
    inspection_model: str = Field(SURFACE_DEFECTS, description="'surface-defects' (trained by the project) or a "
                                  "folder with model.safetensors and provenance.json from scripts/train_defect_model.py")
    inspection_threshold: float = Field(DEFAULT_THRESHOLD, gt=0, le=1,
                                        description="Default defect score at which the verdict is FAIL")
    max_image_pixels: int = Field(4096 * 1024, ge=256, description="Largest image accepted, in pixels")
    max_image_side: int = Field(4096, ge=16, description="Longest side accepted, in pixels")

    segmentation_model: str = Field(ABDOMEN_PHANTOM, description="'abdomen-phantom' (trained by the project), a "
                                    "folder written by scripts/train_segmentation_model.py, a MONAI bundle folder "
                                    "(configs/inference.json, models/model.pt), or '' for none")
    max_volume_bytes: int = Field(512 * 2**20, ge=1024, description="Largest study accepted, in bytes (encoded, "
                                  "and after decompression)")
    max_volume_voxels: int = Field(512 * 512 * 1024, ge=4096, description="Largest study accepted, in voxels")
    max_concurrent_studies: int = Field(4, ge=1, description="Studies received and segmented at once; each holds "
                                        "its bytes, its voxels and its probabilities in memory")
    max_queued_studies: int = Field(16, ge=0, description="Studies waiting for a slot past which RESOURCE_EXHAUSTED")
    segmentation_max_batch_size: int = Field(8, ge=1, description="Windows per execution of the segmentation "
                                             "network, from one or several studies")
    segmentation_max_queue_delay_ms: float = Field(5.0, ge=0, description="Longest a group of windows waits for "
                                                   "others to fill its batch")


def model_registry() -> ModelRegistry:
    """The shipped inspection model; any other name is a folder written by the training script."""
    registry = ModelRegistry(fallback=lambda path, **options: SurfaceDefectModel(Path(path), **options))
    registry.register(SURFACE_DEFECTS, lambda **options: SurfaceDefectModel(**options))
    return registry


def segmentation_registry() -> ModelRegistry:
    """The shipped segmentation model; any other name is a trained-model folder or a MONAI bundle folder."""
    registry = ModelRegistry(fallback=lambda path, **options: VolumeSegmentationModel(Path(path), **options))
    registry.register(ABDOMEN_PHANTOM, lambda **options: VolumeSegmentationModel(**options))
    return registry


def build(runtime: Runtime) -> Service:
    settings: VisionSettings = runtime.settings
    limits = ImageLimits(max_pixels=settings.max_image_pixels, max_side=settings.max_image_side)
    model = model_registry().create(settings.inspection_model, device=settings.device, limits=limits,
                                    threads=settings.model_threads, instances=settings.model_instances)
    inspector = runtime.serve_model(served_name(settings.inspection_model), model)
    segmenter = build_segmenter(runtime) if settings.segmentation_model else None
    servicer = VisionServicer(inspector, limits, default_threshold=settings.inspection_threshold,
                              segmenter=segmenter,
                              volume_limits=VolumeLimits(max_bytes=settings.max_volume_bytes,
                                                         max_voxels=settings.max_volume_voxels),
                              admission=StudyAdmission(settings.max_concurrent_studies, settings.max_queued_studies))
    return Service(models=[inspector] + ([segmenter.served] if segmenter else []), servicers=[
        (vision_pb2_grpc.add_VisionServiceServicer_to_server, servicer, "modalmesh.v1.VisionService"),
    ])


def build_segmenter(runtime: Runtime) -> StudySegmenter:
    """The segmentation model with batching of its own: windows are large, so fewer per batch than images."""
    settings: VisionSettings = runtime.settings
    adapter = segmentation_registry().create(settings.segmentation_model, device=settings.device,
                                             precision=settings.precision, threads=settings.model_threads,
                                             instances=settings.model_instances)
    batching = BatchingConfig(max_batch_size=settings.segmentation_max_batch_size,
                              max_queue_delay_s=settings.segmentation_max_queue_delay_ms / 1000,
                              max_queue_size=settings.max_queue_size, enabled=settings.dynamic_batching,
                              instances=settings.model_instances)
    served = ServedModel(served_name(settings.segmentation_model), adapter, batching, runtime.metrics)
    return StudySegmenter(served, adapter)


def served_name(model: str) -> str:
    """A shipped model by its name; a folder by its last part."""
    return model if "/" not in model and not Path(model).exists() else Path(model).name


def main() -> None:
    run_service(VisionSettings, build)
