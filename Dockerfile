# One image for every dcmdb service; the command picks the service.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/opt/dcmdb

RUN pip install --no-cache-dir uv \
    && groupadd --system --gid 10001 dcmdb \
    && useradd --system --create-home --uid 10001 --gid dcmdb dcmdb \
    && mkdir -p /data && chown dcmdb /data

WORKDIR /app
# Dependencies first, from the lock file, so that code changes reuse this layer.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-dev --no-install-project
COPY shared ./shared
COPY services ./services
RUN uv sync --locked --no-dev && python -m compileall -q shared services

ENV PATH=/opt/dcmdb/bin:$PATH \
    DCMDB_DATA_DIR=/data
USER dcmdb
ENTRYPOINT ["dcmdb"]
