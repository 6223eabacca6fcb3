# kdaudit: the dashboard and its worker in one container.
#   CPU (default):  docker build -t kdaudit .
#   CUDA:           docker build -t kdaudit:cuda --build-arg BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 .
#   Run, one user:  docker run -p 127.0.0.1:8501:8501 -v kdaudit-data:/data kdaudit --no-auth   (--gpus all for CUDA)
#   Run, a team:    docker run -p 8501:8501 -v kdaudit-data:/data -e KDAUDIT_COOKIE_SECRET=... \
#                     -v "$PWD/.streamlit/secrets.toml:/app/.streamlit/secrets.toml:ro" kdaudit
# Inside its container the dashboard must listen on every interface (0.0.0.0) for the mapped port to reach
# it, so `python -m app` starts only with log-in configured (the secrets file's [auth] section) or with an
# explicit --no-auth, whose warning then shows on every page: the container cannot see that its port is
# mapped to this machine only (-p 127.0.0.1:…), so keep that mapping whenever you pass --no-auth.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 KDAUDIT_HOME=/data ORT_DISABLE_TELEMETRY=1 \
    KDCORE_FASHION_MNIST=/usr/share/datasets/fashion-mnist DEBIAN_FRONTEND=noninteractive

# python3 + venv on CUDA bases; libseccomp2 for the parsing sandbox's socket filter (kdcore/sandbox/confine.py);
# Fashion-MNIST for the built-in demo (Debian package, when available).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip curl ca-certificates libseccomp2 \
 && (apt-get install -y --no-install-recommends dataset-fashion-mnist || echo "dataset-fashion-mnist not in this base's archive: mount the IDX files at $KDCORE_FASHION_MNIST") \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 kdaudit && mkdir -p /data /app && chown kdaudit:kdaudit /data /app
WORKDIR /app
COPY --chown=kdaudit:kdaudit requirements.txt pyproject.toml ./
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install -r requirements.txt
COPY --chown=kdaudit:kdaudit . .
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation -e .

USER kdaudit
VOLUME ["/data"]
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8501/_stcore/health || exit 1
ENTRYPOINT ["/opt/venv/bin/python", "-m", "app", "--port", "8501", "--address", "0.0.0.0", "--data-dir", "/data"]
