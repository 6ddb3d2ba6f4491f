"""Dynamic batching of the text service's Embed, measured in one run against the raw model.

Phases, in this order, on one machine:
  1. raw      the SentenceEmbedder adapter in this process, run_batch on pre-tokenized batches of
              --raw-batch sentences (nothing else runs); half of its time before phases 2-3 and half
              after, so a drift of the machine's speed during the run does not bias the ratios;
  2. batched  `python -m services.text` with dynamic batching on (max batch 64, delay 2 ms by
              default), --concurrency single-text callers over gRPC + mutual TLS from separate
              client processes, closed loop;
  3. unbatched the same service and load with MODALMESH_DYNAMIC_BATCHING=false.
Then the ratios batched/raw (target >= 0.75) and batched/unbatched (target >= 3).

    .venv/bin/python bench/embed_batching.py [--duration 20] [--concurrency 64] [--check]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
from modalmesh.home import MeshHome  # noqa: E402
from _common import (LoadSpec, exit_cleanly_on_sigterm, machine_description,  # noqa: E402
                     process_tree_cpu_seconds, rate_per_second, run_load, running_service, system_cpu_seconds,
                     thread_cpu_seconds, thread_cpu_usage, write_record)
from modalmesh.launch import metric  # noqa: E402

EMBED_METHOD = "/modalmesh.v1.TextService/Embed"
TARGET_VS_RAW = 0.75
TARGET_VS_UNBATCHED = 3.0

# -- sentences: realistic, 10-25 words, reproducible from a seed -------------------------------------

_SUBJECTS = [
    "the maintenance team", "our night shift supervisor", "the radiologist on call", "a field engineer",
    "the quality inspector", "the patient's cardiologist", "the production planner", "our data science group",
    "the plant manager", "a senior technician", "the editor of the evening show", "the customer support lead",
    "the warehouse operator", "the clinical trial coordinator", "the video producer", "the new intern",
]
_VERBS = [
    "reported", "noticed", "confirmed", "documented", "flagged", "reviewed", "replaced", "measured",
    "investigated", "scheduled", "recommended", "approved", "uploaded", "compared", "calibrated", "described",
]
_OBJECTS = [
    "an unusual vibration in the second centrifugal pump", "a small lesion on the left lung scan",
    "the bearing temperature readings from last week", "a crack in the housing of the main gearbox",
    "the updated dosage guidelines for elderly patients", "the color grading of the final documentary cut",
    "a steady drop in the coolant pressure", "the noise in the audio track of the interview",
    "the firmware update for the conveyor controllers", "the surface defects on the latest batch of steel plates",
    "the segmentation results for the spleen volumes", "the remaining useful life estimate for the compressor",
    "the subtitles for the product launch video", "an intermittent fault in the packaging line sensors",
    "the lab results that arrived this morning", "the energy consumption of the cooling towers",
]
_TAILS = [
    "before the morning inspection", "after the storm knocked out the backup generator",
    "during the quarterly safety audit", "while the line was running at full capacity",
    "because the alarm thresholds looked too conservative", "so that the next shift can plan the repair",
    "and asked for a second opinion", "without stopping the production line",
    "as part of the preventive maintenance program", "even though the readings were within tolerance",
    "for the review meeting on Thursday", "so the model can be retrained with fresh data",
    "and shared the notes with the whole department", "to make sure nothing was missed in the report",
]
_OPENERS = ["", "", "", "Yesterday, ", "Late on Friday, ", "According to the log, ", "As expected, ",
            "For the second time this month, ", "Surprisingly, ", "After a long discussion, "]
_QUESTIONS = [
    "Can someone explain why {o} changed so much {t}?",
    "Why did {s} decide to postpone the work on {o}?",
    "Is it normal that {o} looks different from the previous results?",
]


def make_sentences(n: int, seed: int) -> list[str]:
    """``n`` distinct sentences of 10-25 words, the same for the same seed."""
    rng = random.Random(seed)
    sentences, seen = [], set()
    while len(sentences) < n:
        s, v, o, t = rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS), rng.choice(_TAILS)
        if rng.random() < 0.15:
            text = rng.choice(_QUESTIONS).format(s=s, o=o, t=t)
        else:
            opener = rng.choice(_OPENERS)
            text = f"{opener}{s} {v} {o} {t}." if rng.random() < 0.7 else f"{opener}{s} {v} {o}."
        text = text[0].upper() + text[1:]
        if 10 <= len(text.split()) <= 25 and text not in seen:
            seen.add(text)
            sentences.append(text)
    return sentences


# -- phase 1: the raw model in this process ----------------------------------------------------------------


class RawModel:
    """The adapter in this process (torch is imported here, never in the client processes)."""

    def __init__(self, sentences: list[str], threads: int, model: str, device: str, runtime: str = "auto"):
        import torch
        from transformers.utils import logging as transformers_logging

        from services.text.embedding_model import SentenceEmbedder

        transformers_logging.disable_progress_bar()
        self.torch_version = torch.__version__
        self.embedder = SentenceEmbedder(model, device=device, threads=threads, runtime=runtime)
        self.embedder.load()
        self.embedder.warm_up()
        self.torch_threads = torch.get_num_threads()
        started = time.perf_counter()
        self.rows = self.embedder.tokenize(sentences)
        tokenize_s = time.perf_counter() - started
        single = sentences[:512]
        started = time.perf_counter()
        for text in single:
            self.embedder.tokenize([text])
        tokens = [len(r.ids) for r in self.rows]
        self.facts = {
            "torch": self.torch_version, "torch_threads": self.torch_threads,
            "tokens_per_text": {"mean": round(sum(tokens) / len(tokens), 1), "min": min(tokens), "max": max(tokens)},
            "tokenize_us_per_text_batched": round(tokenize_s / len(sentences) * 1e6, 1),
            "tokenize_us_per_text_single": round((time.perf_counter() - started) / len(single) * 1e6, 1),
        }

    def throughput(self, size: int, warmup_s: float, seconds: float) -> dict:
        """texts/s of run_batch on pre-tokenized batches of ``size``, after ``warmup_s``."""
        batches = [self.rows[i:i + size] for i in range(0, len(self.rows) - size + 1, size)]
        k, deadline = 0, time.perf_counter() + warmup_s
        while time.perf_counter() < deadline:
            self.embedder.run_batch(batches[k % len(batches)])
            k += 1
        busy0, total0, steal0 = system_cpu_seconds()
        cpu0 = time.process_time()
        done, ends, started = 0, [], time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            self.embedder.run_batch(batches[k % len(batches)])
            k += 1
            done += size
            ends += [time.perf_counter() - started] * size
        busy1, total1, steal1 = system_cpu_seconds()
        own = (time.process_time() - cpu0) / elapsed
        machine = (busy1 - busy0) / max(1e-9, total1 - total0) * (os.cpu_count() or 1)
        return {"batch": size, "texts": done, "seconds": round(elapsed, 2), "texts_per_s": round(done / elapsed, 1),
                "per_second": rate_per_second(ends, seconds),
                "own_cpu_cores": round(own, 3), "other_processes_cpu_cores": round(max(0.0, machine - own), 3),
                "stolen_cpu_cores": round((steal1 - steal0) / elapsed, 3)}

    def session(self, batch: int, extra_batches: tuple[int, ...], warmup_s: float, seconds: float) -> dict:
        """The main batch size for ``seconds``, then the context batch sizes briefly."""
        return {"main": self.throughput(batch, warmup_s, seconds),
                "other_batch_sizes": [self.throughput(b, 1.0, max(3.0, seconds / 4)) for b in extra_batches]}

    def close(self) -> None:
        self.embedder.close()


def combine_raw(sessions: list[dict], facts: dict) -> dict:
    """One raw figure from the sessions before and after the service phases (the machine may drift)."""
    def pooled(results: list[dict]) -> dict:
        texts, seconds = sum(r["texts"] for r in results), sum(r["seconds"] for r in results)
        return {"batch": results[0]["batch"], "texts": texts, "seconds": round(seconds, 2),
                "texts_per_s": round(texts / seconds, 1),
                "other_processes_cpu_cores": max(r["other_processes_cpu_cores"] for r in results),
                "stolen_cpu_cores": max(r["stolen_cpu_cores"] for r in results)}

    main = pooled([s["main"] for s in sessions])
    others = [pooled([s["other_batch_sizes"][i] for s in sessions])
              for i in range(len(sessions[0]["other_batch_sizes"]))]
    return {**main, **facts, "other_batch_sizes": others, "sessions": sessions,
            "drift": round(sessions[-1]["main"]["texts_per_s"] / sessions[0]["main"]["texts_per_s"] - 1, 3)}


# -- phases 2 and 3: the service under load --------------------------------------------------------------


class ServerProbe:
    """Counters of the service at the edges of the measured window: CPU per thread and batch statistics."""

    def __init__(self, service):
        self.service = service
        self.marks: list[dict] = []

    def mark(self) -> None:
        busy, total, steal = system_cpu_seconds()
        several = self.service.workers > 1   # then per worker process, and statistics summed from /metrics
        self.marks.append({"t": time.monotonic(), "cpu": sum(process_tree_cpu_seconds(self.service.pid).values()),
                           "threads": (process_tree_cpu_seconds if several else thread_cpu_seconds)(self.service.pid),
                           "stats": self._merged_statistics() if several else self._statistics(),
                           "system_busy": busy, "system_total": total, "system_steal": steal})

    def _merged_statistics(self) -> dict:
        """The workers' Prometheus histograms, summed by the supervisor: no per-size breakdown."""
        text = self.service.metrics()
        rows, executions = (metric(text, f"modalmesh_batch_size_{k}") for k in ("sum", "count"))
        queue_s, queued = (metric(text, f"modalmesh_batcher_queue_seconds_{k}") for k in ("sum", "count"))
        compute_ns = int(metric(text, "modalmesh_model_compute_seconds_sum") * 1e9)
        return {"inference_count": int(rows), "execution_count": int(executions), "queue_ns": int(queue_s * 1e9),
                "queue_count": int(queued), "batches": {0: (int(executions), compute_ns)}}

    def _statistics(self) -> dict:
        from inference import grpc_service_pb2 as oip, grpc_service_pb2_grpc as oip_grpc

        with self.service.channel() as channel:
            reply = oip_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(oip.ModelStatisticsRequest(),
                                                                                timeout=10)
        s = reply.model_stats[0]
        i = s.inference_stats
        return {"inference_count": s.inference_count, "execution_count": s.execution_count,
                "queue_ns": i.queue.ns, "queue_count": i.queue.count, "compute_ns": i.compute_infer.ns,
                "success_ns": i.success.ns, "success_count": i.success.count,
                "batches": {b.batch_size: (b.compute_infer.count, b.compute_infer.ns) for b in s.batch_stats}}

    def summary(self) -> dict:
        a, b = self.marks
        seconds = b["t"] - a["t"]
        sa, sb = a["stats"], b["stats"]
        executions = sb["execution_count"] - sa["execution_count"]
        rows = sb["inference_count"] - sa["inference_count"]
        queued = sb["queue_count"] - sa["queue_count"]
        # Per execution: batch_stats count executions of each size and their compute time (Triton's semantics;
        # inference_stats.compute_infer is per request, so a batch of 64 counts its time 64 times there).
        before = {size: sa["batches"].get(size, (0, 0)) for size in sb["batches"]}
        batches = {size: n - before[size][0] for size, (n, _) in sorted(sb["batches"].items())}
        batches = {size: n for size, n in batches.items() if n}   # size 0: all sizes (several workers)
        compute_ns = sum(ns - before[size][1] for size, (_, ns) in sb["batches"].items())
        compute_ms_by_size = {size: round((ns - before[size][1]) / 1e6 / batches[size], 1)
                              for size, (_, ns) in sb["batches"].items() if size in batches}
        return {
            "window_s": round(seconds, 2),
            "server_cpu_cores": round((b["cpu"] - a["cpu"]) / seconds, 3),
            # per thread, or with several workers per process ('python:<pid>')
            "server_threads_cpu_cores": thread_cpu_usage(self.service.pid, a["threads"], b["threads"], seconds),
            "machine_cpu_busy_fraction": round((b["system_busy"] - a["system_busy"])
                                               / max(1e-9, b["system_total"] - a["system_total"]), 3),
            "stolen_cpu_cores": round((b["system_steal"] - a["system_steal"]) / seconds, 3),
            "model_executions": executions,
            "rows": rows,
            "mean_batch_size": round(rows / executions, 2) if executions else 0,
            "batch_size_histogram": batches,
            "compute_ms_by_batch_size": compute_ms_by_size,
            "model_busy_fraction": round(compute_ns / 1e9 / seconds, 3),
            "mean_compute_ms_per_execution": round(compute_ns / 1e6 / executions, 2) if executions else 0,
            "mean_queue_ms": round((sb["queue_ns"] - sa["queue_ns"]) / 1e6 / queued, 2) if queued else 0,
        }


def prometheus_batch_size(text: str) -> dict:
    """modalmesh_batch_size histogram (since the service started): count, sum and mean."""
    values = {key: metric(text, f"modalmesh_batch_size_{key}") for key in ("count", "sum")}
    values["mean"] = round(values["sum"] / values["count"], 2) if values["count"] else 0.0
    return values


def measure_service(name: str, requests: list[bytes], args, pki: MeshHome, tmp: Path, **settings) -> dict:
    """Start the service with ``settings``, drive it with closed-loop load, stop it."""
    print(f"[{name}] starting the text service ({', '.join(f'{k}={v}' for k, v in settings.items())}) ...",
          flush=True)
    # Embeddings only: no generation model competing for memory and cores.
    with running_service("services.text", "text", pki, tmp, generation_model="", **settings) as service:
        ready_s = service.wait_serving()
        verify_service_answers(service, "A quick check that Embed answers before the load starts.")
        cert = service.client_cert
        spec = LoadSpec(target=service.target, method=EMBED_METHOD, requests=requests,
                        concurrency=args.concurrency, client_processes=args.client_processes,
                        channels_per_process=args.channels, warmup_s=args.warmup, duration_s=args.duration,
                        ca=str(cert.ca), cert=str(cert.cert), key=str(cert.key))
        probe = ServerProbe(service)
        print(f"[{name}] SERVING after {ready_s:.1f}s; {args.concurrency} callers in {args.client_processes} "
              f"client process(es), {args.warmup:g}s warm-up, {args.duration:g}s measured ...", flush=True)
        load = run_load(spec, on_window_start=probe.mark, on_window_end=probe.mark)
        server = probe.summary()
        machine_cores = server["machine_cpu_busy_fraction"] * (os.cpu_count() or 1)
        server["other_processes_cpu_cores"] = round(max(0.0, machine_cores - server["server_cpu_cores"]
                                                         - load.client_cpu_cores), 3)
        server["prometheus_batch_size_since_start"] = prometheus_batch_size(service.metrics())
        if service.process.poll() is not None:
            raise RuntimeError(f"the service exited during the run:\n{service.log_tail()}")
    return {"settings": settings, "ready_s": round(ready_s, 1), "load": load, "server": server,
            "texts_per_s": load.throughput_rps}


def encode_requests(sentences: list[str]) -> list[bytes]:
    from modalmesh.v1 import text_pb2

    return [text_pb2.EmbedRequest(texts=[s]).SerializeToString() for s in sentences]


def verify_service_answers(service, sentence: str) -> None:
    """One parsed Embed call: the bytes the load generator ignores are a real [1, 384] embedding."""
    from modalmesh.v1 import text_pb2, text_pb2_grpc

    with service.channel() as channel:
        reply = text_pb2_grpc.TextServiceStub(channel).Embed(text_pb2.EmbedRequest(texts=[sentence]), timeout=30)
    shape = list(reply.embeddings.shape)
    if shape[0] != 1 or len(reply.embeddings.data) != 4 * shape[0] * shape[1]:
        raise RuntimeError(f"unexpected Embed response shape {shape}")


# -- the run ---------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    cores = os.cpu_count() or 1
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=20.0,
                   help="measured seconds per phase (default 20; raw: half before, half after the service)")
    p.add_argument("--warmup", type=float, default=5.0, help="warm-up seconds before each measurement (default 5)")
    p.add_argument("--concurrency", type=int, default=64, help="concurrent single-text callers (default 64)")
    p.add_argument("--client-processes", type=int, default=1,
                   help="load generator processes sharing the callers (default 1; see bench/README.md)")
    p.add_argument("--channels", type=int, default=1, help="gRPC channels per client process (default 1)")
    p.add_argument("--raw-batch", type=int, default=32, help="batch size of the raw in-process phase (default 32)")
    p.add_argument("--raw-extra", default="1,64",
                   help="other raw batch sizes measured briefly for context, comma-separated ('' for none)")
    p.add_argument("--threads", type=int, default=cores,
                   help=f"model threads, raw and MODALMESH_MODEL_THREADS (default: the cores, {cores})")
    p.add_argument("--instances", type=int,
                   help="MODALMESH_MODEL_INSTANCES for the service (default: the service's own default); the "
                        "service then gets --threads / instances threads per instance. Raw stays one instance")
    p.add_argument("--workers", type=int, default=1,
                   help="MODALMESH_WORKERS for the service (default 1): server processes sharing the port, each "
                        "with --threads / workers model threads; give the clients at least as many connections "
                        "(--client-processes x --channels)")
    p.add_argument("--max-batch-size", type=int, default=64, help="MODALMESH_MAX_BATCH_SIZE when batching (64)")
    p.add_argument("--max-queue-delay-ms", type=float, default=2.0, help="MODALMESH_MAX_QUEUE_DELAY_MS (2)")
    p.add_argument("--sentences", type=int, default=2048, help="distinct sentences (default 2048)")
    p.add_argument("--seed", type=int, default=20261127, help="seed of the sentences")
    p.add_argument("--skip-unbatched", action="store_true", help="only raw and batched (no batched/unbatched ratio)")
    p.add_argument("--out", type=Path, help="JSON record path (default bench/results/embed_batching-<UTC>.json)")
    p.add_argument("--model", default="all-MiniLM-L6-v2",
                   help="MODALMESH_EMBEDDING_MODEL: registered name, Hugging Face id or local path")
    p.add_argument("--device", default="cpu", help="MODALMESH_DEVICE: cpu, cuda, cuda:N (default cpu)")
    p.add_argument("--runtime", choices=("auto", "onnxruntime", "torch"), default="auto",
                   help="MODALMESH_EMBEDDING_RUNTIME, here and in the raw phase (default auto: ONNX Runtime on the CPU)")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    return p.parse_args(argv)


def machine_idle_check(seconds: float = 2.0) -> dict:
    """How busy the machine is before the benchmark starts (other processes share its cores)."""
    busy0, total0, _ = system_cpu_seconds()
    time.sleep(seconds)
    busy1, total1, _ = system_cpu_seconds()
    fraction = (busy1 - busy0) / max(1e-9, total1 - total0)
    return {"seconds": seconds, "busy_cores": round(fraction * (os.cpu_count() or 1), 3),
            "loadavg": Path("/proc/loadavg").read_text().split()[:3]}


def main(argv=None) -> int:
    args = parse_args(argv)
    exit_cleanly_on_sigterm()
    sentences = make_sentences(args.sentences, args.seed)
    words = [len(s.split()) for s in sentences]
    record = {
        "benchmark": "embed_batching",
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_description(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "sentences": {"count": len(sentences), "seed": args.seed, "words_mean": round(sum(words) / len(words), 1),
                      "words_min": min(words), "words_max": max(words), "example": sentences[0]},
        "targets": {"batched_vs_raw": TARGET_VS_RAW, "batched_vs_unbatched": TARGET_VS_UNBATCHED},
    }
    print(f"{len(sentences)} sentences, {min(words)}-{max(words)} words (mean {record['sentences']['words_mean']}), "
          f"seed {args.seed}; {os.cpu_count()} cores, model threads {args.threads}", flush=True)

    record["idle_check"] = idle = machine_idle_check()
    if idle["busy_cores"] > 0.2:
        print(f"WARNING: other processes keep {idle['busy_cores']:.2f} of {os.cpu_count()} cores busy before the "
              "run; the numbers will be lower and noisier than on a quiet machine", flush=True)
    extra = tuple(int(b) for b in args.raw_extra.split(",") if b.strip())
    print(f"[raw] SentenceEmbedder.run_batch, batch {args.raw_batch}, in this process: half of the time now, "
          "half after the service phases ...", flush=True)
    model = RawModel(sentences, args.threads, args.model, args.device, args.runtime)
    record["machine"]["torch"] = model.torch_version
    record["model"] = dataclasses.asdict(model.embedder.describe())
    sessions = [model.session(args.raw_batch, extra, args.warmup, args.duration / 2)]
    print_raw_session("before", sessions[0])

    requests = encode_requests(sentences)
    common = {"model_threads": args.threads, "max_batch_size": args.max_batch_size,
              "max_queue_delay_ms": args.max_queue_delay_ms, "embedding_model": args.model, "device": args.device,
              "embedding_runtime": args.runtime}
    if args.instances:
        common.update(model_instances=args.instances, model_threads=max(1, args.threads // args.instances))
    if args.workers > 1:
        common.update(workers=args.workers, model_threads=max(1, common["model_threads"] // args.workers))
    with _common.temporary_directory("modalmesh-bench-") as tmp:
        pki = MeshHome(Path(tmp))
        record["batched"] = measure_service("batched", requests, args, pki, Path(tmp),
                                            dynamic_batching="true", **common)
        print_phase("batched", record["batched"])
        if not args.skip_unbatched:
            record["unbatched"] = measure_service("unbatched", requests, args, pki, Path(tmp),
                                                  dynamic_batching="false", **common)
            print_phase("unbatched", record["unbatched"])

    sessions.append(model.session(args.raw_batch, extra, args.warmup, args.duration / 2))
    print_raw_session("after", sessions[1])
    model.close()
    record["raw"] = raw = combine_raw(sessions, model.facts)
    if abs(raw["drift"]) > 0.1:
        print(f"WARNING: the raw model's speed changed by {raw['drift']:+.0%} between before and after the service "
              "phases: the machine's speed drifted during the run (shared host); ratios use the mean", flush=True)

    record["disturbed"] = disturbed = disturbance(record)
    if disturbed:
        print(f"WARNING: other processes or the hypervisor took CPU during {', '.join(disturbed)}; rerun on a "
              "quiet machine before quoting these numbers", flush=True)
    passed = report(record)
    path = write_record("embed_batching", record, args.out)
    print(f"record: {path}")
    return 0 if passed or not args.check else 1


def disturbance(record: dict, limit_cores: float = 0.05) -> list[str]:
    """Phases during which other processes, or the hypervisor (steal), took more than ``limit_cores``."""
    phases = [("raw", record["raw"])] + [(name, record[name]["server"]) for name in ("batched", "unbatched")
                                         if name in record]
    return [name for name, p in phases
            if p["other_processes_cpu_cores"] > limit_cores or p["stolen_cpu_cores"] > limit_cores]


def print_raw_session(when: str, session: dict) -> None:
    main = session["main"]
    print(f"[raw {when}] {main['texts_per_s']:.1f} texts/s at batch {main['batch']} (other processes "
          f"{main['other_processes_cpu_cores']:.2f} cores, stolen {main['stolen_cpu_cores']:.2f}); "
          + ", ".join(f"batch {o['batch']}: {o['texts_per_s']:.1f}/s" for o in session["other_batch_sizes"]),
          flush=True)


def print_phase(name: str, phase: dict) -> None:
    load, server = phase["load"], phase["server"]
    lat = load.latency_ms
    errors = f", errors {load.errors}" if load.errors else ""
    print(f"[{name}] {load.throughput_rps:.1f} texts/s, latency p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms"
          f"{errors}; mean batch {server['mean_batch_size']}, model busy {server['model_busy_fraction']:.0%}, "
          f"server {server['server_cpu_cores']:.2f} cores, clients {load.client_cpu_cores:.2f} cores, "
          f"other processes {server['other_processes_cpu_cores']:.2f} cores, stolen "
          f"{server['stolen_cpu_cores']:.2f}", flush=True)
    print(f"[{name}] server threads (cores): {server['server_threads_cpu_cores']}", flush=True)


def report(record: dict) -> bool:
    raw = record["raw"]["texts_per_s"]
    batched = record["batched"]["texts_per_s"]
    ratios = {"batched_vs_raw": round(batched / raw, 3)}
    checks = [("batched / raw", ratios["batched_vs_raw"], TARGET_VS_RAW)]
    if "unbatched" in record:
        unbatched = record["unbatched"]["texts_per_s"]
        ratios["batched_vs_unbatched"] = round(batched / unbatched, 3) if unbatched else float("inf")
        checks.append(("batched / unbatched", ratios["batched_vs_unbatched"], TARGET_VS_UNBATCHED))
    by_batch = {o["batch"]: o["texts_per_s"] for o in record["raw"]["other_batch_sizes"]}
    if 1 in by_batch:   # what batching can give at most on this hardware: the model's own gain over batch 1
        ratios["raw_vs_raw_batch1"] = round(raw / by_batch[1], 3)
    record["ratios"] = ratios
    record["passed"] = {name.replace(" / ", "_vs_"): value >= target for name, value, target in checks}
    print()
    print(f"{'phase':<12}{'texts/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"{'raw':<12}{raw:>10.1f}{'':>10}{'':>10}")
    for phase in ("batched", "unbatched"):
        if phase in record:
            lat = record[phase]["load"].latency_ms
            print(f"{phase:<12}{record[phase]['texts_per_s']:>10.1f}{lat.get('p50', 0):>10.1f}"
                  f"{lat.get('p99', 0):>10.1f}")
    print()
    for name, value, target in checks:
        print(f"{name:<22}{value:>7.3f}  target >= {target:<5g} {'PASS' if value >= target else 'FAIL'}")
    if "raw_vs_raw_batch1" in ratios:
        print(f"(context: the raw model itself gains {ratios['raw_vs_raw_batch1']:.2f}x from batch 1 to batch "
              f"{record['raw']['batch']} on this machine)")
    return all(record["passed"].values())


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; the services it started are stopped", file=sys.stderr)
        sys.exit(130)
