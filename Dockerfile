# halod as a sidecar container. The steps are the README's install step; no build tools needed
# (every dependency ships wheels for linux/amd64 and arm64).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml setup.py README.md ./
COPY halod/ halod/
COPY receivers/ receivers/
COPY processors/ processors/
COPY exporters/ exporters/
COPY configs/ configs/
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin halod \
    && mkdir -p /data && chown halod /data

USER halod
VOLUME ["/data"]
EXPOSE 4317 4318 8888

HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8888/healthz', timeout=2)"]

ENTRYPOINT ["halod"]
CMD ["run", "--config", "/app/configs/docker.yaml"]
