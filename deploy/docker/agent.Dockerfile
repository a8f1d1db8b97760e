# syntax=docker/dockerfile:1
# An edge device: the agent and (same image, other command) its Flower SuperNode:
# edgefleet[edge] only (LiteRT, httpx, the Flower client, prometheus-client), no TensorFlow.
# Build from the repository root: docker build -f deploy/docker/agent.Dockerfile .
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
RUN /opt/edgefleet/bin/pip install --constraint constraints.txt ".[edge]" \
    && ! /opt/edgefleet/bin/pip show tensorflow tensorflow-cpu >/dev/null 2>&1

FROM ${PYTHON}
RUN groupadd --system --gid 10001 edgefleet \
    && useradd --system --uid 10001 --gid edgefleet --home-dir /var/lib/edgefleet edgefleet \
    && install -d -m 0700 -o edgefleet -g edgefleet /var/lib/edgefleet
COPY --from=build /opt/edgefleet /opt/edgefleet
ENV PATH=/opt/edgefleet/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    EDGEFLEET_AGENT_DATA_DIR=/var/lib/edgefleet \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_TELEMETRY_ENABLED=0
USER edgefleet
WORKDIR /var/lib/edgefleet
VOLUME ["/var/lib/edgefleet"]
EXPOSE 8765
CMD ["edgefleet", "agent", "run"]
