"""The audio service process: settings, one served model per method, servicer."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from modalmesh.v1 import audio_pb2_grpc
from services.audio.servicer import AudioServicer
from services.audio.sound_anomaly import MODEL_DIR, MachineSoundScorer
from services.audio.speech_recognition import PocketsphinxRecognizer
from services.audio.speech_synthesis import EspeakSynthesizer
from services.audio.voice_activity import SileroVoiceDetector
from services.runtime.adapter import ModelAdapter
from services.runtime.server import Runtime, Service, run_service
from services.runtime.settings import Precision, ServiceSettings

POCKETSPHINX = "pocketsphinx"
ESPEAK = "espeak-ng"


class AudioSettings(ServiceSettings):
    workload: str = "audio"
    grpc_port: int = Field(50071, ge=0, le=65535)
    metrics_port: int = Field(9484, ge=-1, le=65535)
    # The service's torch models are small and sequential (an LSTM stepping through 32 ms chunks, a
    # 100k-parameter autoencoder): a second intra-op thread costs them more in synchronisation than it
    # gives (Silero VAD ran 20 times slower with 2 threads on a shared 2-vCPU machine). Concurrency
    # comes from MODALMESH_MODEL_INSTANCES; raise this for a Whisper model.
    model_threads: int = Field(1, ge=0, description="Intra-op threads per process; 0 = cores / model_instances")
    transcription_model: str = Field(POCKETSPHINX, description="'pocketsphinx' (shipped in its package), or a "
                                     "Whisper-class model by Hugging Face id in the local cache or local path")
    transcription_precision: Precision | None = Field(None, description="Overrides MODALMESH_PRECISION for Whisper")
    transcription_max_streams: int = Field(8, ge=1, le=256, description="Transcribe streams open at once; "
                                           "past it RESOURCE_EXHAUSTED")
    transcription_max_seconds: float = Field(600.0, gt=0, le=3600, description="Longest Transcribe stream, in "
                                             "seconds of audio (Whisper: at most its 30 s window)")
    transcription_partial_every_s: float = Field(2.0, gt=0, description="Whisper: re-read a stream for a partial "
                                                 "hypothesis after this much new audio")
    synthesis_model: str = Field(ESPEAK, description="'espeak-ng' (Debian package), or a VITS model (e.g. "
                                 "facebook/mms-tts-eng) by Hugging Face id in the local cache or local path")
    synthesis_precision: Precision | None = Field(None, description="Overrides MODALMESH_PRECISION for VITS")
    sound_anomaly_model: Path = Field(MODEL_DIR, description="Folder of a model written by "
                                      "scripts/train_machine_sound_model.py")


def transcriber(settings: AudioSettings) -> ModelAdapter:
    if settings.transcription_model == POCKETSPHINX:
        return PocketsphinxRecognizer(max_streams=settings.transcription_max_streams,
                                      max_stream_seconds=settings.transcription_max_seconds)
    from services.audio.whisper import WhisperRecognizer

    return WhisperRecognizer(settings.transcription_model, device=settings.device,
                             precision=settings.transcription_precision or settings.precision,
                             threads=settings.model_threads, instances=settings.model_instances,
                             max_streams=settings.transcription_max_streams,
                             partial_every_s=settings.transcription_partial_every_s,
                             max_stream_seconds=settings.transcription_max_seconds)


def synthesizer(settings: AudioSettings) -> ModelAdapter:
    if settings.synthesis_model == ESPEAK:
        return EspeakSynthesizer()
    from services.audio.neural_speech import VitsSynthesizer

    return VitsSynthesizer(settings.synthesis_model, device=settings.device,
                           precision=settings.synthesis_precision or settings.precision,
                           threads=settings.model_threads, instances=settings.model_instances)


def build(runtime: Runtime) -> Service:
    settings: AudioSettings = runtime.settings
    threads = {"threads": settings.model_threads, "instances": settings.model_instances}
    voice = runtime.serve_model("silero-vad", SileroVoiceDetector(**threads))
    recognizer_adapter = transcriber(settings)
    recognizer = runtime.serve_model(_served_name(settings.transcription_model), recognizer_adapter)
    sounds = runtime.serve_model("machine-sound-autoencoder",
                                 MachineSoundScorer(settings.sound_anomaly_model, **threads))
    speech = runtime.serve_model(_served_name(settings.synthesis_model), synthesizer(settings))
    servicer = AudioServicer(voice, recognizer, sounds, speech, settings.max_message_bytes)
    return Service(models=[voice, recognizer, sounds, speech], servicers=[
        (audio_pb2_grpc.add_AudioServiceServicer_to_server, servicer, "modalmesh.v1.AudioService"),
    ])


def _served_name(spec: str) -> str:
    """OIP model names cannot hold '/': a Hugging Face id or path is served under its last part."""
    return spec.rstrip("/").rsplit("/", 1)[-1]


def main() -> None:
    run_service(AudioSettings, build)
