"""A Hugging Face causal language model and its tokenizer, loaded only from local files.

The default is the storyteller the project trains itself (services/text/models/storyteller,
scripts/train_storyteller.py); any other model is named by a local path or a Hugging Face id
already in the local cache (in Kubernetes: the model-cache volume). Nothing is downloaded.
"""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

import torch

from services.runtime.adapter import ModelDescription
from services.runtime.devices import configure_threads, pick_device, pick_dtype
from services.runtime.pretrained import local_source, quiet_transformers, weights_digest

log = logging.getLogger(__name__)

STORYTELLER = "storyteller"
STORYTELLER_PATH = Path(__file__).resolve().parent / "models" / STORYTELLER
CHAT_FALLBACK_ROLES = {"system", "user", "assistant"}


class CausalLanguageModel:
    """Loads the weights and tokenizer, renders chats, and describes itself for every response."""

    def __init__(self, source: str = STORYTELLER, device: str = "auto", precision: str = "auto", threads: int = 0):
        self.source = source
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, precision)
        self.threads = threads
        self.model = None
        self.tokenizer = None
        self.context_window = 0
        self.eos_token_ids: frozenset[int] = frozenset()
        self._description: ModelDescription | None = None

    def load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        quiet_transformers()
        if self.device.type == "cpu":
            configure_threads(self.threads)
        path, provenance, version = self._resolve()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype, local_files_only=True)
        self.model.to(self.device).eval()
        # Transformers 5.24 names the KV cache argument and output `cache`; earlier 5.x releases (the
        # ones CUDA images tend to ship) call it `past_key_values`.
        self._cache_keyword = "cache" if "cache" in inspect.signature(self.model.forward).parameters \
            else "past_key_values"
        config = self.model.config
        self.context_window = int(getattr(config, "max_position_embeddings", 0) or self.tokenizer.model_max_length)
        self.eos_token_ids = self._eos_ids()
        self._description = ModelDescription(
            name=STORYTELLER if self.source == STORYTELLER else self.source.rstrip("/").rsplit("/", 1)[-1],
            version=version, provenance=provenance, device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor, cache,
                **options) -> tuple[torch.Tensor, object]:
        """One step of the model over ``ids``, extending ``cache``: the logits and the cache."""
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         **{self._cache_keyword: cache}, **options)
        return out.logits, getattr(out, self._cache_keyword)

    def describe(self) -> ModelDescription:
        if self._description is None:
            raise RuntimeError("the language model is not loaded")
        return self._description

    def close(self) -> None:
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- prompts -------------------------------------------------------------------------------

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def encode_prompt(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """The chat rendered by the tokenizer's template, ready for the assistant's answer.

        A tokenizer without a template gets a plain "role: content" transcript ending in "assistant:".
        """
        if self.has_chat_template:
            rendered = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return list(self.tokenizer(rendered, add_special_tokens=False)["input_ids"])
        transcript = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        return self.encode_prompt(transcript)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else next(iter(self.eos_token_ids), 0))

    # -- where the weights come from --------------------------------------------------------------

    def _eos_ids(self) -> frozenset[int]:
        generation = getattr(self.model, "generation_config", None)
        eos = getattr(generation, "eos_token_id", None)
        if eos is None:
            eos = self.tokenizer.eos_token_id
        if eos is None:
            return frozenset()
        return frozenset([eos] if isinstance(eos, int) else eos)

    def _resolve(self) -> tuple[str, str, str]:
        """(path or id, provenance, version) of the configured source."""
        if self.source == STORYTELLER:
            provenance_file = STORYTELLER_PATH / "provenance.json"
            facts = json.loads(provenance_file.read_text()) if provenance_file.exists() else {}
            perplexity = facts.get("heldout_perplexity")
            note = f", held-out perplexity {perplexity:.1f}" if isinstance(perplexity, (int, float)) else ""
            return (str(STORYTELLER_PATH),
                    "trained by modalmesh (scripts/train_storyteller.py) on synthetic stories it generates; "
                    f"writes short simple stories only{note}", weights_digest(STORYTELLER_PATH))
        return local_source(self.source)
