# syntax=docker/dockerfile:1
# The EdgeFleet server (registry, V2 fallback inference, telemetry, dashboard): edgefleet[server].
# Build from the repository root: docker build -f deploy/docker/server.Dockerfile .
ARG PYTHON=python:3.11-slim-bookworm

FROM ${PYTHON} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/edgefleet
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY edgefleet ./edgefleet
COPY edgefleet_cli ./edgefleet_cli
COPY registry ./registry
COPY server ./server
COPY authoring ./authoring
COPY aggregation ./aggregation
COPY edge_client ./edge_client
COPY simulation ./simulation
RUN /opt/edgefleet/bin/pip install --constraint constraints.txt ".[server]"

FROM ${PYTHON}
RUN groupadd --system --gid 10001 edgefleet \
    && useradd --system --uid 10001 --gid edgefleet --home-dir /var/lib/edgefleet edgefleet \
    && install -d -o edgefleet -g edgefleet /var/lib/edgefleet /var/lib/edgefleet/artifacts \
         /var/lib/edgefleet/metrics
COPY --from=build /opt/edgefleet /opt/edgefleet
ENV PATH=/opt/edgefleet/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    EDGEFLEET_SERVER_ARTIFACT_DIR=/var/lib/edgefleet/artifacts \
    PROMETHEUS_MULTIPROC_DIR=/var/lib/edgefleet/metrics
USER edgefleet
WORKDIR /var/lib/edgefleet
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=5 CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/api/v1/health/ready', timeout=2)"]
CMD ["edgefleet", "server", "run", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
