"""Drive a modalmesh service with NVIDIA's own tritonclient over mutual TLS; print what it saw as JSON.

Runs inside the tritonclient virtual environment (tritonclient pins protobuf < 7):
    python drive.py HOST:PORT CA CERT KEY MODEL
"""

import json
import queue
import sys

import numpy as np
import tritonclient.grpc as triton

url, ca, cert, key, model = sys.argv[1:6]
client = triton.InferenceServerClient(url=url, ssl=True, root_certificates=ca, private_key=key,
                                      certificate_chain=cert)
texts = np.array([[b"The conveyor belt stopped."], [b"Line 3 halted unexpectedly."], [b"Lunch is at noon."]],
                 dtype=object)


def make_inputs():
    text = triton.InferInput("TEXT", list(texts.shape), "BYTES")
    text.set_data_from_numpy(texts)
    return [text]


result = client.infer(model, make_inputs(), outputs=[triton.InferRequestedOutput("EMBEDDING")])
embedding = result.as_numpy("EMBEDDING")

# Streaming: the decoupled-capable bidirectional API Triton's generators use.
replies: queue.Queue = queue.Queue()
client.start_stream(callback=lambda result, error: replies.put((result, error)))
for i in range(3):
    client.async_stream_infer(model, make_inputs(), request_id=f"stream-{i}")
streamed = [replies.get(timeout=30) for _ in range(3)]
client.stop_stream()

stats = client.get_inference_statistics(model, as_json=True)
print(json.dumps({
    "live": client.is_server_live(),
    "ready": client.is_server_ready(),
    "model_ready": client.is_model_ready(model),
    "server": client.get_server_metadata(as_json=True),
    "index": client.get_model_repository_index(as_json=True),
    "metadata": client.get_model_metadata(model, as_json=True),
    "config": client.get_model_config(model, as_json=True),
    "embedding": embedding.tolist(),
    "shape": list(embedding.shape),
    "streamed_ids": sorted(r.get_response().id for r, e in streamed if e is None),
    "stream_errors": [str(e) for r, e in streamed if e is not None],
    "statistics": stats,
}))
