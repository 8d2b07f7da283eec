"""Alembic environment: runs on the connection handed over by ``database.migrate``."""

from alembic import context

from shared.catalog import bids as _bids  # noqa: F401 - its tables too
from shared.catalog import reconciliation as _reconciliation  # noqa: F401 - its tables too
from shared.catalog import webhooks as _webhooks  # noqa: F401 - its tables too
from shared.catalog.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
