"""Print, as JSON, every message field of tritonclient's compiled Open Inference Protocol protos.

Runs inside the tritonclient virtual environment; tests/test_oip_tritonclient.py
compares the result field by field with modalmesh's own protos.
"""

import json

from google.protobuf.descriptor import FieldDescriptor

def is_repeated(field) -> bool:
    # protobuf 7 has is_repeated; older releases (the tritonclient venv) only label.
    if hasattr(field, "is_repeated"):
        return field.is_repeated
    return field.label == FieldDescriptor.LABEL_REPEATED


def fields_of(message, out):
    out[message.full_name] = {
        f.name: [f.number, f.type, f.message_type.full_name if f.message_type else
                 (f.enum_type.full_name if f.enum_type else ""), is_repeated(f)]
        for f in message.fields
    }
    for nested in message.nested_types:
        fields_of(nested, out)
    for enum in message.enum_types:
        out[enum.full_name] = {v.name: [v.number] for v in enum.values}


def methods_of(file):
    return {
        s.full_name: {m.name: [m.input_type.full_name, m.output_type.full_name,
                               m.client_streaming, m.server_streaming] for m in s.methods}
        for s in file.services_by_name.values()
    }


def describe(service_module, config_module) -> dict:
    """Every message field and enum value: name → [number, type, type name, repeated] / [number]."""
    messages = {}
    for module in (service_module, config_module):
        for message in module.DESCRIPTOR.message_types_by_name.values():
            fields_of(message, messages)
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            messages[enum.full_name] = {v.name: [v.number] for v in enum.values}
    return {"messages": messages, "services": methods_of(service_module.DESCRIPTOR)}


if __name__ == "__main__":
    from tritonclient.grpc import model_config_pb2, service_pb2

    print(json.dumps(describe(service_pb2, model_config_pb2)))
