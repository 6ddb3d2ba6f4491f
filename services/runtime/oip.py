"""Open Inference Protocol v2 servicer, with the Triton extensions real clients call.

Every service exposes its models here as tensors, so tritonclient, perf_analyzer and
KServe clients work against any modalmesh service. Requests go through the same
batcher as the typed API, so both kinds of caller share batches.

A decoupled model (a token generator) answers one request with many responses: on
ModelStreamInfer each carries the next piece of output and the parameter
``triton_final_response``, true on the last, as Triton's decoupled models do.
"""

from __future__ import annotations

import asyncio
import logging
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from inference import grpc_service_pb2 as oip
from inference import grpc_service_pb2_grpc as oip_grpc
from inference import model_config_pb2 as mc
from services.runtime.adapter import TensorSpec
from services.runtime.errors import InvalidArgument, NotFound, ServiceError, Unavailable
from services.runtime.served_model import ServedModel
from services.runtime.tensors import config_datatype, decode_input, encode_output

log = logging.getLogger(__name__)
EXTENSIONS = ["model_configuration", "statistics", "model_repository(index)", "binary_tensor_data"]
SERVICE_NAME = "inference.GRPCInferenceService"


def _package_version() -> str:
    try:
        return version("modalmesh")
    except PackageNotFoundError:
        return "0"


class InferenceServicer(oip_grpc.GRPCInferenceServiceServicer):
    def __init__(self, server_name: str, models: list[ServedModel]):
        self.server_name = server_name
        self.models = {m.name: m for m in models}

    # -- health and metadata -----------------------------------------------------------------

    async def ServerLive(self, request, context):
        return oip.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return oip.ServerReadyResponse(ready=all(m.ready for m in self.models.values()))

    async def ModelReady(self, request, context):
        return oip.ModelReadyResponse(ready=self._model(request.name, request.version).ready)

    async def ServerMetadata(self, request, context):
        return oip.ServerMetadataResponse(name=self.server_name, version=_package_version(), extensions=EXTENSIONS)

    async def ModelMetadata(self, request, context):
        model = self._model(request.name, request.version)
        batch = [-1] if model.max_batch_size else []
        return oip.ModelMetadataResponse(
            name=model.name, versions=[model.version], platform="modalmesh",
            inputs=[_metadata(spec, batch) for spec in model.inputs],
            outputs=[_metadata(spec, batch) for spec in model.outputs],
        )

    async def ModelConfig(self, request, context):
        model = self._model(request.name, request.version)
        return oip.ModelConfigResponse(config=_config_of(model))

    async def ModelStatistics(self, request, context):
        models = [self._model(request.name, request.version)] if request.name else list(self.models.values())
        return oip.ModelStatisticsResponse(model_stats=[_statistics_of(m) for m in models])

    async def RepositoryIndex(self, request, context):
        return oip.RepositoryIndexResponse(models=[
            oip.RepositoryIndexResponse.ModelIndex(name=m.name, version=m.version, state=m.state, reason=m.reason)
            for m in self.models.values() if m.ready or not request.ready
        ])

    # -- inference ---------------------------------------------------------------------------

    async def ModelInfer(self, request, context):
        model = self._model(request.model_name, request.model_version)
        if model.decoupled:
            return await self._infer_whole(model, request, context)
        return await self._infer(request, context)

    async def ModelStreamInfer(self, request_iterator, context):
        """Requests on one stream run concurrently (so they batch); responses come as each finishes."""
        responses: asyncio.Queue = asyncio.Queue()
        pending: set[asyncio.Task] = set()

        async def answer(request):
            try:
                model = self._model(request.model_name, request.model_version)
                if model.decoupled:
                    async for response in self._stream(model, request, context):
                        await responses.put(oip.ModelStreamInferResponse(infer_response=response))
                else:
                    await responses.put(oip.ModelStreamInferResponse(
                        infer_response=await self._infer(request, context)))
            except ServiceError as error:
                await responses.put(oip.ModelStreamInferResponse(error_message=f"{error.code.name}: {error.message}"))
            except Exception:   # one failed request must not end the others on this stream
                log.exception("stream inference failed", extra={"model": request.model_name})
                await responses.put(oip.ModelStreamInferResponse(error_message="INTERNAL: see the service log"))

        async def read_requests():
            async for request in request_iterator:
                task = asyncio.ensure_future(answer(request))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*list(pending))
            await responses.put(None)

        reader = asyncio.ensure_future(read_requests())
        try:
            while (response := await responses.get()) is not None:
                yield response
        finally:
            reader.cancel()
            for task in list(pending):
                task.cancel()

    async def _infer(self, request: oip.ModelInferRequest, context) -> oip.ModelInferResponse:
        model = self._model(request.model_name, request.model_version)
        if not model.ready:
            raise Unavailable(f"model {model.name} is {model.state.lower()}")
        arrays = _decode_inputs(request, model)
        requested = _requested_outputs(request, model)
        rows = model.adapter.rows_from_tensors(arrays)
        results = await model.infer(rows, context)
        outputs = model.adapter.tensors_from_results(results)
        response = _response_to(model, request)
        _add_outputs(response, model, outputs, requested)
        return response

    def _deltas(self, model, request: oip.ModelInferRequest, context):
        """A decoupled model's stream of deltas for this request, and the outputs asked for."""
        if not model.ready:
            raise Unavailable(f"model {model.name} is {model.state.lower()}")
        arrays = _decode_inputs(request, model)
        requested = _requested_outputs(request, model)
        prompt_ids, params = model.request_from_tensors(arrays)
        return model.stream(prompt_ids, params, context), requested

    async def _infer_whole(self, model, request: oip.ModelInferRequest, context) -> oip.ModelInferResponse:
        """ModelInfer on a decoupled model: the whole stream's text in one response."""
        deltas, requested = self._deltas(model, request, context)
        text, last = "", None
        async for last in deltas:
            text += last.text
        response = _response_to(model, request)
        _add_outputs(response, model, {"text_output": np.array([text.encode()], dtype=object)}, requested)
        _add_finish(response, last)
        return response

    async def _stream(self, model, request: oip.ModelInferRequest, context):
        """The responses of a decoupled model: one per text delta, the last flagged final."""
        deltas, requested = self._deltas(model, request, context)
        empty_final = request.parameters["enable_empty_final_response"].bool_param
        async for delta in deltas:
            last = delta.finish_reason is not None
            if delta.text or not (last and empty_final):
                data = _response_to(model, request)
                _add_outputs(data, model, {"text_output": np.array([delta.text.encode()], dtype=object)}, requested)
                ends_here = last and not empty_final
                if ends_here:
                    _add_finish(data, delta)
                data.parameters["triton_final_response"].bool_param = ends_here
                yield data
            if last and empty_final:   # tritonclient's convention: an empty response ends the stream
                final = _response_to(model, request)
                _add_finish(final, delta)
                final.parameters["triton_final_response"].bool_param = True
                yield final

    def _model(self, name: str, version: str = "") -> ServedModel:
        model = self.models.get(name)
        if model is None:
            raise NotFound(f"unknown model {name!r}; this server has {sorted(self.models)}")
        if version and version != model.version:
            raise NotFound(f"model {name!r} has no version {version!r}; it has {model.version!r}")
        return model


def _response_to(model, request: oip.ModelInferRequest) -> oip.ModelInferResponse:
    return oip.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)


def _add_outputs(response: oip.ModelInferResponse, model, outputs: dict, requested: set[str]) -> None:
    for spec in model.outputs:
        if spec.name in requested:
            tensor, raw = encode_output(spec.name, np.asarray(outputs[spec.name]), spec.datatype)
            response.outputs.append(tensor)
            response.raw_output_contents.append(raw)


def _add_finish(response: oip.ModelInferResponse, delta) -> None:
    """Why the generation ended and what it used, as response parameters."""
    response.parameters["finish_reason"].string_param = delta.finish_reason
    response.parameters["completion_tokens"].int64_param = delta.completion_tokens
    response.parameters["prompt_tokens"].int64_param = delta.prompt_tokens


def _metadata(spec: TensorSpec, batch: list[int]) -> oip.ModelMetadataResponse.TensorMetadata:
    return oip.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype=spec.datatype,
                                                    shape=batch + list(spec.shape))


def _decode_inputs(request: oip.ModelInferRequest, model) -> dict[str, np.ndarray]:
    specs = {spec.name: spec for spec in model.inputs}
    names = [t.name for t in request.inputs]
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise InvalidArgument(("inputs", f"unknown input {unknown[0]!r}; model {model.name} takes {sorted(specs)}"))
    required = sorted(name for name, spec in specs.items() if not spec.optional)
    missing = sorted(set(required) - set(names))
    if missing or len(set(names)) != len(names):
        raise InvalidArgument(("inputs", f"model {model.name} needs each of {required} exactly once"
                                         + (f" (and may take {sorted(set(specs) - set(required))})"
                                            if len(required) < len(specs) else "")))
    if request.raw_input_contents and len(request.raw_input_contents) != len(request.inputs):
        raise InvalidArgument(("raw_input_contents", f"{len(request.raw_input_contents)} entries for "
                                                     f"{len(request.inputs)} inputs"))
    arrays = {}
    for i, tensor in enumerate(request.inputs):
        field = f"inputs[{i}]"
        spec = specs[tensor.name]
        if tensor.datatype != spec.datatype:
            raise InvalidArgument((f"{field}.datatype", f"input {spec.name} is {spec.datatype}, "
                                                        f"not {tensor.datatype or 'unset'}"))
        _check_shape(field, list(tensor.shape), spec, model.max_batch_size)
        raw = request.raw_input_contents[i] if request.raw_input_contents else None
        arrays[tensor.name] = decode_input(tensor, raw, field)
    return arrays


def _check_shape(field: str, shape: list[int], spec: TensorSpec, max_batch: int) -> None:
    """[batch, *spec.shape], -1 matching any size; [batch] alone is accepted for a spec of shape [1].

    A model without a batch dimension (max_batch 0) takes spec.shape itself, or [1, *spec.shape].
    """
    expected = list(spec.shape)
    if max_batch == 0:
        if shape in (expected, [1, *expected]) and -1 not in expected:
            return
        raise InvalidArgument((f"{field}.shape", f"shape {shape} does not match {expected} of input {spec.name}"))
    body = shape[1:]
    if expected == [1] and len(shape) == 1:
        body = [1]
    fits = len(shape) >= 1 and len(body) == len(expected) and all(e == -1 or e == d for e, d in zip(expected, body))
    if not fits:
        raise InvalidArgument((f"{field}.shape", f"shape {shape} does not match [-1, {', '.join(map(str, expected))}]"
                                                 f" of input {spec.name}"))
    if not 1 <= shape[0] <= max_batch:
        raise InvalidArgument((f"{field}.shape", f"batch of {shape[0]} outside 1..{max_batch} (max_batch_size)"))


def _requested_outputs(request: oip.ModelInferRequest, model) -> set[str]:
    known = {spec.name for spec in model.outputs}
    asked = {o.name for o in request.outputs}
    if asked - known:
        raise InvalidArgument(("outputs", f"unknown output {sorted(asked - known)[0]!r}; "
                                          f"model {model.name} gives {sorted(known)}"))
    return asked or known


def _config_of(model) -> mc.ModelConfig:
    if model.decoupled:
        return _decoupled_config_of(model)
    batching = model.batcher.config
    description = model.description if model.ready else None
    on_gpu = bool(description and description.device.startswith("cuda"))
    config = mc.ModelConfig(
        name=model.name, platform="modalmesh", backend=_backend_of(description),
        max_batch_size=batching.max_batch_size,
        input=[mc.ModelInput(name=s.name, data_type=config_datatype(s.datatype), dims=list(s.shape))
               for s in model.adapter.inputs],
        output=[mc.ModelOutput(name=s.name, data_type=config_datatype(s.datatype), dims=list(s.shape))
                for s in model.adapter.outputs],
        instance_group=[mc.ModelInstanceGroup(count=batching.instances, kind=mc.ModelInstanceGroup.KIND_GPU if on_gpu
                                              else mc.ModelInstanceGroup.KIND_CPU)],
    )
    if batching.enabled:
        config.dynamic_batching.CopyFrom(mc.ModelDynamicBatching(
            max_queue_delay_microseconds=int(batching.max_queue_delay_s * 1e6),
            default_queue_policy=mc.ModelQueuePolicy(max_queue_size=batching.max_queue_size),
        ))
    _describe_in(config, description)
    return config


def _decoupled_config_of(model) -> mc.ModelConfig:
    """A token generator: no batch dimension on the wire (it batches inside), many responses per request."""
    description = model.description if model.ready else None
    on_gpu = bool(description and description.device.startswith("cuda"))
    config = mc.ModelConfig(
        name=model.name, platform="modalmesh", backend=_backend_of(description), max_batch_size=0,
        input=[mc.ModelInput(name=s.name, data_type=config_datatype(s.datatype), dims=list(s.shape),
                             optional=s.optional) for s in model.inputs],
        output=[mc.ModelOutput(name=s.name, data_type=config_datatype(s.datatype), dims=list(s.shape))
                for s in model.outputs],
        instance_group=[mc.ModelInstanceGroup(count=1, kind=mc.ModelInstanceGroup.KIND_GPU if on_gpu
                                              else mc.ModelInstanceGroup.KIND_CPU)],
        model_transaction_policy=mc.ModelTransactionPolicy(decoupled=True),
    )
    config.parameters["max_active_sequences"].string_value = str(model.limits.max_active)
    _describe_in(config, description)
    return config


def _backend_of(description) -> str:
    """Triton's name for what executes the model: "onnxruntime" where the service chose it, else PyTorch."""
    return "onnxruntime" if description and description.runtime.startswith("onnxruntime") else "pytorch"


def _describe_in(config: mc.ModelConfig, description) -> None:
    if description:
        for key in ("version", "provenance", "device", "dtype", "runtime"):
            if getattr(description, key):
                config.parameters[key].string_value = getattr(description, key)


def _statistics_of(model) -> oip.ModelStatistics:
    if model.decoupled:
        stats = model.engine.stats
        return oip.ModelStatistics(name=model.name, version=model.version, inference_count=model.requests,
                                   execution_count=stats.steps + stats.prompts)
    stats = model.batcher.stats

    def duration(d) -> oip.StatisticDuration:
        return oip.StatisticDuration(count=d.count, ns=d.ns)

    return oip.ModelStatistics(
        name=model.name, version=model.version, last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count, execution_count=stats.execution_count,
        inference_stats=oip.InferStatistics(success=duration(stats.success), fail=duration(stats.fail),
                                            queue=duration(stats.queue), compute_infer=duration(stats.compute_infer)),
        batch_stats=[oip.InferBatchStatistics(batch_size=size, compute_infer=duration(d))
                     for size, d in sorted(stats.batches.items())],
    )
