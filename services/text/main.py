"""The text service process: settings, model registry, servicer."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from modalmesh.v1 import text_pb2_grpc
from services.runtime.devices import cores_beside_the_event_loop
from services.runtime.registry import ModelRegistry
from services.runtime.server import Runtime, Service, run_service
from services.runtime.settings import Precision, ServiceSettings
from services.text.embedding_model import PACKAGED_NAME, SentenceEmbedder
from services.text.generator import GeneratedSummaries, GenerationLimits, ServedGenerator
from services.text.language_model import STORYTELLER, CausalLanguageModel
from services.text.servicer import TextServicer


class TextSettings(ServiceSettings):
    workload: str = "text"
    embedding_model: str = Field(PACKAGED_NAME, description="Registered name, Hugging Face id or local path")
    embedding_precision: Precision | None = Field(None, description="Overrides MODALMESH_PRECISION for the encoder")
    embedding_max_tokens: int | None = Field(None, ge=8, description="Override the encoder's token window")
    embedding_runtime: Literal["auto", "onnxruntime", "torch"] = Field(
        "auto", description="auto: ONNX Runtime for a float32 encoder on the CPU (exported at the first start), "
                            "PyTorch otherwise")
    export_cache: Path | None = Field(None, description="Where ONNX exports are kept between starts "
                                                        "(default $XDG_CACHE_HOME/modalmesh/onnx)")
    generation_model: str = Field(STORYTELLER, description="'storyteller' (trained by the project), a Hugging Face "
                                                           "id in the local cache or a local path; '' serves none")
    generation_precision: Precision | None = Field(None, description="Overrides MODALMESH_PRECISION for generation")
    generation_max_active: int = Field(32, ge=1, le=512, description="Sequences decoded together (the batch)")
    generation_max_waiting: int = Field(256, ge=1, description="Queued generations past which RESOURCE_EXHAUSTED")
    generation_batching: Literal["continuous", "static"] = Field(
        "continuous", description="continuous: requests join and leave the batch between decode steps")
    generation_kv_cache: Literal["auto", "dynamic", "static"] = Field(
        "auto", description="static: key/value buffers allocated once, decode steps replayed as CUDA graphs on a GPU; "
                            "dynamic: a cache that grows each step; auto: static on a GPU, dynamic on the CPU")
    generation_cache_tokens: int = Field(0, ge=0, description="Columns of a static KV cache, the most tokens a "
                                                              "sequence holds; 0: the context window, at most 4096")
    generation_cuda_graphs: bool = Field(True, description="Replay a static cache's decode steps as CUDA graphs")
    summary_writer: Literal["none", "generation"] = Field(
        "none", description="generation: abstractive summaries by the generation model (use an instruct model)")
    generation_default_max_new_tokens: int = Field(256, ge=1)
    generation_max_new_tokens: int = Field(1024, ge=1)


def model_registry() -> ModelRegistry:
    """Known embedding models; any other id or path loads with the same adapter."""
    registry = ModelRegistry(fallback=SentenceEmbedder)
    registry.register(PACKAGED_NAME, lambda **options: SentenceEmbedder(PACKAGED_NAME, **options))
    return registry


def build(runtime: Runtime) -> Service:
    settings: TextSettings = runtime.settings
    embedder = model_registry().create(settings.embedding_model, device=settings.device,
                                       precision=settings.embedding_precision or settings.precision,
                                       threads=settings.model_threads,
                                       instances=settings.model_instances,
                                       max_tokens=settings.embedding_max_tokens,
                                       runtime=settings.embedding_runtime, export_cache=settings.export_cache)
    served = runtime.serve_model(_served_name(settings.embedding_model), embedder)
    generator = _generator(settings, runtime)
    writer = GeneratedSummaries(generator) if generator and settings.summary_writer == "generation" else None
    servicer = TextServicer(served, generator=generator, summary_writer=writer)
    return Service(models=[served] + ([generator] if generator else []), servicers=[
        (text_pb2_grpc.add_TextServiceServicer_to_server, servicer, "modalmesh.v1.TextService"),
    ])


def _generator(settings: TextSettings, runtime: Runtime) -> ServedGenerator | None:
    if not settings.generation_model:
        return None
    lm = CausalLanguageModel(settings.generation_model, device=settings.device,
                             precision=settings.generation_precision or settings.precision,
                             threads=settings.model_threads or cores_beside_the_event_loop())
    limits = GenerationLimits(max_active=settings.generation_max_active, max_waiting=settings.generation_max_waiting,
                              default_max_new_tokens=settings.generation_default_max_new_tokens,
                              max_new_tokens=settings.generation_max_new_tokens,
                              continuous=settings.generation_batching == "continuous",
                              kv_cache=settings.generation_kv_cache, cache_tokens=settings.generation_cache_tokens,
                              cuda_graphs=settings.generation_cuda_graphs)
    return ServedGenerator(_served_name(settings.generation_model), lm, limits, runtime.metrics)


def _served_name(spec: str) -> str:
    """OIP model names cannot hold '/': a Hugging Face id or path is served under its last part."""
    return spec.rstrip("/").rsplit("/", 1)[-1]


def main() -> None:
    run_service(TextSettings, build)
