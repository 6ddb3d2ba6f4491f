"""The model adapter: the one small interface every model implements (Triton's initialize / execute / finalize).

A service never touches a framework directly: it asks its adapter to load, warm up
and run a batch of prepared rows, and to describe itself for every response.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modalmesh.v1 import common_pb2


@dataclass(frozen=True)
class ModelDescription:
    """Name, version and provenance of the weights, and where they run."""

    name: str
    version: str
    provenance: str
    device: str
    dtype: str
    runtime: str = ""   # what executes it, where a service can choose: "onnxruntime 1.32.0", "torch 2.13.0"

    def to_proto(self) -> common_pb2.ModelInfo:
        return common_pb2.ModelInfo(name=self.name, version=self.version, provenance=self.provenance,
                                    device=self.device, dtype=self.dtype, runtime=self.runtime)


@dataclass(frozen=True)
class TensorSpec:
    """One Open Inference Protocol tensor of a model, shape without the batch dimension (-1: any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False  # a request may leave it out


class ModelAdapter(ABC):
    """load → warm_up → run_batch (many times) → close.

    ``run_batch`` runs on a worker thread, never on the event loop; it receives the
    rows of several requests concatenated and returns one result per row, indexable
    (a list or an array whose first axis is the row).
    """

    #: Open Inference Protocol signature; empty when the model is not exposed as tensors.
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()

    @abstractmethod
    def load(self) -> None: ...

    @abstractmethod
    def warm_up(self) -> None: ...

    @abstractmethod
    def run_batch(self, rows: Sequence[Any]) -> Sequence[Any]: ...

    @abstractmethod
    def describe(self) -> ModelDescription: ...

    def close(self) -> None:
        """Release what load() took (GPU memory, files)."""

    # Open Inference Protocol view: tensors in, rows for run_batch; results out, tensors.
    def rows_from_tensors(self, tensors: dict[str, np.ndarray]) -> list[Any]:
        raise NotImplementedError(f"{type(self).__name__} has no tensor interface")

    def tensors_from_results(self, results: Sequence[Any]) -> dict[str, np.ndarray]:
        raise NotImplementedError(f"{type(self).__name__} has no tensor interface")
