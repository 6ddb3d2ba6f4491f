"""A sentence encoder for tests: a small BERT of random weights with the MiniLM tokenizer, saved as a
user's checkpoint would be, that the text service loads through its own from_pretrained path."""

from __future__ import annotations

from pathlib import Path


def build_tiny_encoder(path: Path) -> Path:
    """A 2-layer, 32-wide BERT with the MiniLM tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from services.text.embedding_model import packaged_model_path

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(packaged_model_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
