# The challenge container: `hecktor predict --container` reads /input and writes /output, with the
# models baked in at build time (no network, no MLflow store at run time). Build it from the
# registered champions:
#
#   hecktor export --out docker/models          # models:/hecktor-{seg,hpv,rfs}@champion
#   docker build -t hecktor .                    # CPU build of torch
#   docker build -t hecktor --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#   docker run --rm --network none -v $PWD/in:/input:ro -v $PWD/out:/output hecktor
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# torch first, from the chosen index, so the project's pin finds it installed
RUN pip install torch==2.13.0 --index-url ${TORCH_INDEX}

WORKDIR /opt/hecktor
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . && rm -rf src

COPY docker/models /opt/hecktor/models

RUN useradd --create-home --uid 1000 hecktor && mkdir -p /input /output && chown hecktor /output
USER hecktor
ENV HECKTOR_MODELS=/opt/hecktor/models \
    MPLCONFIGDIR=/tmp/matplotlib

ENTRYPOINT ["hecktor", "predict", "--container"]
