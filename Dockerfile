# syntax=docker/dockerfile:1
# fhir-gateway image (docs/deployment.md).
#
# Stage "build" makes wheels of the gateway and its runtime dependencies (no test or demo
# extras) and installs them into a pip-less virtual environment at /opt/fhir-gateway. Stage
# "runtime" copies only that environment onto a clean Python base: no compiler, no wheels, no
# pip cache, no source tree.
#
# Runtime contract (tests/deploy/test_image_steps.py reproduces it without a Docker engine):
#   user         10001:10001 (non-root, no shell, no home)
#   root FS      may be read-only; the only writable path is /var/lib/fhir-gateway (audit spill)
#   config       /etc/fhir-gateway/config.yaml            (mounted read-only)
#   policies     /etc/fhir-gateway/policies/              (mounted read-only; hot-reloaded)
#   secrets      environment variables, referenced from the config as ${NAME}
#   port         8080 (server.port); HEALTHCHECK on /healthz
#   signals      SIGTERM -> /readyz 503, drain_delay_s, in-flight requests get shutdown_timeout_s

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN python -m pip install --upgrade "pip==25.3" \
 && python -m pip wheel --wheel-dir /wheels . \
 && python -m venv --without-pip /opt/fhir-gateway \
 && python -m pip --python /opt/fhir-gateway/bin/python install --no-index --find-links /wheels /wheels/fhir_gateway-*.whl \
 && /opt/fhir-gateway/bin/python -m compileall -q /opt/fhir-gateway/lib

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/fhir-gateway/bin:$PATH
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid gateway --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin gateway \
 && install -d -m 0755 /etc/fhir-gateway /etc/fhir-gateway/policies \
 && install -d -m 0750 -o 10001 -g 10001 /var/lib/fhir-gateway
COPY --from=build /opt/fhir-gateway /opt/fhir-gateway
# the only writable path (audit spill); config and policies are mounted read-only
VOLUME ["/var/lib/fhir-gateway"]
WORKDIR /var/lib/fhir-gateway
USER 10001:10001
EXPOSE 8080
STOPSIGNAL SIGTERM
# FHIR_GATEWAY_HEALTHCHECK_URL: override when server.port changes or the main port serves TLS
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["/opt/fhir-gateway/bin/python", "-c", "import os,sys,urllib.request as u; url=os.environ.get('FHIR_GATEWAY_HEALTHCHECK_URL','http://127.0.0.1:8080/healthz'); sys.exit(0 if u.urlopen(url, timeout=2).status == 200 else 1)"]
ENTRYPOINT ["/opt/fhir-gateway/bin/fhir-gateway"]
CMD ["serve", "--config", "/etc/fhir-gateway/config.yaml"]
