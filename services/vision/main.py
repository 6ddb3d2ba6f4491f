"""The vision service process: settings, model registry, servicer."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from modalmesh.v1 import vision_pb2_grpc
from services.runtime.registry import ModelRegistry
from services.runtime.server import Runtime, Service, run_service
from services.runtime.settings import ServiceSettings
from services.vision.images import ImageLimits
from services.vision.inspection import SURFACE_DEFECTS, SurfaceDefectModel
from services.vision.servicer import DEFAULT_THRESHOLD, VisionServicer


class VisionSettings(ServiceSettings):
    workload: str = "vision"
    inspection_model: str = Field(SURFACE_DEFECTS, description="'surface-defects' (trained by the project) or a "
                                  "folder with model.safetensors and provenance.json from scripts/train_defect_model.py")
    inspection_threshold: float = Field(DEFAULT_THRESHOLD, gt=0, le=1,
                                        description="Default defect score at which the verdict is FAIL")
    max_image_pixels: int = Field(4096 * 1024, ge=256, description="Largest image accepted, in pixels")
    max_image_side: int = Field(4096, ge=16, description="Longest side accepted, in pixels")


def model_registry() -> ModelRegistry:
    """The shipped inspection model; any other name is a folder written by the training script."""
    registry = ModelRegistry(fallback=lambda path, **options: SurfaceDefectModel(Path(path), **options))
    registry.register(SURFACE_DEFECTS, lambda **options: SurfaceDefectModel(**options))
    return registry


def build(runtime: Runtime) -> Service:
    settings: VisionSettings = runtime.settings
    limits = ImageLimits(max_pixels=settings.max_image_pixels, max_side=settings.max_image_side)
    model = model_registry().create(settings.inspection_model, device=settings.device, limits=limits,
                                    threads=settings.model_threads, instances=settings.model_instances)
    inspector = runtime.serve_model(SURFACE_DEFECTS if settings.inspection_model == SURFACE_DEFECTS
                                    else Path(settings.inspection_model).name, model)
    servicer = VisionServicer(inspector, limits, default_threshold=settings.inspection_threshold)
    return Service(models=[inspector], servicers=[
        (vision_pb2_grpc.add_VisionServiceServicer_to_server, servicer, "modalmesh.v1.VisionService"),
    ])


def main() -> None:
    run_service(VisionSettings, build)
