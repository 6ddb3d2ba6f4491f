"""A real Hugging Face causal language model, built and saved locally by the tests.

Random weights (fixed seed), a byte-level BPE tokenizer trained here on a few sentences, a chat
template: everything a user's model folder has, so the service loads it through the same
`from_pretrained` path a Hugging Face id or local path takes. Nothing is downloaded.
"""

from __future__ import annotations

import functools
from pathlib import Path

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "A robot walked through the harbour at night, counting the ships.",
    "Once upon a time a lantern glowed in the snowy forest.",
    "Engineers measure throughput, latency and the cost of every token.",
    "The mesh encrypts every connection with mutual TLS.",
    "Unicode text such as café, naïve, 東京 and emoji 🚀 must survive the round trip.",
]


def build_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|pad|>",
                                   additional_special_tokens=SPECIAL_TOKENS[2:])
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return fast


def build_tiny_llama(folder: Path, *, seed: int = 7, context: int = 256) -> Path:
    """A 2-layer Llama with random weights and its tokenizer, saved as a user would save a model."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(folder)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=None, tie_word_embeddings=False,
                         initializer_range=0.4)  # large weights: varied, prompt-dependent greedy outputs
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(folder)
    return folder


@functools.cache
def tiny_llama_in(root: str) -> Path:
    return build_tiny_llama(Path(root) / "tiny-llama")
