# The challenge container: `hecktor predict --container` reads /input and writes /output, with the
# models baked in at build time (no network, no MLflow store at run time). It installs what
# `predict` needs and nothing else (no DVC, Optuna, MLflow server, lifelines or matplotlib), at the
# versions of constraints.txt. Build it from the registered champions:
#
#   hecktor export --out docker/models          # models:/hecktor-{seg,hpv,rfs}@champion
#   docker build -t hecktor .                    # CPU build of torch
#   docker run --rm --network none -v $PWD/in:/input:ro -v $PWD/out:/output hecktor
#
# On NVIDIA GPUs (NVIDIA Container Toolkit on the host), the CUDA build of the same torch:
#
#   docker build -t hecktor:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#   docker run --rm --gpus all --network none -v $PWD/in:/input:ro -v $PWD/out:/output hecktor:cuda
#
# The base image is pinned by tag; pin its digest too for bit-identical rebuilds
# (`docker buildx imagetools inspect python:3.11.11-slim-bookworm`, then FROM ...@sha256:<digest>).
FROM python:3.11.11-slim-bookworm

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/hecktor

# the models first: without them, stop here and say what to run
COPY docker/ ./docker/
RUN test -f docker/models/sources.json || { \
        echo "docker/models holds no exported models: run 'hecktor export --out docker/models' first" >&2; \
        exit 1; } \
    && mv docker/models /opt/hecktor/models && rm -rf docker

# torch first, from the chosen index, so the project's pin finds it installed
RUN pip install torch==2.13.0 --index-url ${TORCH_INDEX}

COPY pyproject.toml README.md constraints.txt ./
COPY src ./src
RUN pip install -c constraints.txt . && rm -rf src

RUN useradd --create-home --uid 1000 hecktor && mkdir -p /input /output && chown hecktor /output
USER hecktor
ENV HECKTOR_MODELS=/opt/hecktor/models

ENTRYPOINT ["hecktor", "predict", "--container"]
