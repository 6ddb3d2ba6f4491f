# syntax=docker/dockerfile:1
# One image per workload, each a target of this file (skaffold.yaml builds them all):
#   docker build --target text --build-arg DEVICE=cpu -t modalmesh-text:cpu .
#   docker build --target text --build-arg DEVICE=cuda -t modalmesh-text:cuda .
# DEVICE=cpu installs PyTorch's CPU build, DEVICE=cuda its CUDA build; the CUDA libraries come as
# wheels, so one slim base serves both and the node's NVIDIA driver is mounted at run time.
# A workload whose model the project trains adds a stage that runs the training script and
# copies the model file into its target, so the image carries a model the build reproduced.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# -- the pinned dependencies: the pins of pyproject.toml, the same ones `make up` installs --------
FROM ${PYTHON_IMAGE} AS dependencies
ARG DEVICE=cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml ./
COPY scripts/requirements.py scripts/
# PyTorch first, from the index of the wanted build; everything else resolves against it.
RUN python scripts/requirements.py > /tmp/requirements.txt \
 && grep '^torch==' /tmp/requirements.txt > /tmp/torch.txt \
 && case "$DEVICE" in \
      cpu) pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu --requirement /tmp/torch.txt ;; \
      cuda) pip install --no-cache-dir --requirement /tmp/torch.txt ;; \
      *) echo "DEVICE must be cpu or cuda, not $DEVICE" >&2; exit 1 ;; \
    esac \
 && pip install --no-cache-dir --requirement /tmp/requirements.txt

# -- the project, installed the way `make install` does (editable, from the source tree) --------
FROM dependencies AS build
COPY . .
RUN pip install --no-cache-dir --no-deps --editable . --config-settings editable_mode=compat \
 && python -m compileall -q modalmesh services inference

# -- what every workload runs on: non-root, nothing written outside /tmp and the model cache ----
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/cache \
    HF_HOME=/models/huggingface \
    HF_HUB_OFFLINE=1
# The programs some workloads run (Debian 12's versions, the base image's): espeak-ng speaks for
# AudioService.Synthesize, mosquitto is the mqtt-broker workload's broker. A few MB for both.
RUN apt-get update \
 && apt-get install -y --no-install-recommends espeak-ng=1.51+dfsg-10+deb12u2 mosquitto=2.0.11-1.2+deb12u2 \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 modalmesh \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin modalmesh
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
USER 10001:10001
LABEL org.opencontainers.image.title="modalmesh" \
      org.opencontainers.image.licenses="Apache-2.0"

# -- one target per workload of mesh/workloads.yaml ---------------------------------------------
FROM runtime AS text
EXPOSE 50051 9464
ENTRYPOINT ["python", "-m", "services.text"]

FROM runtime AS iot
EXPOSE 50061 9474
ENTRYPOINT ["python", "-m", "services.iot"]

FROM runtime AS audio
EXPOSE 50071 9484
ENTRYPOINT ["python", "-m", "services.audio"]

FROM runtime AS vision
EXPOSE 50081 9494
ENTRYPOINT ["python", "-m", "services.vision"]

FROM runtime AS manufacturing
EXPOSE 50091 9504 8082
ENTRYPOINT ["python", "-m", "apps.manufacturing"]

FROM runtime AS healthcare
EXPOSE 50111 9524 8083
ENTRYPOINT ["python", "-m", "apps.healthcare"]

FROM runtime AS media
EXPOSE 50121 9534 8084
ENTRYPOINT ["python", "-m", "apps.media"]

FROM runtime AS mqtt-broker
EXPOSE 50101 9511 8883
ENTRYPOINT ["python", "-m", "modalmesh.broker"]

FROM runtime AS mqtt-bridge
EXPOSE 50102 9512
ENTRYPOINT ["python", "-m", "services.iot.mqtt_bridge"]

FROM runtime AS fleet-simulator
EXPOSE 50103 9513
ENTRYPOINT ["python", "-m", "apps.manufacturing.simulator"]
