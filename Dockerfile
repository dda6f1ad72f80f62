# batchserve with the trained models baked in.
#   CPU:  docker build -t batchserve .
#   CUDA: docker build -t batchserve:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
# PyTorch's CUDA wheels carry their own CUDA libraries, so a GPU image needs only the wheel index
# and, on the host, the NVIDIA driver and container toolkit. BASE_IMAGE is for sites that need
# their own base; it must have Python 3.11 at /usr/local/bin, as the venv is copied across stages.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS builder
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
# torch first, from the chosen index: the project's own `torch==2.13.0` pin is then satisfied
# and pip does not fetch the default build from PyPI.
RUN python -m venv /opt/venv \
    && pip install torch==2.13.0 --index-url "${TORCH_INDEX}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY models ./models
RUN pip install .

FROM ${BASE_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BATCHSERVE_HOST=0.0.0.0 \
    BATCHSERVE_PORT=8000 \
    BATCHSERVE_MODEL_REPOSITORY=/models
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin batchserve
COPY --from=builder /opt/venv /opt/venv
COPY models/repository /models
# Mount another repository here (read-only is enough) to serve other models or versions.
VOLUME ["/models"]
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001
WORKDIR /tmp
EXPOSE 8000
# No curl in the slim image; Python is there anyway. Ready = models loaded and not draining.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('BATCHSERVE_PORT', '8000') + '/v2/health/ready', timeout=2)"]
# Exec form: batchserve is PID 1 and gets SIGTERM itself, then drains and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["batchserve"]
CMD ["serve"]
