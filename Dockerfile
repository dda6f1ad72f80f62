# batchserve with the trained models baked in.
#   CPU:  docker build -t batchserve .
#   CUDA: docker build -t batchserve:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
# PyTorch's CUDA wheels carry their own CUDA libraries, so a GPU image needs only the wheel index
# and, on the host, the NVIDIA driver and container toolkit.
#
# BASE_IMAGE is pinned by digest (the multi-arch index of python:3.11-slim-bookworm). To bump it:
#   skopeo inspect --raw docker://docker.io/library/python:3.11-slim-bookworm | sha256sum
# (or read it from `docker buildx imagetools inspect python:3.11-slim-bookworm`), replace the
# digest below and docker-compose.yml's default (a test checks they agree), and let .ci/run
# build and run the image. A base of your own must provide:
# `python3` >= 3.11 on PATH with the venv and ensurepip modules (Debian: python3-venv),
# `useradd`, glibc (PyTorch's wheels are manylinux), and CA certificates for pip.
ARG BASE_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

# Offline or behind a firewall (docs/deploying.md, "Building without the internet"), every source
# is a build argument: BASE_IMAGE (a mirror's copy of the image above, or any base that meets the
# list), TORCH_INDEX (PyTorch's wheel index: a mirror, or a local index holding the CPU wheel and
# its dependencies) and PIP_INDEX_URL (PyPI: a mirror such as devpi or Artifactory; pip reads it
# in every RUN below, for the dependencies and the build backend).

# One stage, layers ordered from the least to the most often changed, so that editing the code
# or the README rebuilds only the last few megabytes, never PyTorch or the dependencies.
FROM ${BASE_IMAGE}
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BATCHSERVE_HOST=0.0.0.0 \
    BATCHSERVE_PORT=8000 \
    BATCHSERVE_MODEL_REPOSITORY=/models
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin batchserve
# torch first, from the chosen index: the project's `torch==2.13.0` pin is then satisfied and pip
# does not fetch the default (CUDA) build from PyPI.
RUN python3 -m venv /opt/venv \
    && pip install torch==2.13.0 --index-url "${TORCH_INDEX}"
WORKDIR /opt/batchserve
# Then the dependencies, at the versions of the lock (constraints.txt), before any source.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" > requirements.txt \
    && pip install -c constraints.txt -r requirements.txt
COPY README.md ./
COPY app ./app
COPY models ./models
# The checkout's file modes must not matter: a clone made under umask 077 has 0600 files that
# uid 10001 could not read. pip writes the package with its own modes; the models are copied to
# /models and made world-readable.
RUN pip install --no-deps . \
    && cp -r models/repository /models \
    && chmod -R u=rwX,go=rX /models
# Mount another repository here (read-only is enough; its files must be readable by uid 10001).
VOLUME ["/models"]
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001
# Nothing is written outside /tmp: the root filesystem may be mounted read-only.
WORKDIR /tmp
EXPOSE 8000
# No curl in the slim image; Python is there anyway. Ready = models loaded and not draining. The
# health port, when set, answers even while the main port is flooded.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('BATCHSERVE_HEALTH_PORT') or os.environ.get('BATCHSERVE_PORT', '8000'); urllib.request.urlopen('http://127.0.0.1:' + port + '/v2/health/ready', timeout=2)"]
# Exec form: batchserve is PID 1 and gets SIGTERM itself, then drains and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["batchserve"]
CMD ["serve"]
