"""`modalmesh call`: any method of the mesh from a terminal, JSON in and JSON out.

Methods are found in the generated stubs' descriptors (no server reflection needed), requests are
built with json_format, and calls go through a channel's generic unary/stream callables with the
message classes' own (de)serializers. Tensors in replies are printed decoded (dtype, shape, values)
rather than as base64, so their numbers can be used straight from jq or Python.
"""

from __future__ import annotations

import base64
import importlib
import json
import pkgutil
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

TENSOR = "modalmesh.v1.Tensor"
# Stubs outside modalmesh.v1 whose services a user may call; every modalmesh.v1 module is added.
OTHER_STUB_MODULES = ("inference.grpc_service_pb2", "grpc_health.v1.health_pb2")
# Little-endian, row-major: the layout modalmesh.v1.Tensor.data is defined with.
_NUMPY_DTYPES = {"FP32": "<f4", "FP16": "<f2", "FP64": "<f8", "INT64": "<i8", "INT32": "<i4",
                 "INT16": "<i2", "INT8": "i1", "UINT8": "u1", "BOOL": "?"}


class CallError(Exception):
    """A mistake in what the user asked for (unknown method, bad JSON); exit code 2."""


@dataclass(frozen=True)
class Method:
    descriptor: MethodDescriptor

    @property
    def path(self) -> str:
        return f"/{self.descriptor.containing_service.full_name}/{self.descriptor.name}"

    @property
    def request_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.descriptor.input_type)

    @property
    def response_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.descriptor.output_type)


# -- finding the method ---------------------------------------------------------------------------

def known_services() -> dict[str, ServiceDescriptor]:
    """Every service of the imported stubs, by full name. Imported on call: no import-time work."""
    import modalmesh.v1

    names = [f"modalmesh.v1.{m.name}" for m in pkgutil.iter_modules(modalmesh.v1.__path__)
             if m.name.endswith("_pb2")]
    services = {}
    for name in [*names, *OTHER_STUB_MODULES]:
        module = importlib.import_module(name)
        services.update({s.full_name: s for s in module.DESCRIPTOR.services_by_name.values()})
    return services


def split_method_name(text: str) -> tuple[str, str]:
    """("pkg.Service", "Method") from "/pkg.Service/Method", "pkg.Service/Method" or "pkg.Service.Method"."""
    name = text.strip().lstrip("/")
    service, _, method = name.partition("/") if "/" in name else name.rpartition(".")
    if not service or not method:
        raise CallError(f"method {text!r} is not of the form package.Service/Method")
    return service, method


def resolve_method(text: str) -> Method:
    service_name, method_name = split_method_name(text)
    services = known_services()
    service = services.get(service_name)
    if service is None:
        raise CallError(f"unknown service {service_name!r}; known services: {', '.join(sorted(services))}")
    method = service.methods_by_name.get(method_name)
    if method is None:
        raise CallError(f"{service_name} has no method {method_name!r}; "
                        f"its methods: {', '.join(service.methods_by_name)}")
    return Method(method)


# -- requests -------------------------------------------------------------------------------------

def parse_requests(method: Method, text: str) -> list[Message]:
    """Request messages from JSON: one object, or for a client-streaming method an array of them."""
    try:
        doc = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as e:
        raise CallError(f"request is not JSON: {e}") from e
    docs = doc if method.descriptor.client_streaming and isinstance(doc, list) else [doc]
    try:
        return [json_format.ParseDict(d, method.request_class()) for d in docs]
    except json_format.ParseError as e:
        raise CallError(f"request does not fit {method.descriptor.input_type.full_name}: {e}") from e


# -- calling --------------------------------------------------------------------------------------

def invoke(channel: grpc.Channel, method: Method, requests: list[Message], timeout_s: float) -> Iterator[Message]:
    """Call ``method`` with the right one of the four gRPC call shapes; yields each reply."""
    d = method.descriptor
    shape = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
             (True, False): channel.stream_unary, (True, True): channel.stream_stream}
    callable_ = shape[(d.client_streaming, d.server_streaming)](
        method.path,
        request_serializer=method.request_class.SerializeToString,
        response_deserializer=method.response_class.FromString,
    )
    request = iter(requests) if d.client_streaming else requests[0]
    if d.server_streaming:
        yield from callable_(request, timeout=timeout_s)
    else:
        yield callable_(request, timeout=timeout_s)


# -- output ---------------------------------------------------------------------------------------

def message_to_dict(message: Message) -> dict:
    """proto3 JSON with the .proto's field names, and every modalmesh.v1.Tensor decoded."""
    doc = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return _decode_tensors(message, doc)


def _decode_tensors(message: Message, doc):
    descriptor: Descriptor = message.DESCRIPTOR
    if descriptor.full_name == TENSOR:
        return decode_tensor(message)
    if descriptor.full_name.startswith("google.protobuf.") or not isinstance(doc, dict):
        return doc  # well-known types have JSON forms of their own
    for field in descriptor.fields:
        if field.message_type is None or field.name not in doc:
            continue
        value = getattr(message, field.name)
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].message_type is not None:
                for key, item in value.items():
                    json_key = str(key).lower() if isinstance(key, bool) else str(key)
                    doc[field.name][json_key] = _decode_tensors(item, doc[field.name][json_key])
        elif field.is_repeated:
            doc[field.name] = [_decode_tensors(m, d) for m, d in zip(value, doc[field.name])]
        else:
            doc[field.name] = _decode_tensors(value, doc[field.name])
    return doc


def decode_tensor(tensor: Message) -> dict:
    dtype_enum = tensor.DESCRIPTOR.fields_by_name["dtype"].enum_type
    dtype = dtype_enum.values_by_number[tensor.dtype].name.removeprefix("DATA_TYPE_")
    shape = list(tensor.shape)
    try:
        return {"dtype": dtype, "shape": shape, "values": tensor_values(dtype, shape, tensor.data)}
    except ValueError as e:  # show what came rather than fail the whole reply
        return {"dtype": dtype, "shape": shape, "data": base64.b64encode(tensor.data).decode(), "error": str(e)}


def tensor_values(dtype: str, shape: list[int], data: bytes):
    """Nested lists of the tensor's values; floats in their shortest form at their own precision."""
    if dtype == "BF16":  # bfloat16 is the top half of a float32
        array = (np.frombuffer(data, "<u2").astype("<u4") << 16).view("<f4")
    elif dtype in _NUMPY_DTYPES:
        array = np.frombuffer(data, _NUMPY_DTYPES[dtype])
    else:
        raise ValueError(f"cannot decode dtype {dtype}")
    if array.dtype.kind == "f":
        # str(np.float32(x)) is its shortest exact form (0.12345679, not 0.12345679104328156).
        array = np.array([float(str(x)) for x in array], dtype=object)
    return array.reshape(shape).tolist()


def format_json(value, level: int = 0) -> str:
    """Indented JSON that keeps lists of numbers or strings on one line (embeddings stay readable)."""
    pad, end = "  " * (level + 1), "  " * level
    if isinstance(value, dict) and value:
        items = [f"{pad}{json.dumps(k)}: {format_json(v, level + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + end + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        items = [pad + format_json(v, level + 1) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + end + "]"
    return json.dumps(value, ensure_ascii=False)


def describe_rpc_error(error: grpc.RpcError) -> str:
    """Status code, message and the google.rpc details a service attached (field violations first)."""
    lines = [f"ERROR: {error.code().name}: {error.details()}"]
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # details that contradict the status: show the status alone
        status = None
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            lines += [f"  field {v.field}: {v.description}" for v in bad_request.field_violations]
        else:
            lines.append(f"  {detail.TypeName()}: {_any_to_json(detail)}")
    if error.code() == grpc.StatusCode.UNAVAILABLE:
        lines.append("  (is the mesh running? `modalmesh status` shows it)")
    return "\n".join(lines)


def _any_to_json(detail) -> str:
    try:
        return json_format.MessageToJson(detail, indent=None)
    except (TypeError, json_format.SerializeToJsonError):  # a detail type we have no stub for
        return base64.b64encode(detail.value).decode()
