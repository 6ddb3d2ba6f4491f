"""A Whisper-class recogniser by local path: the service loads it with transformers' from_pretrained and
streams its hypotheses. The model is a tiny Whisper with random weights that this test builds and
saves, so the test checks the pipeline and the model's name, not the words."""

from __future__ import annotations

import numpy as np
import pytest

from modalmesh.v1 import audio_pb2, audio_pb2_grpc
from services.runtime.errors import bad_request_of
from tests.support import start_service

pytestmark = pytest.mark.slow

SPECIAL_TOKENS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]


def save_tiny_whisper(path) -> None:
    """A byte-level BPE tokenizer trained in memory, a 1-layer Whisper with random weights, its feature extractor."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizerFast)

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(["start the pump and stop the motor"] * 10, trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    end, start = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    config = WhisperConfig(vocab_size=tokenizer.get_vocab_size(), d_model=32, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                           decoder_ffn_dim=64, num_mel_bins=80, max_source_positions=1500, max_target_positions=64,
                           decoder_start_token_id=start, eos_token_id=end, pad_token_id=end, bos_token_id=end)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(decoder_start_token_id=start, eos_token_id=end, pad_token_id=end)
    model.save_pretrained(path)
    fast = WhisperTokenizerFast(tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=fast).save_pretrained(path)


@pytest.fixture(scope="module")
def whisper_audio(pki, tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny-whisper"
    save_tiny_whisper(path)
    service = start_service("services.audio", pki, tmp_path_factory.mktemp("audio-whisper"), "audio",
                            transcription_model=str(path), transcription_partial_every_s=1.0)
    channel = service.channel()
    yield audio_pb2_grpc.AudioServiceStub(channel)
    channel.close()
    assert service.stop() == 0, service.log_tail()


def requests(seconds: float, chunk_s: float = 0.5, **config):
    samples = (0.1 * np.sin(2 * np.pi * 220 * np.arange(int(seconds * 16000)) / 16000) * 32767).astype("<i2")
    yield audio_pb2.TranscribeRequest(config=audio_pb2.TranscriptionConfig(
        format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM_S16LE, sample_rate_hz=16000), **config))
    step = int(chunk_s * 16000)
    for i in range(0, len(samples), step):
        yield audio_pb2.TranscribeRequest(audio=samples[i:i + step].tobytes())


def test_whisper_streams_partials_and_a_final_hypothesis_and_names_the_model(whisper_audio):
    replies = list(whisper_audio.Transcribe(requests(3.0), timeout=120))
    final = replies[-1]
    assert final.is_final and final.audio_s == pytest.approx(3.0)
    assert final.model.name == "tiny-whisper" and final.model.provenance.startswith("local path ")
    assert replies[0].model.name == "tiny-whisper" and final.model.version not in ("", "unknown")
    assert not any(r.is_final for r in replies[:-1])


def test_whisper_refuses_grammars_and_audio_past_its_window(whisper_audio):
    import grpc

    for stream, field in ((requests(1.0, phrases=["start the pump"]), "config"), (requests(31.0, 5.0), "audio")):
        with pytest.raises(grpc.RpcError) as error:
            list(whisper_audio.Transcribe(stream, timeout=120))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert any(f.startswith(field) for f, _ in bad_request_of(error.value))
