"""The text service process: settings, model registry, servicer."""

from __future__ import annotations

from pydantic import Field

from modalmesh.v1 import text_pb2_grpc
from services.runtime.registry import ModelRegistry
from services.runtime.server import Runtime, Service, run_service
from services.runtime.settings import Precision, ServiceSettings
from services.text.embedding_model import PACKAGED_NAME, SentenceEmbedder
from services.text.servicer import TextServicer


class TextSettings(ServiceSettings):
    workload: str = "text"
    embedding_model: str = Field(PACKAGED_NAME, description="Registered name, Hugging Face id or local path")
    embedding_precision: Precision | None = Field(None, description="Overrides MODALMESH_PRECISION for the encoder")
    embedding_max_tokens: int | None = Field(None, ge=8, description="Override the encoder's token window")


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
                                       max_tokens=settings.embedding_max_tokens)
    served = runtime.serve_model(_served_name(settings.embedding_model), embedder)
    return Service(models=[served], servicers=[
        (text_pb2_grpc.add_TextServiceServicer_to_server, TextServicer(served), "modalmesh.v1.TextService"),
    ])


def _served_name(spec: str) -> str:
    """OIP model names cannot hold '/': a Hugging Face id or path is served under its last part."""
    return spec.rstrip("/").rsplit("/", 1)[-1]


def main() -> None:
    run_service(TextSettings, build)
