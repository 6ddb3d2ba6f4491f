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
from services.vision.image_generation import PICTURE_LIBRARY, DiffusionModel, ImageGenerator, PictureLibraryModel
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

    image_generation_model: str = Field(PICTURE_LIBRARY, description="'picture-library' (captioned pictures "
                                        "retrieved by meaning and restyled), a diffusers pipeline by local path or "
                                        "Hugging Face id in the local cache, or '' for none")
    picture_folders: str = Field("", description="Comma-separated folders of PNG/JPEG pictures the picture "
                                 "library adds to its built-in ones, captioned by captions.json, a sidecar .txt or "
                                 "the file name")
    painted_scenes: bool = Field(True, description="Whether the picture library holds its painted storybook "
                                 "scenes of the storyteller's places besides its photographs")
    image_generation_max_batch_size: int = Field(8, ge=1, description="Image requests per execution of the "
                                                 "generation model")
    image_generation_max_queue_delay_ms: float = Field(5.0, ge=0, description="Longest an image request waits for "
                                                       "others to fill its batch")
    image_generation_steps: int = Field(0, ge=0, le=100, description="Denoising steps of a diffusion model when a "
                                        "request leaves them to the model; 0 = the pipeline's default")
    image_generation_guidance: float | None = Field(None, ge=0, le=30, description="Guidance scale of a diffusion "
                                                    "model when a request leaves it to the model; unset = the "
                                                    "pipeline's default")


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


def generation_registry() -> ModelRegistry:
    """The picture library by name; any other name is a diffusers pipeline by path or Hugging Face id."""
    def diffusion(source: str, settings: VisionSettings, limits: ImageLimits) -> DiffusionModel:
        return DiffusionModel(source, device=settings.device, precision=settings.precision,
                              threads=settings.model_threads, instances=settings.model_instances,
                              steps=settings.image_generation_steps, guidance=settings.image_generation_guidance)

    def picture_library(settings: VisionSettings, limits: ImageLimits) -> PictureLibraryModel:
        folders = [Path(f.strip()).expanduser() for f in settings.picture_folders.split(",") if f.strip()]
        return PictureLibraryModel(folders, limits, device=settings.device, threads=settings.model_threads,
                                   instances=settings.model_instances, painted_scenes=settings.painted_scenes)

    registry = ModelRegistry(fallback=diffusion)
    registry.register(PICTURE_LIBRARY, picture_library)
    return registry


def build(runtime: Runtime) -> Service:
    settings: VisionSettings = runtime.settings
    limits = ImageLimits(max_pixels=settings.max_image_pixels, max_side=settings.max_image_side)
    model = model_registry().create(settings.inspection_model, device=settings.device, limits=limits,
                                    threads=settings.model_threads, instances=settings.model_instances)
    inspector = runtime.serve_model(served_name(settings.inspection_model), model)
    segmenter = build_segmenter(runtime) if settings.segmentation_model else None
    generator = build_generator(runtime, limits) if settings.image_generation_model else None
    servicer = VisionServicer(inspector, limits, default_threshold=settings.inspection_threshold,
                              segmenter=segmenter,
                              volume_limits=VolumeLimits(max_bytes=settings.max_volume_bytes,
                                                         max_voxels=settings.max_volume_voxels),
                              admission=StudyAdmission(settings.max_concurrent_studies, settings.max_queued_studies),
                              generator=generator)
    models = [inspector] + ([segmenter.served] if segmenter else []) + ([generator.served] if generator else [])
    return Service(models=models, servicers=[
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


def build_generator(runtime: Runtime, limits: ImageLimits) -> ImageGenerator:
    """The image generation model with batching of its own: an image costs far more than an inspection."""
    settings: VisionSettings = runtime.settings
    adapter = generation_registry().create(settings.image_generation_model, settings=settings, limits=limits)
    batching = BatchingConfig(max_batch_size=settings.image_generation_max_batch_size,
                              max_queue_delay_s=settings.image_generation_max_queue_delay_ms / 1000,
                              max_queue_size=settings.max_queue_size, enabled=settings.dynamic_batching,
                              instances=settings.model_instances)
    return ImageGenerator(ServedModel(served_name(settings.image_generation_model), adapter, batching,
                                      runtime.metrics))


def served_name(model: str) -> str:
    """A shipped model by its name; a folder by its last part."""
    return model if "/" not in model and not Path(model).exists() else Path(model).name


def main() -> None:
    run_service(VisionSettings, build)
