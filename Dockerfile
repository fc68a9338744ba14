# seediff Label Studio ML backend. GPU: run with --gpus all (docker-compose.yml has the reservation).
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

WORKDIR /app
# torch first, pinned: PyPI's 2.13.0 Linux wheel is the CUDA build this base image runs.
RUN pip install torch==2.13.0
COPY pyproject.toml README.md ./
COPY seediff_core ./seediff_core
COPY backend ./backend
RUN pip install ".[backend]"

# Non-root; /data holds the model cache (Hugging Face downloads), image downloads and backend state.
RUN useradd --create-home --uid 1000 seediff && mkdir -p /data && chown seediff /data
USER seediff
VOLUME ["/data"]
ENV MODEL_DIR=/data/models \
    HF_HOME=/data/huggingface \
    SEEDIFF_MODEL=stable-diffusion-v1-5/stable-diffusion-v1-5 \
    HOST=0.0.0.0 PORT=9090 WORKERS=1 THREADS=8 LOG_LEVEL=INFO
EXPOSE 9090

# /health answers while the weights load; basic auth credentials are used when set.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 CMD python3 -c "\
import base64, os, urllib.request; r = urllib.request.Request(f'http://127.0.0.1:{os.environ.get(\"PORT\", \"9090\")}/health'); \
u, p = os.environ.get('BASIC_AUTH_USER'), os.environ.get('BASIC_AUTH_PASS'); \
u and r.add_header('Authorization', 'Basic ' + base64.b64encode(f'{u}:{p}'.encode()).decode()); \
urllib.request.urlopen(r, timeout=4)"

CMD ["sh", "-c", "exec gunicorn --bind :$PORT --workers $WORKERS --threads $THREADS --timeout 0 'backend.server:create_app()'"]
