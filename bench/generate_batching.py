"""Token generation through the text service, measured in one run against the model in-process.

Phases, in this order, on one machine, the same greedy requests everywhere:
  1. in-process   the model's own `generate()`, one request after another (what a script would do),
                  and its time to first token (a generate() of one token);
  2. continuous   `python -m services.text` serving the same model, 1, 8 and 32 concurrent
                  Generate streams over gRPC + mutual TLS (continuous batching);
  3. static       the same service with MODALMESH_GENERATION_BATCHING=static, 8 and 32 streams;
  4. other cache  continuous batching again, 1 and 32 streams, with the other KV cache layout
                  (MODALMESH_GENERATION_KV_CACHE: static, with CUDA graphs on a GPU, against dynamic).
Then: tokens/s at 32 streams / in-process sequential (target >= 4), time to first token at one
stream minus in-process (target <= 10 ms), continuous / static batching at 8 and 32 streams, and
static / dynamic KV cache at 1 and 32 streams.

    .venv/bin/python bench/generate_batching.py [--model PATH] [--requests 64] [--max-new-tokens 128]
        [--kv-cache auto|dynamic|static] [--skip-kv-cache-comparison]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (exit_cleanly_on_sigterm, machine_description, running_service,  # noqa: E402
                     temporary_directory, write_record)
from modalmesh.home import MeshHome  # noqa: E402
from modalmesh.v1 import text_pb2, text_pb2_grpc  # noqa: E402
from services.runtime.channels import secure_channel  # noqa: E402

TARGET_VS_SEQUENTIAL = 4.0
TARGET_FIRST_TOKEN_MS = 10.0
SUBJECTS = ["a fox", "a robot", "a lighthouse keeper", "two sailors", "a baker", "an old clock", "a young pilot",
            "a lost kitten", "a gardener", "a painter", "a dragon", "a fisherman"]
PLACES = ["a snowy forest", "a busy harbour", "a quiet village", "the desert", "a mountain pass", "an island",
          "a small town", "the city market"]


def prompts(count: int) -> list[str]:
    return [f"Write a story about {SUBJECTS[i % len(SUBJECTS)]} in {PLACES[(i * 5) % len(PLACES)]}."
            for i in range(count)]


def chat_request(prompt: str, max_new_tokens: int) -> text_pb2.GenerateRequest:
    return text_pb2.GenerateRequest(
        chat=text_pb2.Chat(messages=[text_pb2.ChatMessage(role="user", content=prompt)]),
        sampling=text_pb2.SamplingParameters(temperature=0, max_new_tokens=max_new_tokens))


# -- phase 1: the model in this process -----------------------------------------------------------

def in_process(model_source: str, texts: list[str], max_new_tokens: int, threads: int, device: str) -> dict:
    import torch

    from services.text.language_model import CausalLanguageModel

    lm = CausalLanguageModel(model_source, device=device, threads=threads)
    lm.load()
    ids = [lm.encode_chat([{"role": "user", "content": t}]) for t in texts]
    eos = sorted(lm.eos_token_ids)

    def run(prompt_ids: list[int], new_tokens: int) -> int:
        with torch.inference_mode():
            out = lm.model.generate(torch.tensor([prompt_ids], device=lm.device), max_new_tokens=new_tokens,
                                    do_sample=False,
                                    eos_token_id=eos, pad_token_id=lm.pad_token_id)
        generated = out[0, len(prompt_ids):].tolist()
        return next((i for i, t in enumerate(generated) if t in lm.eos_token_ids), len(generated))

    run(ids[0], 8)  # warm-up
    first_token_s = []
    for prompt_ids in ids[:16]:
        started = time.perf_counter()
        run(prompt_ids, 1)
        first_token_s.append(time.perf_counter() - started)
    started = time.perf_counter()
    tokens = sum(run(prompt_ids, max_new_tokens) for prompt_ids in ids)
    seconds = time.perf_counter() - started
    description = lm.describe()
    lm.close()
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "first_token_ms_p50": 1000 * statistics.median(first_token_s), "model": description.name,
            "provenance": description.provenance}


# -- phases 2 and 3: the service --------------------------------------------------------------------

async def drive(target: str, cert, texts: list[str], concurrency: int, max_new_tokens: int) -> dict:
    """``concurrency`` callers, each streaming its share of the requests one after another."""
    pending = list(texts)
    first_token_s, tokens, outputs = [], 0, {}

    async with secure_channel(target, cert.ca, cert.cert, cert.key, aio=True) as channel:
        stub = text_pb2_grpc.TextServiceStub(channel)

        async def caller() -> None:
            nonlocal tokens
            while pending:
                prompt = pending.pop()
                started = time.perf_counter()
                first, parts = True, []
                async for reply in stub.Generate(chat_request(prompt, max_new_tokens), timeout=600):
                    if first:
                        first_token_s.append(time.perf_counter() - started)
                        first = False
                    parts.append(reply.text)
                    if reply.finish_reason:
                        tokens += reply.usage.completion_tokens
                outputs[prompt] = "".join(parts)

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return {"concurrency": concurrency, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "first_token_ms_p50": 1000 * statistics.median(first_token_s),
            "first_token_ms_p99": 1000 * sorted(first_token_s)[int(0.99 * (len(first_token_s) - 1))],
            "outputs": outputs}


def through_service(model_source: str, texts: list[str], levels: list[int], max_new_tokens: int, threads: int,
                    batching: str, kv_cache: str, home: MeshHome, log_dir: Path, device: str) -> list[dict]:
    results = []
    with running_service("services.text", "text", home, log_dir, generation_model=model_source, device=device,
                         generation_batching=batching, generation_max_active=32, model_threads=threads,
                         generation_kv_cache=kv_cache, generation_max_new_tokens=max(1024, max_new_tokens)) as service:
        service.wait_serving()
        engine = engine_in(service.log())
        cert = home.certificate("cli")
        asyncio.run(drive(service.target, cert, texts[:4], 1, 8))  # warm-up
        for level in levels:
            # one request per caller at the single-stream level is too few to time: give it 16
            share = texts if level > 1 else texts[:16]
            result = asyncio.run(drive(service.target, cert, share, level, max_new_tokens))
            result.update(batching=batching, **engine)
            results.append(result)
            graphs = " + CUDA graphs" if engine["cuda_graphs"] else ""
            print(f"  {batching:10s} {engine['kv_cache'] + graphs:22s} {level:3d} streams: "
                  f"{result['tokens_per_s']:8.1f} tokens/s, first token p50 {result['first_token_ms_p50']:.1f} ms, "
                  f"p99 {result['first_token_ms_p99']:.1f} ms", flush=True)
    return results


def engine_in(log: str) -> dict:
    """The KV cache layout the service chose, from its "model ready" line for the generation model."""
    for line in log.splitlines():
        if line.startswith("{") and '"kv_cache"' in line:
            record = json.loads(line)
            return {"kv_cache": record["kv_cache"], "cuda_graphs": record["cuda_graphs"]}
    raise RuntimeError("the service did not say which KV cache it uses")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="storyteller", help="storyteller (default), a local path or a cached id")
    parser.add_argument("--requests", type=int, default=64, help="requests per level (the same prompts)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (model in-process and in the service)")
    parser.add_argument("--kv-cache", default="auto", choices=["auto", "dynamic", "static"],
                        help="the service's KV cache in phases 2 and 3 (auto: static on a GPU, dynamic on the CPU)")
    parser.add_argument("--skip-kv-cache-comparison", action="store_true", help="leave out phase 4")
    parser.add_argument("--out", type=Path, help="the JSON record's path (default bench/results/...)")
    args = parser.parse_args()
    exit_cleanly_on_sigterm()
    texts = prompts(args.requests)

    print(f"in-process generate(), {len(texts)} requests one after another ...", flush=True)
    local = in_process(args.model, texts, args.max_new_tokens, args.threads, args.device)
    print(f"  in-process: {local['tokens_per_s']:8.1f} tokens/s, first token p50 {local['first_token_ms_p50']:.1f} ms",
          flush=True)
    with temporary_directory("modalmesh-bench-") as tmp:
        home, log_dir = MeshHome(Path(tmp) / "home"), Path(tmp)
        service = functools.partial(through_service, args.model, texts, max_new_tokens=args.max_new_tokens,
                                    threads=args.threads, home=home, log_dir=log_dir, device=args.device)
        continuous = service([1, 8, 32], batching="continuous", kv_cache=args.kv_cache)
        static = service([8, 32], batching="static", kv_cache=args.kv_cache)
        other_cache = [] if args.skip_kv_cache_comparison else service(
            [1, 32], batching="continuous", kv_cache="dynamic" if continuous[0]["kv_cache"] == "static" else "static")

    # Greedy decoding gives each prompt one text, whatever the batch around it; in bfloat16 on a GPU a
    # different batch size may pick other kernels and, rarely, another token.
    reference = continuous[0].pop("outputs")
    for result in continuous + static + other_cache:
        outputs = result.pop("outputs", reference)
        shared = [prompt for prompt in outputs if prompt in reference]
        result["texts_as_one_stream"] = f"{sum(outputs[p] == reference[p] for p in shared)}/{len(shared)}"
    print("texts equal to the same prompt's at one stream: " + ", ".join(
        f"{r['batching']} {r['kv_cache']} {r['concurrency']}: {r['texts_as_one_stream']}"
        for r in continuous[1:] + static + other_cache))
    at = {(r["batching"], r["concurrency"]): r for r in continuous + static}
    ratios = {
        "continuous_32_vs_in_process_sequential": at[("continuous", 32)]["tokens_per_s"] / local["tokens_per_s"],
        "first_token_ms_1_stream_minus_in_process": at[("continuous", 1)]["first_token_ms_p50"]
        - local["first_token_ms_p50"],
        "continuous_vs_static_8": at[("continuous", 8)]["tokens_per_s"] / at[("static", 8)]["tokens_per_s"],
        "continuous_vs_static_32": at[("continuous", 32)]["tokens_per_s"] / at[("static", 32)]["tokens_per_s"],
    }
    for level in (1, 32) if other_cache else ():
        by_cache = {r["kv_cache"]: r for r in continuous + other_cache if r["concurrency"] == level}
        ratios[f"static_vs_dynamic_kv_cache_tokens_per_s_{level}"] = (by_cache["static"]["tokens_per_s"]
                                                                      / by_cache["dynamic"]["tokens_per_s"])
    print("\nratios, measured in this run:")
    for name, value in ratios.items():
        print(f"  {name:45s} {value:8.2f}")
    met = (ratios["continuous_32_vs_in_process_sequential"] >= TARGET_VS_SEQUENTIAL
           and ratios["first_token_ms_1_stream_minus_in_process"] <= TARGET_FIRST_TOKEN_MS)
    print(f"targets (>= {TARGET_VS_SEQUENTIAL}x sequential at 32 streams, first token within "
          f"{TARGET_FIRST_TOKEN_MS:g} ms of in-process): {'met' if met else 'NOT met'}")
    path = write_record("generate_batching", {
        "machine": machine_description(), "model": local["model"], "provenance": local["provenance"],
        "max_new_tokens": args.max_new_tokens, "requests": len(texts), "in_process": local,
        "device": args.device, "service": continuous + static + other_cache, "ratios": ratios,
        "targets_met": met}, args.out)
    print(f"record: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
