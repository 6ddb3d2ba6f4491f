"""Summaries of a text: extractive on the sentence encoder, abstractive through a pluggable writer.

Extractive (the default): the text is split into sentences, every sentence is embedded by the
service's own served encoder (the batcher that Embed uses, so the rows batch together with Embed
traffic), and sentences are ranked by centrality (LexRank: PageRank over the cosine-similarity
graph) and chosen by maximal marginal relevance, so the summary covers different parts of the
text instead of repeating its most central point. Long texts are summarised map-reduce: each
chunk of sentences gives its candidates, and the candidates of all chunks are ranked again
(rounds repeat until they fit one chunk), so no similarity matrix grows past a chunk.

Abstractive: a ``SummaryWriter`` (a generation model) writes the summary; texts longer than its
input are summarised chunk by chunk and the chunk summaries summarised again. No writer is
built in: ``TextServicer(..., summary_writer=...)`` plugs one in.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from modalmesh.v1 import common_pb2, text_pb2
from services.runtime.errors import InvalidArgument

MAX_TEXT_CHARS = 1_000_000
DEFAULT_MAX_SENTENCES = 3
MAX_SENTENCES = 50
MAX_SENTENCE_CHARS = 2_000      # past this a "sentence" (a table, a log, unpunctuated text) is cut at a space
MIN_WORDS = 3                   # shorter sentences ("Yes.", "Fig. 2.") are not candidates when others are
CHUNK_SENTENCES = 200           # map-reduce: sentences per chunk (bounds the similarity matrix)
CHUNK_CHARS = 40_000            # ... and characters per chunk of the input
MIN_CANDIDATES_PER_CHUNK = 5    # candidates each chunk passes on, at least (max_sentences if more)
MMR_LAMBDA = 0.5                # relevance against redundancy: 1 ranks by centrality alone
DUPLICATE_SIMILARITY = 0.95     # a sentence this close to a chosen one is never chosen too
PAGERANK_DAMPING = 0.85
DEFAULT_WRITER_INPUT_CHARS = 8_000
CHUNK_SUMMARY_WORDS = 150       # abstractive map step: words per chunk summary, at least
WRITER_CONCURRENCY = 4          # chunk summaries written at once (the generation engine batches them)
MAX_REDUCE_ROUNDS = 8

EXTRACTIVE = text_pb2.SUMMARY_METHOD_EXTRACTIVE
ABSTRACTIVE = text_pb2.SUMMARY_METHOD_ABSTRACTIVE
UNSPECIFIED = text_pb2.SUMMARY_METHOD_UNSPECIFIED


# -- the pluggable abstractive backend ---------------------------------------------------------------


class SummaryWriter(Protocol):
    """A generation model that writes summaries (the abstractive backend).

    ``write_summary`` returns the summary of ``text`` in at most about ``max_words`` words
    (0: its own choice of length) and the ModelInfo of the model that wrote it. It may raise
    ``services.runtime.errors`` errors (they become the call's status). An optional attribute
    ``max_input_chars`` (default 8,000) is the longest text it takes at once; longer texts are
    summarised chunk by chunk first.
    """

    async def write_summary(self, text: str, max_words: int, context: Any) -> tuple[str, common_pb2.ModelInfo]: ...


# -- sentences -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sentence:
    """A sentence of the text: its words with whitespace runs made single spaces, and where it lies."""

    text: str
    start: int
    end: int

    @property
    def words(self) -> int:
        return len(self.text.split())


# Abbreviations after which a period never ends a sentence (compared lower-case, without the final period).
_NEVER_END = frozenset("""
    mr mrs ms mx dr prof rev hon st mt messrs mme mlle gen col lt sgt capt cmdr adm gov sen rep pres supt insp
    e.g i.e cf vs viz approx ca al dept univ assn est u.s u.k u.n e.u u.s.a
    jan feb mar apr jun jul aug sep sept oct nov dec
""".split())
# Abbreviations that end no sentence when a number follows: "No. 5", "Fig. 3", "pp. 12-14".
_BEFORE_NUMBER = frozenset(
    "no nos nr fig figs vol vols p pp ch chap sec sect art eq eqs ref refs tab para pt ver v".split())

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_LINE = re.compile(r"[^\n]+")
_LIST_ITEM = re.compile(r"\s*(?:[-*•‣◦▪–—]|\(?\d{1,3}[.)]|\(?[a-z][.)])\s+")
_TERMINATOR = re.compile(r"(?:[.!?…]+|[。！？]+)[\"'”’»)\]」』]*")
_ITEM_NUMBER = re.compile(r"\(?(?:\d{1,3}|[A-Za-z])")
_CJK_END = re.compile(r"[。！？]")
_OPENERS = "\"'“‘«([{¿¡"
_WORD_CHAR = re.compile(r"\w")
_NEXT_CHAR = re.compile(r"[\s\"'“‘«(\[{¿¡]*(\S)")   # the first character of the next word, past openers


def split_sentences(text: str) -> list[Sentence]:
    """Sentences of a text, in order.

    Paragraphs (blank lines), list items and heading lines end sentences; within a paragraph a
    single newline is a space (wrapped text). A period ends a sentence only before whitespace and
    a word that does not start in lower case, and not after a known abbreviation ("Dr.", "e.g.")
    or an initial ("J. Smith"); decimals and dotted names ("3.5", "example.com") never split.
    Closing quotes and brackets stay with their sentence. Pieces without a letter or digit are
    dropped; a run-on longer than 2,000 characters is cut at a space.
    """
    sentences: list[Sentence] = []
    for seg_start, seg_end in _segments(text):
        segment = text[seg_start:seg_end]
        start = 0
        for match in _TERMINATOR.finditer(segment):
            if _ends_sentence(segment, match, start):
                _emit(sentences, text, seg_start + start, seg_start + match.end())
                start = match.end()
        _emit(sentences, text, seg_start + start, seg_end)
    return sentences


def _segments(text: str):
    """Spans that no sentence crosses: paragraphs, cut before list items and after heading lines."""
    position = 0
    for separator in [*_PARAGRAPH_BREAK.finditer(text), None]:
        end = separator.start() if separator else len(text)
        lines = [(position + m.start(), position + m.end()) for m in _LINE.finditer(text[position:end])]
        if lines:
            seg_start = lines[0][0]
            for (prev_start, prev_end), (line_start, _) in zip(lines, lines[1:]):
                line = text[line_start:line_start + 200]
                if _LIST_ITEM.match(line) or (prev_start == seg_start   # only a segment's first line is a heading
                                              and _is_heading(text[prev_start:prev_end], line)):
                    yield seg_start, prev_end
                    seg_start = line_start
            yield seg_start, lines[-1][1]
        if separator:
            position = separator.end()


def _is_heading(line: str, next_line: str) -> bool:
    """A short line without closing punctuation, followed by a capitalised line: "Results\\nThe pump..."."""
    line = line.strip()
    first = next_line.lstrip()[:1]
    return (bool(line) and len(line.split()) <= 8 and line[-1].isalnum()
            and (first.isupper() or first.isdigit()))


def _ends_sentence(segment: str, match: re.Match, sentence_start: int) -> bool:
    end = match.end()
    if _CJK_END.search(match.group()):
        return True
    if end < len(segment) and not segment[end].isspace():
        return False   # "3.5", "example.com", "e.g.,"
    if match.start() - sentence_start <= 8 and _ITEM_NUMBER.fullmatch(segment[sentence_start:match.start()].strip()):
        return False   # the number or letter of a list item: "1. Open the valve"
    following = _NEXT_CHAR.match(segment, end)
    if not following:
        return True
    first = following.group(1)
    if first.islower() or first in ",;:":
        return False   # '"Stop!" she said', "approx. five", "etc., and"
    if "." not in match.group() or match.group().startswith(("..", "…")):
        return True    # "!", "?" and an ellipsis before a capital end the sentence
    before = segment[max(0, match.start() - 40):match.start()].rsplit(None, 1)   # (no abbreviation is longer)
    word = before[-1].lstrip(_OPENERS) if before else ""
    lower = word.lower()
    if lower in _NEVER_END:
        return False
    if lower in _BEFORE_NUMBER and first.isdigit():
        return False
    if len(word) == 1 and word.isupper():
        return False   # an initial: "J. R. R. Tolkien"
    return True


def _emit(sentences: list[Sentence], text: str, start: int, end: int) -> None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    item = _LIST_ITEM.match(text, start, end)
    if item and item.end() < end:   # "- ", "1. ", "a) ": the marker is not part of the sentence
        start = item.end()
    while end - start > MAX_SENTENCE_CHARS:
        cut = text.rfind(" ", start + MAX_SENTENCE_CHARS // 2, start + MAX_SENTENCE_CHARS)
        cut = cut if cut > start else start + MAX_SENTENCE_CHARS
        _emit(sentences, text, start, cut)
        start = cut
        while start < end and text[start].isspace():
            start += 1
    if end > start and _WORD_CHAR.search(text, start, end):
        sentences.append(Sentence(" ".join(text[start:end].split()), start, end))


# -- ranking ----------------------------------------------------------------------------------------------


def centrality(vectors: np.ndarray, damping: float = PAGERANK_DAMPING, tolerance: float = 1e-8,
               max_iterations: int = 200) -> np.ndarray:
    """LexRank: PageRank over the graph of positive cosine similarities, scaled so the top is 1.

    ``vectors`` are L2-normalised rows; the result has one score per row, in [0, 1].
    """
    n = len(vectors)
    if n <= 1:
        return np.ones(n)
    weights = np.clip(vectors @ vectors.T, 0.0, None).astype(np.float64)
    np.fill_diagonal(weights, 0.0)
    totals = weights.sum(axis=1, keepdims=True)
    transition = np.where(totals > 0, weights / np.where(totals > 0, totals, 1.0), 1.0 / n)
    rank = np.full(n, 1.0 / n)
    for _ in range(max_iterations):
        updated = (1.0 - damping) / n + damping * (rank @ transition)
        done = np.abs(updated - rank).sum() < tolerance
        rank = updated
        if done:
            break
    return rank / rank.max()


def select_mmr(vectors: np.ndarray, scores: np.ndarray, k: int, words: np.ndarray | None = None,
               max_words: int = 0, diversity: float = 1.0 - MMR_LAMBDA) -> list[int]:
    """Maximal marginal relevance: up to ``k`` rows, each the best trade-off of its score against its
    similarity to the rows already chosen; with ``max_words``, only rows that still fit the budget.
    Near-duplicates of a chosen row are never chosen. Returns rows in the order they were chosen."""
    n = len(vectors)
    available = np.ones(n, dtype=bool)
    redundancy = np.zeros(n)
    chosen: list[int] = []
    used = 0
    while len(chosen) < k:
        fits = available if not max_words else available & (used + words <= max_words)
        if not fits.any():
            break
        value = np.where(fits, (1.0 - diversity) * scores - diversity * redundancy, -np.inf)
        best = int(np.argmax(value))
        chosen.append(best)
        used += int(words[best]) if words is not None else 0
        similarity = vectors @ vectors[best]
        redundancy = np.maximum(redundancy, np.clip(similarity, 0.0, None))
        available &= similarity < DUPLICATE_SIMILARITY
        available[best] = False
    return chosen


def chunk_spans(lengths: Sequence[int], positions: Sequence[int], max_sentences: int,
                max_chars: int = 0) -> list[list[int]]:
    """Consecutive groups of ``positions`` (indexes into ``lengths``, the sentences' characters): at most
    ``max_sentences`` each and, when ``max_chars`` is set, at most that many characters (one sentence at least)."""
    groups: list[list[int]] = []
    current: list[int] = []
    chars = 0
    for position in positions:
        length = lengths[position]
        if current and (len(current) >= max_sentences or (max_chars and chars + length > max_chars)):
            groups.append(current)
            current, chars = [], 0
        current.append(position)
        chars += length + 1
    if current:
        groups.append(current)
    return groups


# -- the summarizer ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChosenSentence:
    index: int
    text: str
    score: float


@dataclass(frozen=True)
class Summary:
    text: str
    method: int
    sentences: list[ChosenSentence]
    input_sentences: int
    chunks: int
    model: common_pb2.ModelInfo


class Summarizer:
    """Summaries on a served sentence encoder (a ``ServedModel`` whose adapter tokenizes texts into rows
    and whose rows become L2-normalised vectors), with an optional abstractive ``writer``."""

    def __init__(self, embedder, writer: SummaryWriter | None = None, chunk_sentences: int = CHUNK_SENTENCES,
                 chunk_chars: int = CHUNK_CHARS):
        if chunk_sentences <= MAX_SENTENCES:
            raise ValueError(f"chunk_sentences must exceed {MAX_SENTENCES} so that map-reduce rounds shrink")
        self.embedder = embedder
        self.writer = writer
        self.chunk_sentences = chunk_sentences
        self.chunk_chars = chunk_chars

    async def summarize(self, text: str, method: int = UNSPECIFIED, max_sentences: int = 0, max_words: int = 0,
                        context=None) -> Summary:
        method = self.check(text, method, max_sentences)
        max_sentences = max_sentences or DEFAULT_MAX_SENTENCES
        sentences = await _off_loop(split_sentences, text) if len(text) > 20_000 else split_sentences(text)
        if not sentences:
            raise InvalidArgument(("text", "no sentence found: the text has no letters or digits"))
        if method == ABSTRACTIVE:
            return await self._abstractive(text, sentences, max_words, context)
        return await self._extractive(sentences, max_sentences, max_words, context)

    def check(self, text: str, method: int, max_sentences: int) -> int:
        """Refuse what cannot be summarised; the method to use (UNSPECIFIED resolved)."""
        violations = []
        if not text.strip():
            violations.append(("text", "empty text: give 1 to 1,000,000 characters"))
        elif len(text) > MAX_TEXT_CHARS:
            violations.append(("text", f"{len(text)} characters exceed the limit of {MAX_TEXT_CHARS}"))
        if max_sentences > MAX_SENTENCES:
            violations.append(("max_sentences", f"{max_sentences} exceeds the limit of {MAX_SENTENCES} "
                                                f"(0 means {DEFAULT_MAX_SENTENCES})"))
        if method not in text_pb2.SummaryMethod.values():
            violations.append(("method", f"unknown summary method {method}"))
        elif method == ABSTRACTIVE and self.writer is None:
            violations.append(("method", "no generation model is configured for abstractive summaries; "
                                         "use SUMMARY_METHOD_EXTRACTIVE or leave the method unspecified"))
        if violations:
            raise InvalidArgument(violations)
        if method == UNSPECIFIED:
            return ABSTRACTIVE if self.writer is not None else EXTRACTIVE
        return method

    # -- extractive --------------------------------------------------------------------------------------

    async def _extractive(self, sentences: list[Sentence], max_sentences: int, max_words: int, context) -> Summary:
        all_words = np.array([s.words for s in sentences])
        pool = [i for i, n in enumerate(all_words) if n >= MIN_WORDS] or list(range(len(sentences)))
        texts = [sentences[i].text for i in pool]
        words = all_words[pool]
        vectors = await self.embed(texts, context)   # row j is sentence pool[j]
        lengths = [len(t) for t in texts]
        rank = functools.partial(self._rank, vectors, words, lengths, max_sentences, max_words)
        current, scores, chosen, chunks = await _off_loop(rank) if len(pool) > 400 else rank()
        picked = [ChosenSentence(pool[current[j]], texts[current[j]], float(scores[j])) for j in chosen]
        if not picked:   # no sentence fits max_words: the best one, cut to the budget
            best = int(np.argmax(scores))
            picked = [ChosenSentence(pool[current[best]], cut_words(texts[current[best]], max_words),
                                     float(scores[best]))]
        picked.sort(key=lambda s: s.index)
        return Summary(text=" ".join(s.text for s in picked), method=EXTRACTIVE, sentences=picked,
                       input_sentences=len(sentences), chunks=chunks, model=self.embedder.model_info)

    def _rank(self, vectors: np.ndarray, words: np.ndarray, lengths: list[int], max_sentences: int,
              max_words: int) -> tuple[list[int], np.ndarray, list[int], int]:
        """Map-reduce: each chunk passes on its best candidates until the candidates fit one chunk; then
        centrality and MMR over those. Returns the final rows, their scores, the chosen ones and the chunks."""
        current = list(range(len(vectors)))
        groups = chunk_spans(lengths, current, self.chunk_sentences, self.chunk_chars)
        chunks = len(groups)
        per_chunk = max(max_sentences, MIN_CANDIDATES_PER_CHUNK)
        while len(groups) > 1:
            candidates = []
            for group in groups:
                rows = vectors[group]
                candidates += [group[j] for j in select_mmr(rows, centrality(rows), per_chunk)]
            current = sorted(candidates)
            groups = chunk_spans(lengths, current, self.chunk_sentences)
        rows = vectors[current]
        scores = centrality(rows)
        return current, scores, select_mmr(rows, scores, max_sentences, words[current], max_words), chunks

    async def embed(self, texts: Sequence[str], context=None) -> np.ndarray:
        """One L2-normalised vector per text, through the served model's batcher: each distinct text once,
        in requests of at most the model's max batch size, a few in flight so the model never idles but
        other callers' requests still join the next batches. Texts of similar length go together (less padding)."""
        unique = sorted(dict.fromkeys(texts), key=len)
        size = self.embedder.batcher.config.max_batch_size
        in_flight = self.embedder.batcher.config.instances + 1
        parts = await run_bounded([functools.partial(self._embed_batch, unique[i:i + size], context)
                                   for i in range(0, len(unique), size)], in_flight)
        vectors = np.concatenate(parts)
        where = {text: i for i, text in enumerate(unique)}
        return vectors[[where[t] for t in texts]]

    async def _embed_batch(self, texts: list[str], context) -> np.ndarray:
        rows = self.embedder.adapter.tokenize(texts)   # cut to the model's window: a sentence rarely needs more
        return np.asarray(await self.embedder.infer(rows, context), dtype=np.float32)

    # -- abstractive -------------------------------------------------------------------------------------

    async def _abstractive(self, text: str, sentences: list[Sentence], max_words: int, context) -> Summary:
        limit = int(getattr(self.writer, "max_input_chars", DEFAULT_WRITER_INPUT_CHARS))
        pieces = _pack(text, sentences, limit)
        chunks = len(pieces)
        chunk_words = max(max_words, CHUNK_SUMMARY_WORDS)
        for _ in range(MAX_REDUCE_ROUNDS):
            if len(pieces) <= 1:
                break
            written = await run_bounded([functools.partial(self.writer.write_summary, piece, chunk_words, context)
                                         for piece in pieces], WRITER_CONCURRENCY)
            joined = "\n\n".join(summary.strip() for summary, _ in written if summary.strip())
            if len(joined) >= sum(len(p) for p in pieces):   # not getting shorter: keep what fits
                joined = joined[:limit]
            pieces = _pack(joined, split_sentences(joined), limit) or [joined[:limit]]
        summary, model = await self.writer.write_summary(pieces[0][:limit], max_words, context)
        return Summary(text=cut_words(summary.strip(), max_words), method=ABSTRACTIVE, sentences=[],
                       input_sentences=len(sentences), chunks=chunks, model=model)


def _pack(text: str, sentences: Sequence[Sentence], limit: int) -> list[str]:
    """The text in pieces of whole sentences (as written, paragraphs kept), each at most ``limit`` characters."""
    if len(text.strip()) <= limit:
        return [text.strip()] if text.strip() else []
    pieces, first = [], None
    for i, sentence in enumerate(sentences):
        if first is None:
            first = sentence
        elif sentence.end - first.start > limit:
            pieces.append(text[first.start:sentences[i - 1].end])
            first = sentence
    if first is not None:
        pieces.append(text[first.start:sentences[-1].end])
    return pieces


def cut_words(text: str, max_words: int) -> str:
    """The text, or its first ``max_words`` words and an ellipsis (0: no limit)."""
    words = text.split()
    if not max_words or len(words) <= max_words:
        return text
    return " ".join(words[:max_words]).rstrip(",;:") + "…"


# -- helpers ----------------------------------------------------------------------------------------------


async def run_bounded(jobs: Sequence[Callable[[], Awaitable[Any]]], limit: int) -> list[Any]:
    """Run the jobs with at most ``limit`` in flight; results in job order. The first failure cancels the rest."""
    results: list[Any] = []
    pending: collections.deque[asyncio.Future] = collections.deque()
    try:
        for job in jobs:
            if len(pending) >= limit:
                results.append(await pending.popleft())
            pending.append(asyncio.ensure_future(job()))
        while pending:
            results.append(await pending.popleft())
    finally:
        for task in pending:
            task.cancel()
        if pending:   # wait for the cancelled ones, so none outlives the call or goes unretrieved
            await asyncio.gather(*pending, return_exceptions=True)
    return results


async def _off_loop(function: Callable[..., Any], *args) -> Any:
    """CPU-bound text work on a thread, so the event loop keeps batching other requests meanwhile."""
    return await asyncio.to_thread(function, *args)
