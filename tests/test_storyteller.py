"""The storyteller: the committed default generation model, its recorded quality, and the script that trains it."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.support import ROOT

MODEL_DIR = ROOT / "services" / "text" / "models" / "storyteller"
SCRIPT = ROOT / "scripts" / "train_storyteller.py"
MAX_FOLDER_BYTES = 6_000_000
# Per-token perplexity on held-out stories (another seed). A model that learned nothing scores its vocabulary
# size (about 2,000); token frequencies alone (the unigram baseline the script records) about 250. The
# committed run scored 1.62. An earlier run stopped at 1,200 steps scored 1.87: it had the grammar but not
# yet the copying of names from earlier in the story, and its stories changed names mid-way. 1.75 keeps
# that model out and leaves 8% for another machine's arithmetic.
MAX_HELD_OUT_PERPLEXITY = 1.75
COMMON_WORDS = {"the", "a", "and", "was", "to", "of", "he", "she", "it", "his", "her"}


def load_script():
    """scripts/ is not a package: import the training script by path (its story grammar is the test data)."""
    spec = importlib.util.spec_from_file_location("train_storyteller", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module      # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def storyteller():
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, local_files_only=True, dtype=torch.float32)
    return model.eval(), tokenizer


def write(storyteller, request: str, **generate_options) -> tuple[str, list[int]]:
    model, tokenizer = storyteller
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": request}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**prompt, max_new_tokens=300, **generate_options)
    new_tokens = output[0, prompt["input_ids"].shape[1]:].tolist()
    return tokenizer.decode(new_tokens, skip_special_tokens=True), new_tokens


def assert_reads_as_a_story(text: str) -> None:
    words = text.split()
    assert len(words) >= 20, text
    plain = [w for w in words if re.fullmatch(r"\"?[A-Za-z][a-z'-]*[.,!?]?\"?[.,!?]?", w)]
    assert len(plain) / len(words) > 0.95, f"not plain English words: {text!r}"
    assert len(COMMON_WORDS & {w.lower().strip('.,!?"') for w in words}) >= 3, text
    assert text.rstrip().endswith((".", "!", '"')), text


def test_folder_is_complete_and_small():
    names = {path.name for path in MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "provenance.json"} <= names, names
    assert sum(path.stat().st_size for path in MODEL_DIR.iterdir()) < MAX_FOLDER_BYTES


def test_chat_template_uses_role_tokens_and_generation_prompt(storyteller):
    _, tokenizer = storyteller
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello."}]
    rendered = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|system|>\nBe brief.<|endoftext|><|user|>\nHello.<|endoftext|><|assistant|>\n"
    assert not tokenizer.apply_chat_template(chat, tokenize=False).endswith("<|assistant|>\n")
    ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert tokenizer.convert_tokens_to_ids("<|assistant|>") in ids
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token_id != tokenizer.eos_token_id


def test_greedy_story_follows_the_request_and_ends_with_eos(storyteller):
    text, new_tokens = write(storyteller, "Write a story about a robot in a harbour.", do_sample=False)
    _, tokenizer = storyteller
    assert new_tokens[-1] == tokenizer.eos_token_id and len(new_tokens) < 300, text
    assert_reads_as_a_story(text)
    assert "robot" in text and "harbour" in text, text


def test_sampled_story_with_the_shipped_defaults_ends_with_eos(storyteller):
    model, tokenizer = storyteller
    assert model.generation_config.do_sample and model.generation_config.eos_token_id == tokenizer.eos_token_id
    torch.manual_seed(7)
    text, new_tokens = write(storyteller, "Tell me a short story about a fox who loses a lantern.")
    assert new_tokens[-1] == tokenizer.eos_token_id and len(new_tokens) < 300, text
    assert_reads_as_a_story(text)


def test_held_out_perplexity_is_recorded_low_and_reproducible(storyteller):
    provenance = json.loads((MODEL_DIR / "provenance.json").read_text())
    recorded = provenance["held_out"]
    assert recorded["perplexity"] < MAX_HELD_OUT_PERPLEXITY
    assert recorded["perplexity"] < recorded["unigram_perplexity"] / 50
    # Recompute on the first held-out stories: the recorded number must be the model's, not a typed one.
    script = load_script()
    model, tokenizer = storyteller
    held_out = script.held_out_stories(100, seen=set(), seed=provenance["held_out_seed"])
    measured = script.perplexity(model, tokenizer, held_out)["perplexity"]
    assert measured == pytest.approx(recorded["perplexity"], rel=0.05)


@pytest.mark.slow
def test_quick_training_run_writes_a_loadable_model(tmp_path):
    out = tmp_path / "storyteller"
    # subprocess.run kills the child if it overruns, so nothing is left behind.
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["script"].endswith("--quick") and provenance["training"]["steps"] > 0
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Write a story."}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert prompt["input_ids"].shape[1] < output.shape[1] <= prompt["input_ids"].shape[1] + 5
