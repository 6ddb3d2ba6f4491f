"""The generation model as the service serves it: validation, the engine, and token streams.

Both callers meet here: TextService.Generate (typed) and the Open Inference Protocol's
ModelInfer / ModelStreamInfer (tensors, decoupled: one response per text delta).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
from google.protobuf import json_format

from modalmesh.v1 import text_pb2
from services.runtime.adapter import ModelDescription, TensorSpec
from services.runtime.errors import InvalidArgument, Unavailable
from services.runtime.metrics import Metrics
from services.text.generation_engine import Delta, GenerationEngine, SamplingParams
from services.text.language_model import CausalLanguageModel

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 1_000_000
MAX_STOPS = 8
MAX_STOP_CHARS = 64
CHAT_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class GenerationLimits:
    max_active: int = 32  # sequences decoded together
    max_waiting: int = 256  # requests queued for a slot; RESOURCE_EXHAUSTED past it
    default_max_new_tokens: int = 256
    max_new_tokens: int = 1024
    continuous: bool = True  # False: static batching (new requests wait for the whole batch to finish)
    kv_cache: str = "auto"  # "dynamic", "static" (preallocated; CUDA graphs on a GPU), or "auto": static on a GPU
    cache_tokens: int = 0  # a static cache's columns; 0: the context window, at most 4096
    cuda_graphs: bool = True


class ServedGenerator:
    """A causal language model behind the continuous-batching engine."""

    decoupled = True  # Open Inference Protocol: many responses per request
    max_batch_size = 0  # no batch dimension on the wire: requests are batched inside, per decode step
    inputs = (TensorSpec("text_input", "BYTES", (1,)),
              TensorSpec("sampling_parameters", "BYTES", (1,), optional=True))
    outputs = (TensorSpec("text_output", "BYTES", (1,)),)

    def __init__(self, name: str, lm: CausalLanguageModel, limits: GenerationLimits, metrics: Metrics | None = None,
                 version: str = "1"):
        self.name = name
        self.version = version
        self.lm = lm
        self.limits = limits
        self.metrics = metrics
        self.engine = GenerationEngine(lm, limits.max_active, limits.max_waiting, on_step=self._observe_step,
                                       continuous=limits.continuous, kv_cache=limits.kv_cache,
                                       cache_tokens=limits.cache_tokens, cuda_graphs=limits.cuda_graphs)
        self.state = "LOADING"
        self.reason = ""
        self.model_info = None
        self.requests = 0
        self.failures = 0
        self._relay: DeltaRelay | None = None

    @property
    def ready(self) -> bool:
        return self.state == "READY"

    @property
    def description(self) -> ModelDescription:
        return self.lm.describe()

    async def load(self) -> None:
        started = time.monotonic()
        try:
            await asyncio.to_thread(self.lm.load)
            await asyncio.to_thread(self._warm_up)
            await asyncio.to_thread(self.engine.prepare)
        except Exception as error:
            self.state, self.reason = "UNAVAILABLE", f"{type(error).__name__}: {error}"
            raise
        self.model_info = self.lm.describe().to_proto()
        self.engine.start()
        self.state = "READY"
        log.info("model ready", extra={"model": self.name, "seconds": round(time.monotonic() - started, 2),
                                       "provenance": self.model_info.provenance, "device": self.model_info.device,
                                       "continuous_batching": self.engine.continuous, "kv_cache": self.engine.kv_cache,
                                       "cuda_graphs": self.engine.cuda_graphs_in_use,
                                       "token_limit": self.engine.token_limit})

    def _warm_up(self) -> None:
        import torch

        with torch.inference_mode():
            ids = torch.tensor([self.lm.encode_prompt("Once upon a time")], device=self.lm.device)
            self.lm.model(input_ids=ids)

    async def close(self) -> None:
        self.state = "UNAVAILABLE"
        await asyncio.to_thread(self.engine.close)
        await asyncio.to_thread(self.lm.close)

    # -- requests ------------------------------------------------------------------------------

    def prompt_ids(self, request: text_pb2.GenerateRequest) -> list[int]:
        """The tokens to continue, from a prompt or a chat; INVALID_ARGUMENT when there are none or too many."""
        kind = request.WhichOneof("input")
        if kind is None:
            raise InvalidArgument(("input", "a prompt or a chat is required"))
        if kind == "prompt":
            _check_text("prompt", request.prompt)
            ids = self.lm.encode_prompt(request.prompt)
        else:
            ids = self.lm.encode_chat(_chat_messages(request.chat))
        limit = self.token_limit
        if len(ids) >= limit:
            raise InvalidArgument((kind, f"{len(ids)} tokens; a sequence may hold {limit} tokens "
                                         f"({self._limited_by()}), and at least one must be left to generate"))
        return ids

    @property
    def token_limit(self) -> int:
        """Tokens a sequence may hold, prompt included: the context window, or a smaller static cache."""
        return self.engine.token_limit

    def _limited_by(self) -> str:
        if self.token_limit < self.lm.context_window:
            return f"the static KV cache's columns; the model's context window is {self.lm.context_window}"
        return "the model's context window"

    def sampling(self, sampling: text_pb2.SamplingParameters) -> SamplingParams:
        return sampling_params(sampling, self.limits, len(self.lm.tokenizer))

    async def stream(self, prompt_ids: list[int], params: SamplingParams, context=None) -> AsyncIterator[Delta]:
        """The deltas of one generation; leaving early (cancel, deadline) frees its slot at the next step."""
        if not self.ready:
            raise Unavailable(f"model {self.name} is {self.state.lower()}")
        relay = self._relay_to(asyncio.get_running_loop())
        deltas: asyncio.Queue[Delta] = asyncio.Queue()
        started = time.perf_counter()
        sequence = self.engine.submit(prompt_ids, params, lambda delta: relay.send(deltas, delta))
        self.requests += 1
        self._set_queue_gauges()
        first, reason = True, "cancelled"
        try:
            while True:
                delta = await deltas.get()
                # When tokens come faster than the stream sends them, send what has piled up as one message.
                while not (delta.finish_reason or delta.error) and not deltas.empty():
                    delta = _joined(delta, deltas.get_nowait())
                if delta.error:
                    reason = "error"
                    self.failures += 1
                    raise Unavailable(f"generation failed: {delta.error}")
                if first and self.metrics:
                    self.metrics.time_to_first_token.labels(self.name).observe(time.perf_counter() - started)
                first = False
                yield delta
                if delta.finish_reason:
                    reason = delta.finish_reason
                    return
        finally:
            if reason == "cancelled":
                self.engine.cancel(sequence)
            if self.metrics:
                self.metrics.finished_sequences.labels(self.name, reason).inc()
            self._set_queue_gauges()

    def _relay_to(self, loop: asyncio.AbstractEventLoop) -> DeltaRelay:
        if self._relay is None or self._relay.loop is not loop:
            self._relay = DeltaRelay(loop)
        return self._relay

    # -- Open Inference Protocol ---------------------------------------------------------------

    def request_from_tensors(self, tensors: dict[str, np.ndarray]) -> tuple[list[int], SamplingParams]:
        """text_input (BYTES [1]) and the optional sampling_parameters (JSON, Triton's LLM convention)."""
        prompt = _one_string(tensors["text_input"], "text_input")
        request = text_pb2.GenerateRequest(prompt=prompt)
        if "sampling_parameters" in tensors:
            request.sampling.CopyFrom(_sampling_from_json(_one_string(tensors["sampling_parameters"],
                                                                      "sampling_parameters")))
        return self.prompt_ids(request), self.sampling(request.sampling)

    # -- metrics -------------------------------------------------------------------------------

    def _observe_step(self, kind: str, rows: int) -> None:
        if not self.metrics:
            return
        if kind != "leave":
            self.metrics.generated_tokens.labels(self.name).inc(rows)
        if kind == "decode":
            self.metrics.decode_batch.labels(self.name).observe(rows)
        self._set_queue_gauges()

    def _set_queue_gauges(self) -> None:
        if self.metrics:
            self.metrics.active_sequences.labels(self.name).set(self.engine.active)
            self.metrics.waiting_sequences.labels(self.name).set(self.engine.waiting)


class DeltaRelay:
    """Hands deltas from the engine thread to the event loop, one wake-up for all a step made.

    A decode step of 32 sequences makes 32 deltas; waking the loop once per delta would cost it a
    self-pipe write and a callback each, on the same cores the model needs.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._pending: list[tuple[asyncio.Queue, Delta]] = []
        self._lock = threading.Lock()

    def send(self, queue: asyncio.Queue, delta: Delta) -> None:
        """From the engine thread; RuntimeError when the loop is closed (nobody is listening)."""
        with self._lock:
            self._pending.append((queue, delta))
            if len(self._pending) > 1:
                return  # a delivery is already scheduled and will take this one too
        try:
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:
            with self._lock:
                self._pending.clear()
            raise

    def _deliver(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for queue, delta in pending:
            queue.put_nowait(delta)


def _joined(earlier: Delta, later: Delta) -> Delta:
    return Delta(earlier.text + later.text, earlier.token_count + later.token_count, later.completion_tokens,
                 later.prompt_tokens, later.finish_reason, later.error)


# -- validation --------------------------------------------------------------------------------

def _check_text(field: str, text: str) -> None:
    if not text.strip():
        raise InvalidArgument((field, "must not be empty"))
    if len(text) > MAX_PROMPT_CHARS:
        raise InvalidArgument((field, f"{len(text)} characters exceed the limit of {MAX_PROMPT_CHARS}"))


def _chat_messages(chat: text_pb2.Chat) -> list[dict[str, str]]:
    if not chat.messages:
        raise InvalidArgument(("chat.messages", "at least one message is required"))
    messages = []
    for i, message in enumerate(chat.messages):
        if message.role not in CHAT_ROLES:
            raise InvalidArgument((f"chat.messages[{i}].role", f"{message.role!r} is not one of {', '.join(CHAT_ROLES)}"))
        _check_text(f"chat.messages[{i}].content", message.content)
        messages.append({"role": message.role, "content": message.content})
    return messages


def sampling_params(sampling: text_pb2.SamplingParameters, limits: GenerationLimits, vocabulary: int) -> SamplingParams:
    """The engine's parameters from the request's, each checked; INVALID_ARGUMENT names every bad field."""
    problems: list[tuple[str, str]] = []
    temperature = sampling.temperature if sampling.HasField("temperature") else 1.0
    if not (math.isfinite(temperature) and 0.0 <= temperature <= 2.0):
        problems.append(("sampling.temperature", f"{temperature} is outside 0..2 (0 is greedy)"))
    top_p = sampling.top_p if sampling.HasField("top_p") else 1.0
    if not (math.isfinite(top_p) and 0.0 < top_p <= 1.0):
        problems.append(("sampling.top_p", f"{top_p} is outside (0, 1]"))
    max_new = sampling.max_new_tokens if sampling.HasField("max_new_tokens") else limits.default_max_new_tokens
    if not 1 <= max_new <= limits.max_new_tokens:
        problems.append(("sampling.max_new_tokens", f"{max_new} is outside 1..{limits.max_new_tokens}"))
    stop_texts, stop_ids = _stops(sampling.stop, vocabulary, problems)
    if problems:
        raise InvalidArgument(problems)
    return SamplingParams(temperature=temperature, top_p=top_p, top_k=sampling.top_k, max_new_tokens=max_new,
                          seed=sampling.seed if sampling.HasField("seed") else None,
                          stop_texts=tuple(stop_texts), stop_token_ids=tuple(stop_ids))


def _stops(stops, vocabulary: int, problems: list) -> tuple[list[str], list[int]]:
    if len(stops) > MAX_STOPS:
        problems.append(("sampling.stop", f"{len(stops)} stop conditions; at most {MAX_STOPS}"))
        return [], []
    texts, ids = [], []
    for i, stop in enumerate(stops):
        kind = stop.WhichOneof("kind")
        field = f"sampling.stop[{i}]"
        if kind is None:
            problems.append((field, "a stop condition needs a text or a token_id"))
        elif kind == "text" and not 0 < len(stop.text) <= MAX_STOP_CHARS:
            problems.append((f"{field}.text", f"must be 1 to {MAX_STOP_CHARS} characters"))
        elif kind == "token_id" and stop.token_id >= vocabulary:
            problems.append((f"{field}.token_id", f"{stop.token_id} is not in the vocabulary (0..{vocabulary - 1})"))
        elif kind == "text":
            texts.append(stop.text)
        else:
            ids.append(stop.token_id)
    return texts, ids


def _one_string(array: np.ndarray, field: str) -> str:
    values = array.reshape(-1)
    if values.size != 1:
        raise InvalidArgument((field, f"one element expected, got {values.size}"))
    value = values[0]
    try:
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)
    except UnicodeDecodeError as error:
        raise InvalidArgument((field, f"not valid UTF-8: {error}")) from None


def _sampling_from_json(text: str) -> text_pb2.SamplingParameters:
    """Triton's LLM backends take sampling parameters as JSON: the same fields, max_tokens for max_new_tokens,
    and stop as a string or a list of strings."""
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidArgument(("sampling_parameters", f"not JSON: {error}")) from None
    if not isinstance(values, dict):
        raise InvalidArgument(("sampling_parameters", "a JSON object is expected"))
    values = dict(values)
    if "max_tokens" in values:
        values["max_new_tokens"] = values.pop("max_tokens")
    stop = values.pop("stop", [])
    if isinstance(stop, str):
        stop = [stop]
    try:
        sampling = json_format.ParseDict(values, text_pb2.SamplingParameters())
    except json_format.ParseError as error:
        raise InvalidArgument(("sampling_parameters", str(error))) from None
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise InvalidArgument(("sampling_parameters.stop", "a string or a list of strings"))
    sampling.stop.extend(text_pb2.StopCondition(text=s) for s in stop)
    return sampling


class GeneratedSummaries:
    """Abstractive summaries written by the generation model (TextService.Summarize's writer).

    Only worth enabling with an instruction-following model (MODALMESH_SUMMARY_WRITER=generation):
    the default storyteller writes stories, not summaries.
    """

    DEFAULT_WORDS = 80
    CHARS_PER_TOKEN = 3  # a cautious average, so a chunk's prompt fits the context window

    def __init__(self, generator: ServedGenerator):
        self.generator = generator

    @property
    def max_input_chars(self) -> int:
        room = self.generator.token_limit - 2 * self.DEFAULT_WORDS - 64  # the answer and the instructions
        return max(500, room * self.CHARS_PER_TOKEN)

    async def write_summary(self, text: str, max_words: int, context) -> tuple[str, object]:
        words = max_words or self.DEFAULT_WORDS
        instruction = f"Summarize the following text in at most {words} words.\n\n{text}"
        request = text_pb2.GenerateRequest(chat=text_pb2.Chat(messages=[
            text_pb2.ChatMessage(role="user", content=instruction)]))
        prompt_ids = self.generator.prompt_ids(request)
        room = self.generator.token_limit - len(prompt_ids)
        params = SamplingParams(temperature=0.0, max_new_tokens=max(1, min(2 * words + 16, room - 1,
                                                                          self.generator.limits.max_new_tokens)))
        summary = "".join([delta.text async for delta in self.generator.stream(prompt_ids, params, context)])
        return summary.strip(), self.generator.model_info
