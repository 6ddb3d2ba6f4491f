"""Stream tokens from a modalmesh generator with NVIDIA's tritonclient (decoupled ModelStreamInfer).

Runs inside the tritonclient virtual environment; prints what it saw as JSON:
    python stream_generate.py HOST:PORT CA CERT KEY MODEL PROMPT SAMPLING_JSON
"""

import json
import queue
import sys

import numpy as np
import tritonclient.grpc as triton

url, ca, cert, key, model, prompt, sampling = sys.argv[1:8]
client = triton.InferenceServerClient(url=url, ssl=True, root_certificates=ca, private_key=key,
                                      certificate_chain=cert)


def inputs():
    text = triton.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([prompt.encode()], dtype=object))
    parameters = triton.InferInput("sampling_parameters", [1], "BYTES")
    parameters.set_data_from_numpy(np.array([sampling.encode()], dtype=object))
    return [text, parameters]


replies: queue.Queue = queue.Queue()
client.start_stream(callback=lambda result, error: replies.put((result, error)))
client.async_stream_infer(model, inputs(), request_id="story-1", enable_empty_final_response=True)
pieces, errors, final = [], [], None
while final is None:
    result, error = replies.get(timeout=60)
    if error is not None:
        errors.append(str(error))
        break
    response = result.get_response()
    params = response.parameters
    if response.outputs:
        pieces.append(result.as_numpy("text_output")[0].decode())
    if params["triton_final_response"].bool_param:
        final = {"finish_reason": params["finish_reason"].string_param,
                 "completion_tokens": params["completion_tokens"].int64_param, "id": response.id}
client.stop_stream()

whole = client.infer(model, inputs())
print(json.dumps({
    "pieces": pieces,
    "errors": errors,
    "final": final,
    "whole": whole.as_numpy("text_output")[0].decode(),
    "config": client.get_model_config(model, as_json=True),
}))
