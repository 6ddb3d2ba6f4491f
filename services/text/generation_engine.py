"""Continuous batching for token generation: every decode step runs all active sequences at once.

One engine thread owns the model. Between decode steps it admits waiting requests (their
prompts are prefilled together, then their key/value caches join the running batch) and drops
finished or cancelled sequences (their rows leave the batch). Each sequence keeps its own rows of
the key/value cache (services/text/decode_batch.py: a DynamicCache, or preallocated buffers whose
decode steps replay CUDA graphs on a GPU). This is iteration-level scheduling as vLLM does it, on
Hugging Face models, without paged memory.

Models whose cache is not a plain per-layer key/value list (sliding windows, recurrent layers)
cannot merge caches of different lengths; for them the engine admits new requests only when the
batch is empty (static batching).
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from services.runtime.errors import ResourceExhausted, Unavailable
from services.text.decode_batch import DynamicBatch, StaticBatch
from services.text.language_model import CausalLanguageModel

log = logging.getLogger(__name__)

PREFILL_BATCH = 16  # prompts prefilled together, at most
DEFAULT_CACHE_TOKENS = 4096  # a static cache's columns when the model's context window is longer


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: no limit
    max_new_tokens: int = 256
    seed: int | None = None
    stop_texts: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Delta:
    """What the engine reports to a stream: new text, and on the last one why it ended."""

    text: str
    token_count: int
    completion_tokens: int
    prompt_tokens: int
    finish_reason: str | None = None  # "stop" or "length" on the last delta
    error: str | None = None  # the engine failed; the stream ends with this


Sink = Callable[[Delta], None]


@dataclass
class Sequence:
    """One request's state inside the engine."""

    id: int
    prompt_ids: list[int]
    params: SamplingParams
    sink: Sink
    rng: torch.Generator | None = None
    generated: list[int] = field(default_factory=list)
    cancelled: bool = False
    finished: bool = False
    steps: int = 0  # model executions that computed a token for this sequence
    text: str = ""  # the completion decoded so far
    sent_chars: int = 0  # of text, already sent
    unsent_tokens: int = 0  # tokens whose text has not been sent yet
    prefix_offset: int = 0  # incremental detokenisation window (see _append_text)
    read_offset: int = 0


@dataclass
class EngineStats:
    steps: int = 0
    tokens: int = 0
    prompts: int = 0
    finished: int = 0
    cancelled: int = 0
    step_ns: int = 0
    first_token_ns: int = 0


class GenerationEngine:
    def __init__(self, lm: CausalLanguageModel, max_active: int = 32, max_waiting: int = 256,
                 on_step: Callable[[str, int], None] | None = None, continuous: bool = True,
                 kv_cache: str = "auto", cache_tokens: int = 0, cuda_graphs: bool = True):
        self.lm = lm
        self.want_continuous = continuous  # False: static batching, for comparison
        self.want_kv_cache = kv_cache  # "dynamic", "static", or "auto" (static on a GPU)
        self.cache_tokens = cache_tokens  # a static cache's columns; 0: the context window, up to 4096
        self.cuda_graphs = cuda_graphs
        self.max_active = max_active
        self.max_waiting = max_waiting
        # ("prefill" or "decode", rows) after every model execution (a token per row), and
        # ("leave", rows) when finished or cancelled sequences have left the batch
        self.on_step = on_step
        self.stats = EngineStats()
        self.continuous = True
        self._ids = itertools.count(1)
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._closing = False
        self._thread: threading.Thread | None = None
        # the running batch: one row per active sequence, in the order of the batch's rows
        self._active: list[Sequence] = []
        self._batch: DynamicBatch | StaticBatch | None = None

    # -- the event-loop side -------------------------------------------------------------------

    def prepare(self) -> None:
        """Choose the batch layout, allocate it and, on a GPU, capture its decode steps (seconds)."""
        mergeable = self._supports_merging()
        self.continuous = self.want_continuous and mergeable
        self._batch = self._static_batch() if mergeable else None
        if self._batch is None:
            self._batch = DynamicBatch(self.lm, trim_padding=self.continuous)

    @property
    def kv_cache(self) -> str:
        return "static" if isinstance(self._batch, StaticBatch) else "dynamic"

    @property
    def cuda_graphs_in_use(self) -> bool:
        return bool(self._batch and self._batch.graphed)

    @property
    def token_limit(self) -> int:
        """The most tokens a sequence may hold, prompt included."""
        return self._batch.token_limit if self._batch else self.lm.context_window

    def start(self) -> None:
        if self._batch is None:
            self.prepare()
        self._thread = threading.Thread(target=self._run, name="generation-engine", daemon=True)
        self._thread.start()

    def submit(self, prompt_ids: list[int], params: SamplingParams, sink: Sink) -> Sequence:
        """Queue a sequence; ``sink`` receives its deltas from the engine thread."""
        rng = None
        if params.temperature > 0:
            rng = torch.Generator(device=self.lm.device)
            rng.manual_seed(params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
        sequence = Sequence(next(self._ids), list(prompt_ids), params, sink, rng)
        with self._lock:
            if self._closing:
                raise Unavailable("the generator is shutting down")
            if len(self._waiting) >= self.max_waiting:
                raise ResourceExhausted(f"{len(self._waiting)} generation requests are already waiting "
                                        f"(max_waiting {self.max_waiting}); retry later")
            self._waiting.append(sequence)
            self._wakeup.notify()
        return sequence

    def cancel(self, sequence: Sequence) -> None:
        """Stop generating for ``sequence`` before the next decode step (its rows leave the batch)."""
        with self._lock:
            sequence.cancelled = True
            if sequence in self._waiting:
                self._waiting.remove(sequence)
            self._wakeup.notify()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return len(self._active)

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._wakeup.notify()
        if self._thread:
            self._thread.join(timeout=30)

    # -- the engine thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            admitted = self._next_admissions()
            if admitted is None:
                return
            try:
                with torch.inference_mode():
                    if admitted:
                        self._prefill(admitted)
                    self._drop_done()
                    if self._active:
                        self._decode_step()
                        self._drop_done()
            except Exception as error:  # the batch is lost; tell every stream rather than hang it
                log.exception("generation step failed")
                self._fail_all(f"{type(error).__name__}: {error}", admitted)

    def _next_admissions(self) -> list[Sequence] | None:
        """Waiting sequences to admit now ([] to just step); None when the engine should stop."""
        with self._lock:
            while not self._waiting and not self._active and not self._closing:
                self._wakeup.wait()
            if self._closing:
                for sequence in list(self._waiting) + self._active:
                    sequence.cancelled = True
                    self._emit(sequence, Delta("", 0, len(sequence.generated), len(sequence.prompt_ids),
                                               error="the generator is shutting down"))
                return None
            if not self.continuous and self._active:
                return []
            room = min(self.max_active - len(self._active), PREFILL_BATCH)
            admitted = []
            while self._waiting and len(admitted) < room:
                admitted.append(self._waiting.popleft())
            return admitted

    def _prefill(self, sequences: list[Sequence]) -> None:
        started = time.perf_counter_ns()
        width = max(len(s.prompt_ids) for s in sequences)
        ids = torch.full((len(sequences), width), self.lm.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            ids[row, width - len(sequence.prompt_ids):] = torch.tensor(sequence.prompt_ids)
            mask[row, width - len(sequence.prompt_ids):] = 1
        ids, mask = ids.to(self.lm.device), mask.to(self.lm.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = self._new_cache()
        logits, cache = self.lm.forward(ids, None if bool(mask.all()) else mask, positions, cache, logits_to_keep=1)
        tokens = self._sample(logits[:, -1, :], sequences)
        self._batch.join(cache, mask, tokens)
        self._active.extend(sequences)
        self.stats.prompts += len(sequences)
        self.stats.first_token_ns += (time.perf_counter_ns() - started) * len(sequences)
        self._accept(sequences, tokens)
        if self.on_step:
            self.on_step("prefill", len(sequences))

    def _decode_step(self) -> None:
        started = time.perf_counter_ns()
        rows = len(self._active)
        tokens = self._sample(self._batch.decode(), self._active)
        self._batch.set_next_tokens(tokens)
        self.stats.steps += 1
        self.stats.step_ns += time.perf_counter_ns() - started
        self._accept(self._active, tokens)
        if self.on_step:
            self.on_step("decode", rows)

    # -- the batch's key/value cache -------------------------------------------------------------

    def _new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.lm.model.config)

    def _supports_merging(self) -> bool:
        """Whether every layer's cache is a plain key/value list that can be padded and joined."""
        from transformers.cache_utils import DynamicLayer

        return all(type(layer) is DynamicLayer for layer in self._new_cache().layers)

    def _static_batch(self) -> StaticBatch | None:
        """Preallocated rows when asked for (or on a GPU, for "auto") and the model allows them."""
        wanted = self.want_kv_cache == "static" or (self.want_kv_cache == "auto" and self.lm.device.type == "cuda")
        if not wanted:
            return None
        refusal = StaticBatch.supports(self.lm)
        if refusal:
            log.warning("static KV cache unavailable; using a dynamic one", extra={"reason": refusal})
            return None
        capacity = min(self.lm.context_window, self.cache_tokens or DEFAULT_CACHE_TOKENS)
        batch = StaticBatch(self.lm, self.max_active, capacity, cuda_graphs=self.cuda_graphs)
        try:
            with torch.inference_mode():  # a one-token prefill shows the shapes of the model's cache
                ids = torch.tensor([[self.lm.pad_token_id]], device=self.lm.device)
                _, sample = self.lm.forward(ids, None, torch.zeros_like(ids), self._new_cache())
                batch.allocate(sample)
        except (RuntimeError, TypeError) as error:  # out of memory, or a transformers without this cache API
            log.warning("static KV cache unavailable; using a dynamic one", extra={"reason": f"{error}"})
            return None
        log.info("static KV cache", extra={"rows": self.max_active, "columns": capacity,
                                           "mib": round(batch.bytes / 2**20, 1), "cuda_graphs": batch.graphed})
        return batch

    def _drop_done(self) -> None:
        """Remove finished and cancelled rows, then the padding columns nobody needs any more."""
        keep = [i for i, s in enumerate(self._active) if not (s.finished or s.cancelled)]
        if len(keep) == len(self._active):
            return
        for sequence in self._active:
            if sequence.cancelled and not sequence.finished:
                self.stats.cancelled += 1
                log.info("generation cancelled", extra={"sequence": sequence.id, "steps": sequence.steps,
                                                        "tokens": len(sequence.generated)})
        left = len(self._active) - len(keep)
        self._active = [self._active[row] for row in self._batch.keep(keep)]
        if self.on_step:
            self.on_step("leave", left)

    # -- tokens ---------------------------------------------------------------------------------

    def _sample(self, logits: torch.Tensor, sequences: list[Sequence]) -> torch.Tensor:
        """The next token of each row: greedy where temperature is 0, else top-k/top-p sampling."""
        logits = logits.float()
        tokens = logits.argmax(dim=-1)
        for row, sequence in enumerate(sequences):
            params = sequence.params
            if params.temperature <= 0:
                continue
            scores = logits[row] / params.temperature
            if 0 < params.top_k < scores.shape[-1]:
                kth = torch.topk(scores, params.top_k).values[-1]
                scores = scores.masked_fill(scores < kth, float("-inf"))
            if params.top_p < 1.0:
                scores = _nucleus(scores, params.top_p)
            probabilities = torch.softmax(scores, dim=-1)
            tokens[row] = torch.multinomial(probabilities, 1, generator=sequence.rng)[0]
        return tokens

    def _accept(self, sequences: list[Sequence], tokens: torch.Tensor) -> None:
        """Record each sequence's new token, send its text, and finish it when a stop is met."""
        for sequence, token in zip(sequences, tokens.tolist()):
            if sequence.cancelled or sequence.finished:
                continue
            sequence.steps += 1
            self.stats.tokens += 1
            params = sequence.params
            if token in self.lm.eos_token_ids or token in params.stop_token_ids:
                self._flush_text(sequence)
                self._finish(sequence, "stop")
                continue
            sequence.generated.append(token)
            sequence.unsent_tokens += 1
            stop_at = self._append_text(sequence)
            if stop_at is not None:
                sequence.text = sequence.text[:max(stop_at, sequence.sent_chars)]
                self._finish(sequence, "stop")
            elif len(sequence.generated) >= params.max_new_tokens or self._out_of_context(sequence):
                self._flush_text(sequence)
                self._finish(sequence, "length")
            else:
                self._send_safe_text(sequence)

    def _append_text(self, sequence: Sequence) -> int | None:
        """Decode the new token into sequence.text; the index where a stop text begins, if one appeared.

        Decoding only a window of recent tokens keeps this O(1) per token; a token that ends in the
        middle of a UTF-8 character decodes to U+FFFD and waits for the next one.
        """
        ids = sequence.generated
        before = self.lm.decode(ids[sequence.prefix_offset:sequence.read_offset])
        after = self.lm.decode(ids[sequence.prefix_offset:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            sequence.text += after[len(before):]
            sequence.prefix_offset, sequence.read_offset = sequence.read_offset, len(ids)
        if not sequence.params.stop_texts:
            return None
        longest = max(map(len, sequence.params.stop_texts))
        search_from = max(0, sequence.sent_chars - longest)
        hits = [i for i in (sequence.text.find(stop, search_from) for stop in sequence.params.stop_texts) if i >= 0]
        return min(hits) if hits else None

    def _flush_text(self, sequence: Sequence) -> None:
        """At the end, the text of tokens still waiting for the rest of a character, as it decodes."""
        ids = sequence.generated
        settled = self.lm.decode(ids[sequence.prefix_offset:sequence.read_offset])
        sequence.text += self.lm.decode(ids[sequence.prefix_offset:])[len(settled):]
        sequence.prefix_offset = sequence.read_offset = len(ids)

    def _send_safe_text(self, sequence: Sequence) -> None:
        """Send the text that cannot be the beginning of a stop text."""
        end = len(sequence.text) - _held_back(sequence.text, sequence.params.stop_texts)
        if end > sequence.sent_chars:
            self._emit(sequence, Delta(sequence.text[sequence.sent_chars:end], sequence.unsent_tokens,
                                       len(sequence.generated), len(sequence.prompt_ids)))
            sequence.sent_chars, sequence.unsent_tokens = end, 0

    def _finish(self, sequence: Sequence, reason: str) -> None:
        sequence.finished = True
        self.stats.finished += 1
        self._emit(sequence, Delta(sequence.text[sequence.sent_chars:], sequence.unsent_tokens,
                                   len(sequence.generated), len(sequence.prompt_ids), finish_reason=reason))

    def _out_of_context(self, sequence: Sequence) -> bool:
        return len(sequence.prompt_ids) + len(sequence.generated) >= self.token_limit

    def _emit(self, sequence: Sequence, delta: Delta) -> None:
        try:
            sequence.sink(delta)
        except RuntimeError:  # the stream's event loop is gone: nobody is listening
            sequence.cancelled = True

    def _fail_all(self, message: str, admitted: list[Sequence]) -> None:
        """End every stream of the batch, and those being admitted, with ``message``."""
        for sequence in self._active + [s for s in admitted if s not in self._active]:
            if not sequence.finished:
                sequence.finished = True
                self._emit(sequence, Delta("", 0, len(sequence.generated), len(sequence.prompt_ids), error=message))
        self._active = []
        self._batch.clear()


def _nucleus(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches top_p."""
    ordered, order = torch.sort(scores, descending=True)
    probabilities = torch.softmax(ordered, dim=-1)
    before = probabilities.cumsum(dim=-1) - probabilities  # mass of the tokens ranked above each one
    ordered = ordered.masked_fill(before >= top_p, float("-inf"))
    return torch.empty_like(scores).scatter_(0, order, ordered)


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of ``text`` could be the start of a stop text."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest
