"""Neural speech synthesis: the audio service serves a VITS model by Hugging Face id from the local cache,
loaded with transformers' from_pretrained, for Synthesize.

The model is a tiny VITS with random weights and a character tokenizer that this test builds and saves
(offline), then lays out as the Hugging Face hub cache does. Random weights cannot speak: the test checks
the pipeline (the service's audio is the model's own waveform, resampled and encoded as asked, its length
follows the speaking rate, the response names the model, bad input is refused), not words.
"""

from __future__ import annotations

import io
import json

import grpc
import numpy as np
import pytest
import soundfile
from scipy.signal import resample_poly

from modalmesh.v1 import audio_pb2, audio_pb2_grpc
from services.audio.neural_speech import SYNTHESIS_SEED, VitsSynthesizer
from services.audio.speech_synthesis import SpeechRequest
from services.runtime.errors import bad_request_of
from tests.support import install_in_hub_cache, start_service

pytestmark = pytest.mark.slow

MODEL_ID = "modalmesh-tests/tiny-vits"
MODEL_RATE = 16000
SENTENCE = "Start the pump and stop the motor."
CHARACTERS = ["<pad>", "<unk>"] + list(" abcdefghijklmnopqrstuvwxyz'.,?!-")


def save_tiny_vits(path) -> None:
    """A one-layer VITS with random weights (hop 256 samples at 16 kHz) and its character tokenizer."""
    import torch
    from transformers import VitsConfig, VitsModel, VitsTokenizer

    path.mkdir(parents=True)
    vocab = path / "vocab.json"
    vocab.write_text(json.dumps({c: i for i, c in enumerate(CHARACTERS)}))
    tokenizer = VitsTokenizer(str(vocab), pad_token="<pad>", unk_token="<unk>", add_blank=True, normalize=True,
                              phonemize=False)
    config = VitsConfig(vocab_size=len(CHARACTERS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        ffn_dim=32, flow_size=16, spectrogram_bins=33, upsample_initial_channel=16,
                        upsample_rates=[8, 8, 4], upsample_kernel_sizes=[16, 16, 8], resblock_kernel_sizes=[3],
                        resblock_dilation_sizes=[[1, 3]], prior_encoder_num_flows=2,
                        prior_encoder_num_wavenet_layers=1, posterior_encoder_num_wavenet_layers=1,
                        duration_predictor_num_flows=2, duration_predictor_filter_channels=16,
                        depth_separable_num_layers=2, sampling_rate=MODEL_RATE)
    torch.manual_seed(0)
    VitsModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)



@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny-vits"
    save_tiny_vits(path)
    return path


@pytest.fixture(scope="module")
def service(pki, tmp_path_factory, model_dir):
    hf_home = tmp_path_factory.mktemp("hf-home")
    install_in_hub_cache(model_dir, hf_home, MODEL_ID)
    service = start_service("services.audio", pki, tmp_path_factory.mktemp("audio-tts"), "audio",
                            synthesis_model=MODEL_ID,
                            environment={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})
    yield service
    assert service.stop() == 0, service.log_tail()


@pytest.fixture(scope="module")
def audio(service):
    channel = service.channel()
    yield audio_pb2_grpc.AudioServiceStub(channel)
    channel.close()


def reference_waveform(model_dir, text: str, speaking_rate: float = 1.0) -> np.ndarray:
    """The model's own waveform, computed here with transformers and the service's documented seed."""
    import torch
    from transformers import AutoTokenizer, VitsModel

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = VitsModel.from_pretrained(model_dir).eval()
    torch.manual_seed(SYNTHESIS_SEED)
    with torch.inference_mode():
        return model(**tokenizer(text, return_tensors="pt"), speaking_rate=speaking_rate).waveform[0].numpy()


def synthesize(audio, **fields) -> audio_pb2.SynthesizeResponse:
    return audio.Synthesize(audio_pb2.SynthesizeRequest(**{"text": SENTENCE, **fields}), timeout=60)


def test_synthesis_is_the_models_waveform_at_its_own_rate_and_names_the_model(audio, model_dir):
    reply = synthesize(audio, encoding=audio_pb2.AUDIO_ENCODING_PCM_F32LE)
    assert reply.audio.format.sample_rate_hz == MODEL_RATE and reply.audio.format.channels == 1
    samples = np.frombuffer(reply.audio.data, dtype="<f4")
    expected = reference_waveform(model_dir, SENTENCE)
    assert len(samples) == len(expected) and len(samples) % 256 == 0
    np.testing.assert_allclose(samples, np.clip(expected, -1, 1), atol=1e-4)
    assert reply.duration_s == pytest.approx(len(samples) / MODEL_RATE)
    assert 0.1 < reply.duration_s < 10.0
    assert reply.model.name == "tiny-vits" and reply.model.device == "cpu" and reply.model.dtype == "float32"
    assert reply.model.provenance.startswith(f"Hugging Face {MODEL_ID} revision ")
    assert reply.model.version not in ("", "unknown")
    assert synthesize(audio, encoding=audio_pb2.AUDIO_ENCODING_PCM_F32LE).audio.data == reply.audio.data


@pytest.mark.parametrize("encoding", [audio_pb2.AUDIO_ENCODING_UNSPECIFIED, audio_pb2.AUDIO_ENCODING_WAV,
                                      audio_pb2.AUDIO_ENCODING_FLAC, audio_pb2.AUDIO_ENCODING_PCM_S16LE])
def test_synthesis_resamples_and_encodes_as_asked(audio, model_dir, encoding):
    reply = synthesize(audio, encoding=encoding, sample_rate_hz=22050)
    if encoding == audio_pb2.AUDIO_ENCODING_PCM_S16LE:
        samples, rate = np.frombuffer(reply.audio.data, dtype="<i2") / 32767, reply.audio.format.sample_rate_hz
    else:
        samples, rate = soundfile.read(io.BytesIO(reply.audio.data), dtype="float32")
        assert soundfile.info(io.BytesIO(reply.audio.data)).format == (
            "FLAC" if encoding == audio_pb2.AUDIO_ENCODING_FLAC else "WAV")
    assert rate == 22050 and reply.audio.format.encoding == (encoding or audio_pb2.AUDIO_ENCODING_WAV)
    expected = np.clip(resample_poly(reference_waveform(model_dir, SENTENCE), 441, 320), -1, 1)
    assert len(samples) == len(expected)
    assert np.abs(samples - expected).max() < 2 / 32767 + 1e-4


def test_speaking_rate_scales_the_duration(audio):
    slow, normal, fast = (synthesize(audio, words_per_minute=wpm).duration_s for wpm in (80, 160, 320))
    assert slow > 1.4 * normal and fast < 0.8 * normal


@pytest.mark.parametrize("fields, field", [
    ({"text": ""}, "text"),
    ({"text": "x" * 2001}, "text"),
    ({"text": "日本語"}, "text"),                   # nothing the model's vocabulary holds
    ({"voice": "en-us"}, "voice"),                   # an espeak-ng voice; this model has speaker-0 only
    ({"voice": "speaker-1"}, "voice"),
    ({"words_per_minute": 20}, "words_per_minute"),
    ({"sample_rate_hz": 4000}, "sample_rate_hz"),
])
def test_bad_requests_are_refused_and_the_service_stays_serving(audio, service, fields, field):
    with pytest.raises(grpc.RpcError) as error:
        synthesize(audio, **fields)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert any(f == field for f, _ in bad_request_of(error.value)), bad_request_of(error.value)
    assert service.health() == "SERVING"
    assert synthesize(audio, voice="speaker-0").duration_s > 0


def test_speech_past_the_message_limit_is_refused_with_the_sizes(audio, service):
    """2,000 characters at 80 words/min, 48 kHz, 32-bit: minutes of audio, past the 16 MiB gRPC limit."""
    with pytest.raises(grpc.RpcError) as error:
        synthesize(audio, text="open the valve. " * 125, words_per_minute=80, sample_rate_hz=48000,
                   encoding=audio_pb2.AUDIO_ENCODING_PCM_F32LE)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [(field, message)] = bad_request_of(error.value)
    assert field == "text" and "message limit" in message
    assert service.health() == "SERVING"


def test_a_local_path_loads_and_names_its_folder(model_dir):
    synthesizer = VitsSynthesizer(str(model_dir), device="cpu", threads=1)
    synthesizer.load()
    [speech] = synthesizer.run_batch([SpeechRequest(SENTENCE, synthesizer.default_voice)])
    assert speech.sample_rate == MODEL_RATE and len(speech.samples) == len(reference_waveform(model_dir, SENTENCE))
    description = synthesizer.describe()
    assert description.name == "tiny-vits" and description.provenance == f"local path {model_dir.resolve()}"
