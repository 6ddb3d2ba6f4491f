"""A model as a service serves it: adapter + dynamic batcher + readiness."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import grpc

from services.runtime.adapter import ModelAdapter, ModelDescription
from services.runtime.batcher import BatchingConfig, DynamicBatcher
from services.runtime.errors import Unavailable
from services.runtime.metrics import Metrics

log = logging.getLogger(__name__)


class ServedModel:
    def __init__(self, name: str, adapter: ModelAdapter, batching: BatchingConfig, metrics: Metrics | None = None,
                 version: str = "1"):
        self.name = name
        self.version = version
        self.adapter = adapter
        self.batcher = DynamicBatcher(name, adapter.run_batch, batching, metrics)
        self.state = "LOADING"
        self.reason = ""
        self._description: ModelDescription | None = None
        self.model_info = None   # the ModelInfo proto every response carries, built once at load

    @property
    def ready(self) -> bool:
        return self.state == "READY"

    def require_ready(self) -> None:
        """UNAVAILABLE (which clients and the mesh retry) for a call that comes while loading or closing."""
        if self.state != "READY":
            raise Unavailable(f"model {self.name} is {self.state.lower()}; health says SERVING once it can answer")

    # The Open Inference Protocol's view of the model: its tensors, batched along a first dimension.
    decoupled = False  # one response per request

    @property
    def inputs(self):
        return self.adapter.inputs

    @property
    def outputs(self):
        return self.adapter.outputs

    @property
    def max_batch_size(self) -> int:
        return self.batcher.config.max_batch_size

    @property
    def description(self) -> ModelDescription:
        if self._description is None:
            raise RuntimeError(f"model {self.name} is not loaded")
        return self._description

    async def load(self) -> None:
        """Load and warm up off the event loop, then start batching."""
        started = time.monotonic()
        try:
            await asyncio.to_thread(self.adapter.load)
            await asyncio.to_thread(self.adapter.warm_up)
        except Exception as error:
            self.state, self.reason = "UNAVAILABLE", f"{type(error).__name__}: {error}"
            raise
        self._description = self.adapter.describe()
        self.model_info = self._description.to_proto()
        self.batcher.start()
        self.state = "READY"
        log.info("model ready", extra={"model": self.name, "seconds": round(time.monotonic() - started, 2),
                                       "provenance": self._description.provenance,
                                       "device": self._description.device})

    async def infer(self, rows: Sequence[Any], context: grpc.aio.ServicerContext | None = None) -> Sequence[Any]:
        """Run rows through the batcher, honouring the caller's deadline."""
        self.require_ready()
        timeout = context.time_remaining() if context is not None else None
        return await self.batcher.submit(rows, timeout)

    async def close(self) -> None:
        self.state = "UNAVAILABLE"
        await self.batcher.close()
        await asyncio.to_thread(self.adapter.close)
