# syntax=docker/dockerfile:1
# Federated aggregation: the Flower SuperLink (which runs the ServerApp), the drift controller,
# and the one-shot jobs that make certificates and register SuperNode keys:
# edgefleet[fl,edge] (the ServerApp evaluates plans in LiteRT) and scikit-learn (data sets).
# Build from the repository root: docker build -f deploy/docker/fl.Dockerfile .
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
RUN /opt/edgefleet/bin/pip install --constraint constraints.txt ".[fl,edge]" scikit-learn

FROM ${PYTHON}
RUN groupadd --system --gid 10001 edgefleet \
    && useradd --system --uid 10001 --gid edgefleet --create-home --home-dir /home/edgefleet \
         edgefleet \
    && install -d -o edgefleet -g edgefleet /var/lib/flwr /var/lib/flwr/metrics /certs \
         /home/edgefleet/.flwr
COPY --from=build /opt/edgefleet /opt/edgefleet
COPY aggregation/flower_app /opt/edgefleet/flower_app
COPY --chmod=0755 scripts/certs.py /opt/edgefleet/bin/edgefleet-certs
COPY --chmod=0755 deploy/flwr/register-supernodes.sh /opt/edgefleet/bin/register-supernodes
COPY --chown=edgefleet:edgefleet deploy/flwr/config.toml /home/edgefleet/.flwr/config.toml
ENV PATH=/opt/edgefleet/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    FLWR_HOME=/home/edgefleet/.flwr \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_TELEMETRY_ENABLED=0 PROMETHEUS_MULTIPROC_DIR=/var/lib/flwr/metrics
USER edgefleet
WORKDIR /var/lib/flwr
EXPOSE 9093 9400
CMD ["flower-superlink", "--help"]
