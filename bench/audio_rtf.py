"""Real-time factor of the AudioService's voice activity, transcription and machine-sound scoring, through
the service (gRPC + mutual TLS) and in this process on the same adapters, measured in one run.

Real-time factor (RTF) = seconds of computation / seconds of audio; below 1 is faster than real time.
Phases, in this order:
  1. in-process  the adapters (Silero VAD, pocketsphinx, the sound autoencoder) called directly on
                 16 kHz float arrays, one clip at a time: half the repetitions before the service phases,
                 half after, so a drift of the shared machine's speed does not bias the ratios;
  2. service     `python -m services.audio`, one client calling one clip at a time (the latency view:
                 decoding, resampling, gRPC, TLS and the batcher included);
  3. concurrent  --concurrency clients at once (the throughput view: seconds of audio served per second).
Transcription streams each clip in --chunk-s chunks in both phases (a phrase grammar, as the tests use).

    .venv/bin/python bench/audio_rtf.py [--repeat 3] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
from _common import exit_cleanly_on_sigterm, machine_description, running_service, write_record  # noqa: E402
from modalmesh.home import MeshHome  # noqa: E402

SENTENCES = ["start the pump and check the bearing temperature", "open the valve and stop the motor",
             "the motor is running hot", "close the valve", "check the bearing temperature"]
MODEL_RATE = 16_000


def speech_clips() -> list:
    """espeak-ng sentences with a second of quiet room noise around each, 16 kHz float32."""
    import numpy as np
    import soundfile

    from services.audio.audio_io import to_model_rate

    rng = np.random.default_rng(0)
    clips = []
    for sentence in SENTENCES:
        wav = subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "--stdout", sentence], capture_output=True,
                             check=True).stdout
        samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
        quiet = np.zeros(MODEL_RATE)
        clip = np.concatenate([quiet, to_model_rate(samples, rate), quiet])
        clips.append((clip + rng.normal(0, 0.003, len(clip))).astype(np.float32))
    return clips


def machine_clips(count: int, seconds: float) -> list:
    from services.audio.machine_sounds import FAULTS, machine_sound

    return [machine_sound(i, seconds, MODEL_RATE, FAULTS[i % 3] if i % 2 else None, 0.5) for i in range(count)]


# -- in process ---------------------------------------------------------------------------------------


class InProcess:
    def __init__(self, threads: int):
        from services.audio.sound_anomaly import MachineSoundScorer
        from services.audio.speech_recognition import PocketsphinxRecognizer
        from services.audio.voice_activity import SileroVoiceDetector

        self.adapters = {"vad": SileroVoiceDetector(threads=threads),
                         "transcription": PocketsphinxRecognizer(max_streams=1),
                         "anomaly": MachineSoundScorer(threads=threads)}
        for adapter in self.adapters.values():
            adapter.load()
            adapter.warm_up()

    def run(self, task: str, clip, chunk_s: float) -> None:
        from services.audio.speech_recognition import RecognitionStep, grammar_from_phrases
        from services.audio.voice_activity import VoiceQuery

        adapter = self.adapters[task]
        if task == "vad":
            adapter.run_batch([VoiceQuery(clip)])
        elif task == "anomaly":
            adapter.run_batch([clip])
        else:
            stream = adapter.open_stream(grammar_from_phrases(SENTENCES))
            step = int(chunk_s * MODEL_RATE)
            for i in range(0, len(clip), step):
                adapter.run_batch([RecognitionStep(stream, clip[i:i + step])])
            adapter.run_batch([RecognitionStep(stream, clip[:0], final=True)])
            adapter.close_stream(stream)


# -- through the service ------------------------------------------------------------------------------


def pcm_audio(clip):
    import numpy as np

    from modalmesh.v1 import audio_pb2

    return audio_pb2.Audio(data=(np.clip(clip, -1, 1) * 32767).astype("<i2").tobytes(),
                           format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM_S16LE,
                                                        sample_rate_hz=MODEL_RATE))


def call(stub, task: str, clip, chunk_s: float) -> None:
    from modalmesh.v1 import audio_pb2

    audio = pcm_audio(clip)
    if task == "vad":
        stub.DetectVoice(audio_pb2.DetectVoiceRequest(audio=audio), timeout=120)
    elif task == "anomaly":
        stub.ScoreAnomaly(audio_pb2.ScoreAnomalyRequest(audio=audio), timeout=120)
    else:
        step = int(chunk_s * MODEL_RATE) * 2

        def requests():
            yield audio_pb2.TranscribeRequest(config=audio_pb2.TranscriptionConfig(format=audio.format,
                                                                                   phrases=SENTENCES))
            for i in range(0, len(audio.data), step):
                yield audio_pb2.TranscribeRequest(audio=audio.data[i:i + step])
        replies = list(stub.Transcribe(requests(), timeout=120))
        assert replies[-1].is_final


def timed(fn, clips, repeat: int) -> dict:
    audio_s = compute_s = 0.0
    for _ in range(repeat):
        for clip in clips:
            started = time.perf_counter()
            fn(clip)
            compute_s += time.perf_counter() - started
            audio_s += len(clip) / MODEL_RATE
    return {"audio_s": round(audio_s, 2), "compute_s": round(compute_s, 3), "rtf": round(compute_s / audio_s, 4)}


def concurrent(stub, task: str, clips, repeat: int, concurrency: int, chunk_s: float) -> dict:
    """``concurrency`` client threads, each through every clip ``repeat`` times: audio seconds served per second."""
    errors = []

    def client(offset: int) -> None:
        try:
            for r in range(repeat):
                for k in range(len(clips)):
                    call(stub, task, clips[(k + offset) % len(clips)], chunk_s)
        except Exception as error:   # noqa: BLE001 - reported in the record
            errors.append(repr(error))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    audio_s = concurrency * repeat * sum(len(c) for c in clips) / MODEL_RATE
    return {"clients": concurrency, "audio_s": round(audio_s, 2), "wall_s": round(wall, 3),
            "x_real_time": round(audio_s / wall, 2), "rtf": round(wall / audio_s, 4), "errors": errors}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="passes over the clips per phase")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="model threads, in process and in the service")
    parser.add_argument("--chunk-s", type=float, default=0.25, help="transcription chunk length")
    parser.add_argument("--machine-clips", type=int, default=8)
    parser.add_argument("--machine-seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    exit_cleanly_on_sigterm()
    import torch

    from modalmesh.v1 import audio_pb2_grpc

    clips = {"vad": speech_clips(), "anomaly": machine_clips(args.machine_clips, args.machine_seconds)}
    clips["transcription"] = clips["vad"]
    record = {"benchmark": "audio_rtf", "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "machine": {**machine_description(), "torch": torch.__version__},
              "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "clips": {task: {"count": len(c), "seconds": round(sum(len(x) for x in c) / MODEL_RATE, 2)}
                        for task, c in clips.items()}, "tasks": {}}
    print(f"{os.cpu_count()} cores, model threads {args.threads}; clips: {record['clips']}", flush=True)
    local = InProcess(args.threads)
    half = max(1, args.repeat // 2)
    before = {task: timed(lambda c, t=task: local.run(t, c, args.chunk_s), clips[task], half) for task in clips}
    with _common.temporary_directory("modalmesh-bench-") as tmp:
        with running_service("services.audio", "audio", MeshHome(Path(tmp)), Path(tmp),
                             model_threads=args.threads) as service:
            service.wait_serving()
            channel = service.channel()
            stub = audio_pb2_grpc.AudioServiceStub(channel)
            for task in clips:
                call(stub, task, clips[task][0], args.chunk_s)   # connect and warm the path
                served = timed(lambda c, t=task: call(stub, t, c, args.chunk_s), clips[task], args.repeat)
                loaded = concurrent(stub, task, clips[task], max(1, args.repeat // 2), args.concurrency, args.chunk_s)
                record["tasks"][task] = {"service": served, "concurrent": loaded}
            channel.close()
    after = {task: timed(lambda c, t=task: local.run(t, c, args.chunk_s), clips[task], half) for task in clips}
    print(f"\n{'task':<14}{'in-process RTF':>16}{'service RTF':>13}{'service/in-proc':>17}"
          f"{'concurrent x real time':>24}")
    for task, result in record["tasks"].items():
        a, b = before[task], after[task]
        in_process = round((a["compute_s"] + b["compute_s"]) / (a["audio_s"] + b["audio_s"]), 4)
        result["in_process"] = {"rtf": in_process, "before": a, "after": b,
                                "drift": round(b["rtf"] / a["rtf"] - 1, 3)}
        result["service_over_in_process"] = round(result["service"]["rtf"] / in_process, 2)
        print(f"{task:<14}{in_process:>16.4f}{result['service']['rtf']:>13.4f}"
              f"{result['service_over_in_process']:>17.2f}{result['concurrent']['x_real_time']:>24.1f}")
    record["models"] = {task: {"name": d.name, "version": d.version, "provenance": d.provenance}
                        for task, d in ((t, a.describe()) for t, a in local.adapters.items())}
    path = write_record("audio_rtf", record, args.out)
    print(f"\nrecord: {path.relative_to(_common.ROOT) if path.is_relative_to(_common.ROOT) else path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
