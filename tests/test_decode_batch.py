"""The engine's two batch layouts, in process: a static KV cache generates what a dynamic one does.

Greedy decoding must give each request the tokens the model's own `generate()` gives it alone,
whichever layout holds the batch, while requests arrive staggered, are cancelled mid-stream and,
with a small static cache, while rows move left and right inside its columns. The "fixed shapes"
case runs every step over a bucket of rows and all columns: the arithmetic a CUDA graph replays
on a GPU, checked here on the CPU. bench/gpu.sh runs this file on a GPU too (MODALMESH_TEST_DEVICE=cuda),
where the static cache's steps replay CUDA graphs; the model runs in float32 there as here.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from services.text.generation_engine import GenerationEngine, SamplingParams
from services.text.language_model import CausalLanguageModel

SUBJECTS = ["a fox", "a robot", "a baker", "a dragon", "two sailors"]
DEVICE = os.environ.get("MODALMESH_TEST_DEVICE", "cpu")


@pytest.fixture(scope="module")
def storyteller():
    lm = CausalLanguageModel(device=DEVICE, precision="float32", threads=2)
    lm.load()
    return lm


@pytest.fixture(scope="module")
def prompts(storyteller):
    return [storyteller.encode_chat([{"role": "user", "content": f"Write a story about {subject} in town {i}."
                                      + " Please." * (i % 5)}])
            for i, subject in enumerate(SUBJECTS * 5)]


def alone(lm: CausalLanguageModel, ids: list[int], max_new_tokens: int) -> list[int]:
    with torch.inference_mode():
        out = lm.model.generate(torch.tensor([ids], device=lm.device), max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=lm.pad_token_id)
    tokens = out[0, len(ids):].tolist()
    eos = [i for i, token in enumerate(tokens) if token in lm.eos_token_ids]
    return tokens[:eos[0]] if eos else tokens


class Run:
    """Submits every prompt to an engine, a few milliseconds apart, and collects what each stream got."""

    def __init__(self, engine: GenerationEngine, prompts: list[list[int]], max_new_tokens: list[int],
                 cancel_after_first: set[int] = frozenset()):
        self.engine, self.prompts = engine, prompts
        self.texts = [""] * len(prompts)
        self.finish: list[str | None] = [None] * len(prompts)
        self.completion_tokens = [0] * len(prompts)
        self.ended = [threading.Event() for _ in prompts]
        self.sequences = []
        for i, (ids, limit) in enumerate(zip(prompts, max_new_tokens)):
            self.sequences.append(engine.submit(ids, SamplingParams(temperature=0, max_new_tokens=limit),
                                                self._sink(i, i in cancel_after_first)))
            time.sleep(0.004)
        for ended in self.ended:
            assert ended.wait(60), "a stream never ended"

    def _sink(self, i: int, cancel: bool):
        def sink(delta):
            assert delta.error is None, delta.error
            self.texts[i] += delta.text
            self.completion_tokens[i] = delta.completion_tokens
            if cancel:
                self.engine.cancel(self.sequences[i])
                self.ended[i].set()
            if delta.finish_reason:
                self.finish[i] = delta.finish_reason
                self.ended[i].set()
        return sink


def engine_with(lm, kv_cache: str, cache_tokens: int = 0, fixed_shapes: bool = False) -> GenerationEngine:
    engine = GenerationEngine(lm, max_active=16, kv_cache=kv_cache, cache_tokens=cache_tokens)
    engine.prepare()
    if fixed_shapes:
        engine._batch.fixed_shapes = True
    engine.start()
    return engine


@pytest.mark.parametrize("fixed_shapes", [False, True], ids=["eager", "fixed shapes"])
def test_a_static_cache_gives_every_stream_what_the_model_gives_it_alone(storyteller, prompts, fixed_shapes):
    engine = engine_with(storyteller, "static", fixed_shapes=fixed_shapes)
    try:
        assert engine.kv_cache == "static" and engine.token_limit == storyteller.context_window
        assert engine.cuda_graphs_in_use == (DEVICE == "cuda")
        cancelled = {3, 11, 17}
        limits = [40 + i % 9 for i in range(len(prompts))]
        run = Run(engine, prompts, limits, cancel_after_first=cancelled)
    finally:
        engine.close()
    assert engine.stats.cancelled == len(cancelled)
    for i, (ids, limit) in enumerate(zip(prompts, limits)):
        if i not in cancelled:
            assert run.texts[i] == storyteller.decode(alone(storyteller, ids, limit)), f"stream {i}"


def test_a_small_static_cache_moves_its_rows_and_ends_sequences_at_its_columns(storyteller, prompts):
    columns = 72
    engine = engine_with(storyteller, "static", cache_tokens=columns)
    moves: list[int] = []
    move_columns = engine._batch._move_columns
    engine._batch._move_columns = lambda shift: (moves.append(shift), move_columns(shift))
    try:
        assert engine.token_limit == columns
        limits = [12 if i % 4 == 0 else 80 for i in range(len(prompts))]
        run = Run(engine, prompts, limits)
    finally:
        engine.close()
    assert any(shift < 0 for shift in moves), "the clock never reached the last column"
    for i, (ids, limit) in enumerate(zip(prompts, limits)):
        room = min(limit, columns - len(ids))
        assert run.texts[i] == storyteller.decode(alone(storyteller, ids, room)), f"stream {i}"
        if run.finish[i] == "length":
            assert run.completion_tokens[i] == room


def test_the_dynamic_cache_is_the_default_on_the_cpu_and_the_static_one_on_a_gpu(storyteller):
    engine = GenerationEngine(storyteller)
    engine.prepare()
    assert engine.kv_cache == ("static" if DEVICE == "cuda" else "dynamic")
    assert engine.cuda_graphs_in_use == (DEVICE == "cuda")
    assert engine.token_limit == storyteller.context_window


# What a CUDA graph cannot hold: reading a value back to the host (a sync), shapes that depend on
# values, and tensors made from host data during the step.
NOT_CAPTURABLE = ("_local_scalar_dense", "item", "is_nonzero", "equal", "nonzero", "masked_select", "unique",
                  "lift_fresh")


def test_the_step_a_cuda_graph_captures_never_waits_on_the_host(storyteller):
    from torch.utils._python_dispatch import TorchDispatchMode

    class Operations(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.__name__)
            return func(*args, **(kwargs or {}))

    engine = GenerationEngine(storyteller, max_active=4, kv_cache="static", cache_tokens=64)
    engine.prepare()
    batch = engine._batch
    buffers = [t.data_ptr() for t in batch.keys + batch.values]
    with torch.inference_mode(), Operations() as seen:
        batch._forward(4, batch.capacity)  # the shape of a graph: a bucket of rows, every column
    names = [name.split(".")[0] for name in seen.names]  # "index_copy_.default" -> "index_copy_"
    assert "scaled_dot_product_attention" in names and "linear" in names
    assert [name for name in names if name in NOT_CAPTURABLE] == []
    assert names.count("index_copy_") == 2 * len(batch.keys)  # keys and values, in place, every layer
    assert [t.data_ptr() for t in batch.keys + batch.values] == buffers
