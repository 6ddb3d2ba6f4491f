"""TextService.Generate over mutual TLS: token streams from a real Hugging Face causal LM.

The model is built and saved by the tests (tests/tiny_lm.py) and placed in a Hugging Face cache
folder, so the service loads it by id through `from_pretrained(..., local_files_only=True)`, the
path a user's model id takes (in Kubernetes, from the model-cache volume). Outputs are checked
against the same model's own `generate()` in this process.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import grpc
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from modalmesh.v1 import text_pb2, text_pb2_grpc
from services.runtime.errors import bad_request_of
from tests.support import ROOT, install_in_hub_cache, metric, start_service, wait_for
from tests.tiny_lm import build_tiny_llama

pytestmark = pytest.mark.slow
MODEL_ID = "modalmesh-tests/tiny-llama"
SERVED_NAME = "tiny-llama"
TRITON_PYTHON = ROOT / ".venv-tritonclient" / "bin" / "python"
PROMPTS = [f"Robot {i} walked to the harbour" + " and counted ships" * (i % 4) for i in range(32)]



@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama", context=2048)


@pytest.fixture(scope="module")
def generation(pki, tmp_path_factory, model_dir):
    hf_home = tmp_path_factory.mktemp("hf-home")
    install_in_hub_cache(model_dir, hf_home, MODEL_ID)
    service = start_service("services.text", pki, tmp_path_factory.mktemp("generate"), "text",
                            generation_model=MODEL_ID, generation_max_new_tokens=4096,
                            environment={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})
    yield service
    assert service.stop() == 0, service.log_tail()


@pytest.fixture(scope="module")
def reference(model_dir):
    """The same model in this process: what greedy decoding must produce."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)

    def greedy_ids(ids: list[int], max_new_tokens: int) -> list[int]:
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False)
        return out[0, len(ids):].tolist()

    def greedy(ids: list[int], max_new_tokens: int) -> str:
        return tokenizer.decode(greedy_ids(ids, max_new_tokens), skip_special_tokens=True)

    greedy.ids = greedy_ids
    return tokenizer, greedy


def greedy(max_new_tokens: int, **extra) -> text_pb2.SamplingParameters:
    return text_pb2.SamplingParameters(temperature=0, max_new_tokens=max_new_tokens, **extra)


def generate(service, request: text_pb2.GenerateRequest, timeout: float = 60) -> list[text_pb2.GenerateResponse]:
    with service.channel() as channel:
        return list(text_pb2_grpc.TextServiceStub(channel).Generate(request, timeout=timeout))


def joined(replies) -> str:
    return "".join(r.text for r in replies)


def all_at_once(service, requests: list[text_pb2.GenerateRequest]) -> list[str]:
    """Every request's text, all streamed concurrently over one channel."""
    async def together():
        async with service.aio_channel() as channel:
            stub = text_pb2_grpc.TextServiceStub(channel)

            async def one(request):
                return joined([r async for r in stub.Generate(request, timeout=120)])

            return await asyncio.gather(*(one(r) for r in requests))

    return asyncio.run(together())


def engine_metric(service, name: str, **labels) -> float:
    return metric(service.metrics(), name, model=SERVED_NAME, **labels)


# -- streaming ------------------------------------------------------------------------------------

def test_tokens_stream_and_match_the_models_own_greedy_generate(generation, reference):
    tokenizer, expected = reference
    replies = generate(generation, text_pb2.GenerateRequest(prompt=PROMPTS[1], sampling=greedy(24)))
    assert len(replies) > 3, "tokens arrive as a stream, not one message"
    first, last = replies[0], replies[-1]
    assert first.model.name == SERVED_NAME and "Hugging Face" in first.model.provenance
    assert all(not r.HasField("model") for r in replies[1:])
    assert last.finish_reason in (text_pb2.FINISH_REASON_LENGTH, text_pb2.FINISH_REASON_STOP)
    assert all(r.finish_reason == text_pb2.FINISH_REASON_UNSPECIFIED for r in replies[:-1])
    prompt_ids = tokenizer(PROMPTS[1])["input_ids"]
    assert last.usage.prompt_tokens == len(prompt_ids)
    assert last.usage.completion_tokens == last.completion_tokens == sum(r.token_count for r in replies)
    assert joined(replies) == expected(prompt_ids, 24)


def test_chat_is_rendered_with_the_tokenizers_template(generation, reference):
    tokenizer, expected = reference
    chat = [text_pb2.ChatMessage(role="system", content="Be brief."),
            text_pb2.ChatMessage(role="user", content="Tell me about the harbour.")]
    replies = generate(generation, text_pb2.GenerateRequest(chat=text_pb2.Chat(messages=chat), sampling=greedy(16)))
    rendered = tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in chat],
                                             add_generation_prompt=True, tokenize=False)
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert replies[-1].usage.prompt_tokens == len(ids)
    assert joined(replies) == expected(ids, 16)


def test_thirty_two_concurrent_streams_match_each_request_alone(generation):
    requests = [text_pb2.GenerateRequest(prompt=p, sampling=greedy(20 + i % 7)) for i, p in enumerate(PROMPTS)]
    alone = [joined(generate(generation, r)) for r in requests]
    batches_before = engine_metric(generation, "modalmesh_generation_decode_batch_size_count")
    rows_before = engine_metric(generation, "modalmesh_generation_decode_batch_size_sum")

    together = all_at_once(generation, requests)
    assert together == alone
    steps = engine_metric(generation, "modalmesh_generation_decode_batch_size_count") - batches_before
    rows = engine_metric(generation, "modalmesh_generation_decode_batch_size_sum") - rows_before
    assert rows / steps > 4, f"streams were not decoded together: {rows / steps:.1f} sequences per step"


def test_a_static_kv_cache_streams_what_the_model_gives_each_request_alone(pki, tmp_path, model_dir, reference):
    """Preallocated key/value buffers (CUDA graphs on a GPU) of 64 columns: the same tokens, at most 64 of them."""
    tokenizer, expected = reference
    columns = 64
    service = start_service("services.text", pki, tmp_path, "text", generation_model=str(model_dir),
                            generation_kv_cache="static", generation_cache_tokens=columns)
    try:
        ready = [record for line in service.log().splitlines() if '"model ready"' in line
                 and (record := json.loads(line)).get("model") == SERVED_NAME]
        assert ready and ready[0]["kv_cache"] == "static" and ready[0]["token_limit"] == columns
        # Every eighth request asks for more than the cache holds and ends at its last column.
        requests = [text_pb2.GenerateRequest(prompt=p, sampling=greedy(100 if i % 8 == 0 else 20 + i % 7))
                    for i, p in enumerate(PROMPTS)]
        for request, text in zip(requests, all_at_once(service, requests)):
            ids = tokenizer(request.prompt)["input_ids"]
            assert text == expected(ids, min(request.sampling.max_new_tokens, columns - len(ids)))
        with pytest.raises(grpc.RpcError) as error:
            generate(service, text_pb2.GenerateRequest(prompt="harbour " * 70, sampling=greedy(4)))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "static KV cache" in dict(bad_request_of(error.value))["prompt"]
        assert service.health() == "SERVING"
    finally:
        assert service.stop() == 0, service.log_tail()


def test_stop_text_ends_the_output_before_it(generation):
    full = joined(generate(generation, text_pb2.GenerateRequest(prompt=PROMPTS[2], sampling=greedy(40))))
    stop = full[12:15]
    assert len(stop) == 3 and full.index(stop) == 12, "pick a stop text whose first occurrence is known"
    replies = generate(generation, text_pb2.GenerateRequest(
        prompt=PROMPTS[2], sampling=greedy(40, stop=[text_pb2.StopCondition(text=stop)])))
    assert joined(replies) == full[:12]
    assert replies[-1].finish_reason == text_pb2.FINISH_REASON_STOP


def test_stop_token_ends_the_output(generation, reference):
    tokenizer, expected = reference
    generated = expected.ids(tokenizer(PROMPTS[3])["input_ids"], 30)
    stop_id = generated[5]
    replies = generate(generation, text_pb2.GenerateRequest(
        prompt=PROMPTS[3], sampling=greedy(30, stop=[text_pb2.StopCondition(token_id=stop_id)])))
    assert replies[-1].finish_reason == text_pb2.FINISH_REASON_STOP
    assert replies[-1].completion_tokens == generated.index(stop_id)  # the stop token itself is not output


def test_sampling_with_a_seed_is_reproducible(generation):
    def sampled(seed):
        sampling = text_pb2.SamplingParameters(temperature=0.9, top_p=0.9, top_k=50, max_new_tokens=30, seed=seed)
        return joined(generate(generation, text_pb2.GenerateRequest(prompt=PROMPTS[4], sampling=sampling)))

    assert sampled(11) == sampled(11)
    assert len({sampled(seed) for seed in (1, 2, 3)}) > 1


# -- cancellation and deadlines -------------------------------------------------------------------

def test_cancelling_a_stream_stops_its_generation(generation):
    tokens = lambda: engine_metric(generation, "modalmesh_generated_tokens_total")  # noqa: E731
    cancelled_before = engine_metric(generation, "modalmesh_generation_finished_total", reason="cancelled")
    before = tokens()
    with generation.channel() as channel:
        stream = text_pb2_grpc.TextServiceStub(channel).Generate(
            text_pb2.GenerateRequest(prompt="Once upon a time", sampling=greedy(2000)), timeout=120)
        for _ in range(3):
            next(stream)
        stream.cancel()
    wait_for(lambda: engine_metric(generation, "modalmesh_generation_active_sequences") == 0)
    after_cancel = tokens()
    time.sleep(0.5)
    assert tokens() == after_cancel, "the model kept stepping for a cancelled stream"
    assert after_cancel - before < 1000, f"{after_cancel - before} tokens: generation ran on after the cancel"
    assert engine_metric(generation, "modalmesh_generation_finished_total", reason="cancelled") == cancelled_before + 1


def test_a_deadline_ends_the_stream_and_frees_its_slot(generation):
    with pytest.raises(grpc.RpcError) as error:
        generate(generation, text_pb2.GenerateRequest(prompt="Once upon a time", sampling=greedy(2000)), timeout=0.3)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: engine_metric(generation, "modalmesh_generation_active_sequences") == 0)


# -- bad input --------------------------------------------------------------------------------------

BAD_REQUESTS = {
    "empty prompt": (text_pb2.GenerateRequest(prompt=""), "prompt"),
    "blank prompt": (text_pb2.GenerateRequest(prompt="   \n"), "prompt"),
    "no input": (text_pb2.GenerateRequest(sampling=greedy(5)), "input"),
    "prompt longer than the context": (text_pb2.GenerateRequest(prompt="harbour " * 3000), "prompt"),
    "max_new_tokens zero": (text_pb2.GenerateRequest(prompt="hi", sampling=greedy(0)), "sampling.max_new_tokens"),
    "max_new_tokens too many": (text_pb2.GenerateRequest(prompt="hi", sampling=greedy(5000)),
                                "sampling.max_new_tokens"),
    "negative temperature": (text_pb2.GenerateRequest(
        prompt="hi", sampling=text_pb2.SamplingParameters(temperature=-0.5)), "sampling.temperature"),
    "top_p zero": (text_pb2.GenerateRequest(prompt="hi", sampling=text_pb2.SamplingParameters(top_p=0)),
                   "sampling.top_p"),
    "unknown stop type": (text_pb2.GenerateRequest(prompt="hi", sampling=text_pb2.SamplingParameters(
        stop=[text_pb2.StopCondition()])), "sampling.stop[0]"),
    "stop token outside the vocabulary": (text_pb2.GenerateRequest(prompt="hi", sampling=text_pb2.SamplingParameters(
        stop=[text_pb2.StopCondition(token_id=10**6)])), "sampling.stop[0].token_id"),
    "unknown chat role": (text_pb2.GenerateRequest(chat=text_pb2.Chat(messages=[
        text_pb2.ChatMessage(role="wizard", content="hi")])), "chat.messages[0].role"),
    "empty chat": (text_pb2.GenerateRequest(chat=text_pb2.Chat()), "chat.messages"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_input_is_invalid_argument_naming_the_field(generation, case):
    request, field = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as error:
        generate(generation, request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [f for f, _ in bad_request_of(error.value)], bad_request_of(error.value)
    assert generation.health() == "SERVING"


def test_invalid_utf8_is_invalid_argument(generation):
    prompt_field_with_bad_bytes = b"\x0a\x03\xff\xfe\x41"  # field 1 (prompt), length 3, not UTF-8
    with generation.channel() as channel:
        call = channel.unary_stream("/modalmesh.v1.TextService/Generate")
        with pytest.raises(grpc.RpcError) as error:
            list(call(prompt_field_with_bad_bytes, timeout=10))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert generation.health() == "SERVING"


# -- the Open Inference Protocol: Triton's own client streams the tokens ----------------------------

def test_tritonclient_streams_tokens_from_the_decoupled_model(generation):
    assert TRITON_PYTHON.exists(), "make test installs .venv-tritonclient"
    greedy_json = json.dumps({"temperature": 0, "max_tokens": 24})
    cert = generation.client_cert
    done = subprocess.run([str(TRITON_PYTHON), str(ROOT / "tests" / "tritonclient" / "stream_generate.py"),
                           generation.target, str(cert.ca), str(cert.cert), str(cert.key), SERVED_NAME,
                           PROMPTS[1], greedy_json], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    typed = joined(generate(generation, text_pb2.GenerateRequest(prompt=PROMPTS[1], sampling=greedy(24))))
    assert not seen["errors"]
    assert len(seen["pieces"]) > 3 and "".join(seen["pieces"]) == typed
    assert seen["final"]["finish_reason"] in ("length", "stop") and seen["final"]["id"] == "story-1"
    assert seen["whole"] == typed
    assert seen["config"]["config"]["model_transaction_policy"]["decoupled"] is True


# -- limits -----------------------------------------------------------------------------------------

def test_past_the_queue_new_generations_are_refused_at_once(pki, tmp_path, model_dir):
    service = start_service("services.text", pki, tmp_path, "text", generation_model=str(model_dir),
                            generation_max_active=1, generation_max_waiting=1, generation_max_new_tokens=2000)
    try:
        long = text_pb2.GenerateRequest(prompt="Once upon a time", sampling=greedy(2000))
        with service.channel() as channel:
            stub = text_pb2_grpc.TextServiceStub(channel)
            running = [stub.Generate(long, timeout=60)]
            next(running[0])  # decoding: it holds the only slot
            running.append(stub.Generate(long, timeout=60))  # waiting: it fills the queue
            wait_for(lambda: engine_metric(service, "modalmesh_generation_waiting_sequences") == 1)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as error:
                next(stub.Generate(long, timeout=60))
            assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert time.monotonic() - started < 1.0
            for call in running:
                call.cancel()
        first = generate(service, text_pb2.GenerateRequest(prompt="hi", sampling=greedy(3)))
        assert first[0].model.provenance.startswith("local path")
    finally:
        assert service.stop() == 0, service.log_tail()


def test_a_service_without_a_generation_model_says_so():
    from services.runtime.errors import FailedPrecondition
    from services.text.servicer import TextServicer

    with pytest.raises(FailedPrecondition, match="MODALMESH_GENERATION_MODEL"):
        TextServicer(embedder=None, generator=None)._generator()


def test_abstractive_summaries_come_from_the_generation_model(pki, tmp_path, model_dir):
    service = start_service("services.text", pki, tmp_path, "text", generation_model=str(model_dir),
                            summary_writer="generation")
    try:
        text = " ".join(f"The harbour crane number {i} lifted containers all night." for i in range(40))
        with service.channel() as channel:
            reply = text_pb2_grpc.TextServiceStub(channel).Summarize(
                text_pb2.SummarizeRequest(text=text, method=text_pb2.SUMMARY_METHOD_ABSTRACTIVE, max_words=20),
                timeout=120)
        assert reply.method == text_pb2.SUMMARY_METHOD_ABSTRACTIVE
        assert reply.model.name == SERVED_NAME and reply.summary
        assert not reply.sentences  # written, not extracted
    finally:
        assert service.stop() == 0, service.log_tail()


def test_a_failing_model_step_ends_its_streams_with_an_error_and_the_engine_goes_on(model_dir):
    """In process: a step that raises (a lost device, say) must end the streams, not hang them."""
    import queue

    from services.text.generation_engine import GenerationEngine, SamplingParams
    from services.text.language_model import CausalLanguageModel

    lm = CausalLanguageModel(str(model_dir), device="cpu", threads=1)
    lm.load()
    engine = GenerationEngine(lm)
    engine.start()
    try:
        working = lm.model.forward

        def broken(*args, **kwargs):
            raise RuntimeError("device lost")

        lm.model.forward = broken
        deltas: queue.Queue = queue.Queue()
        engine.submit(lm.encode_prompt("hi"), SamplingParams(temperature=0, max_new_tokens=5), deltas.put)
        failed = deltas.get(timeout=30)
        assert failed.error and "device lost" in failed.error
        lm.model.forward = working
        engine.submit(lm.encode_prompt("hi"), SamplingParams(temperature=0, max_new_tokens=5), deltas.put)
        while not (delta := deltas.get(timeout=30)).finish_reason:
            assert delta.error is None
    finally:
        engine.close()


def test_model_stream_infer_without_an_empty_final_flags_the_last_data_response(generation):
    """A plain gRPC client (no enable_empty_final_response): the last text response ends the stream."""
    from inference import grpc_service_pb2 as oip
    from inference import grpc_service_pb2_grpc as oip_grpc
    from services.runtime.tensors import encode_bytes

    def request(prompt: str) -> oip.ModelInferRequest:
        import numpy as np

        message = oip.ModelInferRequest(model_name=SERVED_NAME, id="plain")
        message.inputs.add(name="text_input", datatype="BYTES", shape=[1])
        message.inputs.add(name="sampling_parameters", datatype="BYTES", shape=[1])
        message.raw_input_contents.extend([encode_bytes(np.array([prompt.encode()], dtype=object)),
                                           encode_bytes(np.array([b'{"temperature": 0, "max_tokens": 24}'],
                                                                 dtype=object))])
        return message

    with generation.channel() as channel:
        replies = list(oip_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter([request(PROMPTS[1])]),
                                                                                   timeout=60))
    assert all(not r.error_message for r in replies)
    finals = [r.infer_response.parameters["triton_final_response"].bool_param for r in replies]
    assert finals == [False] * (len(replies) - 1) + [True] and len(replies) > 3
    last = replies[-1].infer_response
    assert last.parameters["finish_reason"].string_param in ("length", "stop") and last.outputs
    text = b"".join(r.infer_response.raw_output_contents[0][4:] for r in replies).decode()
    typed = joined(generate(generation, text_pb2.GenerateRequest(prompt=PROMPTS[1], sampling=greedy(24))))
    assert text == typed
