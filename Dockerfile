# syntax=docker/dockerfile:1
# fleet-exporter container image.
#
#   docker build -t fleet-exporter:0.1.0 .
#   docker run --rm -p 9265:9265 -v "$PWD/clusters:/etc/fleet-exporter/clusters:ro" fleet-exporter:0.1.0
#
# The base is pinned by tag. For reproducible builds pin it by digest too, e.g.
#   FROM python:3.11-slim-bookworm@sha256:<digest> AS build
# (`docker buildx imagetools inspect python:3.11-slim-bookworm` prints the digest), and
# let a bot such as Renovate or Dependabot bump it.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a wheel of the package, and a virtual environment with it and its deps ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fleet_exporter ./fleet_exporter
RUN pip wheel --wheel-dir /wheels . \
    && python -m venv --without-pip /opt/fleet-exporter \
    && pip --python /opt/fleet-exporter/bin/python install --no-index --find-links /wheels fleet-exporter \
    && /opt/fleet-exporter/bin/python -c "import fleet_exporter.cli"

# ---- runtime: the interpreter, the virtual environment, nothing else ----
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/fleet-exporter/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A fixed numeric UID/GID, so Kubernetes' runAsNonRoot can verify it
# (deploy/kubernetes/deployment.yaml uses the same 65532).
RUN groupadd --system --gid 65532 fleet-exporter \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin fleet-exporter \
    && mkdir -p /etc/fleet-exporter/clusters
COPY --from=build /opt/fleet-exporter /opt/fleet-exporter
USER 65532:65532
EXPOSE 9265
ENTRYPOINT ["fleet-exporter"]
CMD ["serve", "--clusters", "/etc/fleet-exporter/clusters", "--listen", ":9265"]
