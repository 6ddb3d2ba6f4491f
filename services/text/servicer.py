"""modalmesh.v1.TextService: Embed, Classify and Summarize on the batched sentence embedder; Generate on the
generation engine."""

from __future__ import annotations

import collections

import numpy as np

from modalmesh.v1 import common_pb2, text_pb2, text_pb2_grpc
from services.runtime.errors import FailedPrecondition, InvalidArgument
from services.runtime.served_model import ServedModel
from services.runtime.tensors import encode_tensor
from services.text.embedding_model import SentenceEmbedder, check_texts
from services.text.generator import ServedGenerator
from services.text.summarizer import Summarizer, SummaryWriter

DEFAULT_HYPOTHESIS = "This text is about {}."
CLASSIFY_TEMPERATURE = 0.05   # cosine similarities span a narrow range; sharpen before softmax
MAX_LABELS = 64
MAX_LABEL_CHARS = 200
FINISH_REASONS = {"stop": text_pb2.FINISH_REASON_STOP, "length": text_pb2.FINISH_REASON_LENGTH}


class TextServicer(text_pb2_grpc.TextServiceServicer):
    def __init__(self, embedder: ServedModel, label_cache_size: int = 4096, generator: ServedGenerator | None = None,
                 summary_writer: SummaryWriter | None = None):
        self.embedder = embedder
        self.generator = generator
        # Extractive summaries on the same served encoder (its batcher); abstractive ones by summary_writer.
        self.summarizer = Summarizer(embedder, writer=summary_writer)
        self._label_vectors: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._label_cache_size = label_cache_size

    @property
    def _adapter(self) -> SentenceEmbedder:
        self.embedder.require_ready()   # its tokenizer comes with the weights
        return self.embedder.adapter

    async def Embed(self, request: text_pb2.EmbedRequest, context) -> text_pb2.EmbedResponse:
        rows = self._prepare(request.texts, request.truncation)
        vectors = np.asarray(await self.embedder.infer(rows, context), dtype=np.float32)
        return text_pb2.EmbedResponse(
            embeddings=encode_tensor(vectors, common_pb2.DATA_TYPE_FP32),
            token_counts=[len(r.ids) for r in rows],
            truncated=[r.truncated for r in rows],
            model=self.embedder.model_info,
        )

    async def Classify(self, request: text_pb2.ClassifyRequest, context) -> text_pb2.ClassifyResponse:
        template = request.hypothesis_template or DEFAULT_HYPOTHESIS
        _check_labels(request.labels, template)
        rows = self._prepare(request.texts, request.truncation)
        texts = np.asarray(await self.embedder.infer(rows, context))
        labels = await self._embed_labels([template.format(label) for label in request.labels], context)
        similarity = texts @ labels.T
        scores = _softmax(similarity / CLASSIFY_TEMPERATURE)
        return text_pb2.ClassifyResponse(
            results=[_classification(request.labels, similarity[i], scores[i], rows[i].truncated)
                     for i in range(len(rows))],
            model=self.embedder.model_info,
        )

    async def Generate(self, request: text_pb2.GenerateRequest, context):
        generator = self._generator()
        prompt_ids = generator.prompt_ids(request)
        params = generator.sampling(request.sampling)
        first = True
        async for delta in generator.stream(prompt_ids, params, context):
            response = text_pb2.GenerateResponse(text=delta.text, token_count=delta.token_count,
                                                 completion_tokens=delta.completion_tokens)
            if first:
                response.model.CopyFrom(generator.model_info)
                first = False
            if delta.finish_reason:
                response.finish_reason = FINISH_REASONS[delta.finish_reason]
                response.usage.CopyFrom(text_pb2.TokenUsage(prompt_tokens=delta.prompt_tokens,
                                                            completion_tokens=delta.completion_tokens))
            yield response

    def _generator(self) -> ServedGenerator:
        if self.generator is None:
            raise FailedPrecondition("this text service serves no generation model (MODALMESH_GENERATION_MODEL)")
        return self.generator

    async def Summarize(self, request: text_pb2.SummarizeRequest, context) -> text_pb2.SummarizeResponse:
        summary = await self.summarizer.summarize(request.text, method=request.method,
                                                  max_sentences=request.max_sentences, max_words=request.max_words,
                                                  context=context)
        return text_pb2.SummarizeResponse(
            summary=summary.text,
            method=summary.method,
            sentences=[text_pb2.SummarySentence(index=s.index, text=s.text, score=s.score) for s in summary.sentences],
            input_sentences=summary.input_sentences,
            chunks=summary.chunks,
            model=summary.model,
        )

    def _prepare(self, texts, truncation) -> list:
        limit = self.embedder.batcher.config.max_batch_size
        if not texts:
            raise InvalidArgument(("texts", "at least one text is required"))
        if len(texts) > limit:
            raise InvalidArgument(("texts", f"{len(texts)} texts exceed the limit of {limit} per request; "
                                            "split the batch"))
        check_texts(texts)
        return self._adapter.tokenize(texts, allow_truncation=truncation != text_pb2.TRUNCATION_NONE)

    async def _embed_labels(self, hypotheses: list[str], context) -> np.ndarray:
        """Label sentences repeat across requests: embed each once and keep it (LRU)."""
        missing = [h for h in dict.fromkeys(hypotheses) if h not in self._label_vectors]
        if missing:
            vectors = await self.embedder.infer(self._adapter.tokenize(missing), context)
            for hypothesis, vector in zip(missing, vectors):
                self._label_vectors[hypothesis] = np.asarray(vector)
        for hypothesis in hypotheses:
            self._label_vectors.move_to_end(hypothesis)
        while len(self._label_vectors) > self._label_cache_size:
            self._label_vectors.popitem(last=False)
        return np.stack([self._label_vectors[h] for h in hypotheses])


def _check_labels(labels, template: str) -> None:
    violations = []
    if "{}" not in template:
        violations.append(("hypothesis_template", 'must contain "{}" where the label goes'))
    if not 2 <= len(labels) <= MAX_LABELS:
        violations.append(("labels", f"{len(labels)} labels; give 2 to {MAX_LABELS}"))
    if len(set(labels)) != len(labels):
        violations.append(("labels", "labels must be distinct"))
    for i, label in enumerate(labels):
        if not label.strip() or len(label) > MAX_LABEL_CHARS:
            violations.append((f"labels[{i}]", f"must be 1 to {MAX_LABEL_CHARS} characters, not blank"))
    if violations:
        raise InvalidArgument(violations)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _classification(labels, similarity, scores, truncated) -> text_pb2.Classification:
    order = np.argsort(-scores)
    return text_pb2.Classification(
        label=labels[order[0]],
        scores=[text_pb2.LabelScore(label=labels[j], score=float(scores[j]), similarity=float(similarity[j]))
                for j in order],
        truncated=truncated,
    )
