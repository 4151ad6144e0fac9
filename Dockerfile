# syntax=docker/dockerfile:1
# The relay image: a wheel built from pyproject.toml in one stage,
# installed with its runtime dependencies (no extras) in a slim runtime.
# The same Python version as scripts/setup.sh requires, on Debian 12 like
# the machines the tests run on (its SQLite is the one they measured).
# A tag without the Debian name follows each new Debian release.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY relay ./relay
COPY migrations ./migrations
RUN pip wheel . --no-deps --wheel-dir /wheels

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATABASE_URL=sqlite:///data/yaok_relay.db \
    HTTP_PORT=8080 \
    RELAY_PORT=41641 \
    PID_FILE=/run/yaok-relay/relay.pid
RUN groupadd --system --gid 10001 yaok \
    && useradd --system --uid 10001 --gid yaok --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin yaok \
    && mkdir -p /data /var/log/yaok-relay /run/yaok-relay \
    && chown yaok:yaok /data /var/log/yaok-relay /run/yaok-relay
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY deploy/docker-entrypoint.sh /usr/local/bin/yaok-relay-entrypoint
VOLUME /data
EXPOSE 41641/udp 8080
# Standard library only: the image has no curl.
HEALTHCHECK --interval=10s --timeout=2s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; url = 'http://127.0.0.1:%s/health' % os.environ.get('HTTP_PORT', '8080'); sys.exit(0 if urllib.request.urlopen(url, timeout=2).status == 200 else 1)"]
# The entrypoint starts as root only to hand /data (a Fly volume is
# mounted owned by root) to the yaok user, then runs the relay as yaok.
ENTRYPOINT ["yaok-relay-entrypoint"]
CMD ["yaok-relay", "serve"]
