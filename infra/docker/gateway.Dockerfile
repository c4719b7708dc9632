# syntax=docker/dockerfile:1
# Light image: the public gateway and the one-shot `migrate` service.
# Only pyproject's base dependencies: no `ml` extra, so no torch or transformers (the gateway never imports them;
# tests/test_deploy_compose.py checks this file and pyproject).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
# Dependencies first (cached until pyproject.toml changes), then the sources.
COPY pyproject.toml infra/docker/pyproject_requirements.py ./
RUN python pyproject_requirements.py pyproject.toml > requirements.txt \
    && pip install -r requirements.txt
COPY shared ./shared
COPY services ./services
COPY infra/alembic.ini ./infra/alembic.ini
COPY infra/alembic ./infra/alembic
# Editable so that REPO_ROOT (shared/settings.py) is /app and infra/alembic is found next to the code.
RUN pip install --no-deps -e . && rm -f pyproject_requirements.py requirements.txt

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ISCO_DATA_DIR=/data
# One fixed uid/gid in every image so that all services can write the shared volume.
RUN groupadd --system --gid 10001 isco \
    && useradd --system --uid 10001 --gid isco --home-dir /home/isco --create-home --shell /usr/sbin/nologin isco \
    && mkdir -p /data/models /data/uploads /data/results \
    && chown -R isco:isco /data
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app
WORKDIR /app
USER isco
EXPOSE 8000
# --proxy-headers: behind nginx, job URLs must say https and the client address must be the real one.
CMD ["uvicorn", "services.gateway.app:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000", \
     "--proxy-headers", "--forwarded-allow-ips", "*"]
