# machine-sound-asd: the scoring service (FastAPI + uvicorn + onnxruntime) and its default models.
#
#   docker build -t machine-sound-asd .
#   docker run --rm -p 127.0.0.1:8000:8000 machine-sound-asd
#
# Needs BuildKit (the default builder since Docker 23; on Docker 20.10 set DOCKER_BUILDKIT=1).
# No `# syntax=` line on purpose: the builder's built-in Dockerfile frontend is enough, and
# builders without Docker Hub access cannot fetch a frontend image.
#
# Build-time only (none of it reaches the final image; see docs/docker.md):
#   --build-arg PIP_INDEX_URL=...        private package index (a PyPI mirror/proxy)
#   --build-arg PIP_EXTRA_INDEX_URL=...  additional index
#   --secret id=ca,src=corp-ca.pem       CA bundle for a TLS-intercepting proxy (PEM; give the
#                                        full bundle, e.g. /etc/ssl/certs/ca-certificates.crt)
#   --secret id=pipconf,src=pip.conf     a pip.conf, for index URLs that carry credentials

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
# builder: a venv at /opt/venv with the serving dependencies (pinned by constraints.txt) and
# the `service` package. Wheels only: nothing is compiled, so no compiler in any stage.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=120 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Dependency layer: only pyproject.toml + constraints.txt, so editing the source reuses it.
# The base `dependencies` of pyproject.toml are the service's (the `train` extra and the dev
# group stay out); constraints.txt pins them to the versions of the local setup.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
        > /tmp/requirements.txt \
    && cat /tmp/requirements.txt
RUN --mount=type=secret,id=ca,target=/run/secrets/ca \
    --mount=type=secret,id=pipconf,target=/etc/pip.conf \
    --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && pip install --only-binary=:all: -c constraints.txt -r /tmp/requirements.txt

# Source layer: the `service` package only. `training/` is not in the build context at all
# (.dockerignore), so setuptools' package discovery finds `service` alone, and neither training
# code nor its TensorFlow dependencies can end up in the image (the `asd-train` script that
# pyproject declares would only fail there, so it goes too). Installing the package, rather than
# copying the folder, gives the `asd-serve` entry point and the version metadata the service
# reports. README.md is the package's `readme` and must exist for the build. pip and
# setuptools leave the venv afterwards: nothing installs at run time.
COPY README.md ./
COPY service/ ./service/
RUN --mount=type=secret,id=ca,target=/run/secrets/ca \
    --mount=type=secret,id=pipconf,target=/etc/pip.conf \
    --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && pip install --no-deps -c constraints.txt . \
    && pip check \
    && pip uninstall --yes pip setuptools \
    && rm -f /opt/venv/bin/asd-train \
    && python -c "import service.config, service.detector" \
    && if python -c "import training" 2>/dev/null; then echo "training must not be installed" >&2; exit 1; fi

# Drop what serving never loads, which keeps the image under 300 MB: the packages' test suites,
# onnxruntime's offline tools (transformers, quantization, tools) and libonnxruntime.so, the C-API
# library for native programs: the Python binding carries its own copy of the runtime and does
# not link it (readelf -d lists no libonnxruntime). The runtime stage scores a clip to prove it.
WORKDIR /opt/venv/lib/python3.11/site-packages
RUN find . -depth -type d -name tests -prune -exec rm -rf {} + \
    && rm -rf onnxruntime/transformers onnxruntime/quantization onnxruntime/tools \
              onnxruntime/capi/libonnxruntime.so.* \
    && python -c "import numpy, onnxruntime; onnxruntime.InferenceSession"
WORKDIR /src

# ---------------------------------------------------------------------------------------------
# runtime: the base image + /opt/venv + models, as an unprivileged user.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="machine-sound-asd" \
      org.opencontainers.image.description="Scores machine-sound WAV uploads as normal or anomalous with ONNX models" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed, numeric UID/GID (10001), so a mounted models folder, `runAsNonRoot` checks and
# orchestrator policies can name it without reading the image's /etc/passwd.
RUN groupadd --system --gid 10001 asd \
    && useradd --system --uid 10001 --gid asd --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin asd

# Byte-compile the standard library if the base image ships it without bytecode: the container
# runs with a read-only root filesystem, so Python could not cache it and would recompile the
# stdlib modules it imports on every start (about +0.7 s start-up measured; a no-op where the
# bytecode is already there). The venv is compiled by pip at install time.
# Best effort: files that are not valid Python 3 on purpose (lib2to3 test data) are skipped.
RUN python -c "import compileall, sysconfig; compileall.compile_dir(sysconfig.get_path('stdlib'), quiet=2, workers=0)"

COPY --from=builder /opt/venv /opt/venv
# Default models, baked in; mount another folder over /models to replace them (read-only is fine).
COPY models/ /models/
# The trimmed venv still loads and scores every baked-in model (10 s of noise each).
RUN /opt/venv/bin/python -B -c "import pathlib, numpy; from service.detector import Detector; \
noise = numpy.random.default_rng(0).normal(0, 0.1, 160000).astype(numpy.float32); \
print([(f.name, round(Detector(f).score(noise).score, 4)) for f in sorted(pathlib.Path('/models').iterdir()) if (f / 'model.onnx').is_file()])"

# ORT_DISABLE_TELEMETRY: onnxruntime >= 1.29 uploads usage telemetry from Linux too unless
# this is set before it initialises; a scoring service should not call home (and in a
# read-only container it only logs a warning about its device-id file).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1 \
    ORT_DISABLE_TELEMETRY=1 \
    ASD_HOST=0.0.0.0 \
    ASD_PORT=8000 \
    ASD_MODELS_DIR=/models \
    ASD_DEFAULT_MODEL=slider \
    ASD_WORKERS=1 \
    ASD_LOG_LEVEL=INFO

USER 10001:10001
EXPOSE 8000

# /ready answers 503 until the models are loaded; urllib raises on it (slim has no curl).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ready' % os.environ.get('ASD_PORT', '8000'), timeout=2)"]

CMD ["asd-serve"]
