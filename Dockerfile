# The reconciler as a container: `engine run` every ENGINE_INTERVAL (60s), JSON logs on
# stdout, /healthz, /readyz and /metrics on port 9181. See README.md "Run it as a service".
#
#   docker build -t campaign-engine .
#   docker run --rm -p 127.0.0.1:9181:9181 campaign-engine                  # the baked-in demo project
#   docker run --rm -v "$PWD:/app" -e ENGINE_WAREHOUSE_URL=... campaign-engine   # your project, hot-reloaded
#
# Both stages use the same base image, so the virtual environment built in the first runs
# unchanged in the second; the final image has no compiler, no pip cache, no build files.

FROM python:3.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/engine
WORKDIR /src
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY schema ./schema
# Every dependency ships manylinux wheels, so nothing is compiled even here.
RUN /opt/engine/bin/pip install --no-cache-dir --only-binary=:all: --no-binary=shop-campaign-engine ".[postgres]"


FROM python:3.11-slim-bookworm

LABEL org.opencontainers.image.title="shop-campaign-engine" \
      org.opencontainers.image.description="Declarative, git-native campaign engine: the reconciler as a service"

# Letters: WeasyPrint lays them out over pango, in DejaVu Sans (the letter channel's default font).
# Unpinned on purpose: bookworm's point releases carry the security fixes of these libraries.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 engine \
 && useradd --system --uid 10001 --gid engine --home-dir /app --no-create-home --shell /usr/sbin/nologin engine

COPY --from=build /opt/engine /opt/engine

# 12-factor: everything below can be overridden with -e / environment:.
ENV PATH=/opt/engine/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ENGINE_PROJECT=/app \
    ENGINE_INTERVAL=60s \
    ENGINE_LOG_FORMAT=json \
    ENGINE_LOG_LEVEL=info \
    ENGINE_METRICS_HOST=0.0.0.0 \
    ENGINE_METRICS_PORT=9181

# The project (engine.yaml, campaigns.d/, templates/) is baked in; mount your own
# directory over /app to run it instead - a `git pull` there is hot-reloaded.
WORKDIR /app
COPY --chown=engine:engine engine.yaml ./
COPY --chown=engine:engine campaigns.d ./campaigns.d
COPY --chown=engine:engine templates ./templates
# var/: the demo shop and the file outbox; the only place the engine writes to.
RUN mkdir -p /app/var && chown engine:engine /app/var

USER 10001:10001
EXPOSE 9181
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ENGINE_METRICS_PORT', '9181'), timeout=4)"]

# `engine run` with ENGINE_INTERVAL=60s set above is `engine run --interval 60s`;
# any other command works too: docker run IMAGE validate, IMAGE config show, ...
ENTRYPOINT ["engine"]
CMD ["run"]
