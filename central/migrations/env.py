"""Alembic's environment for central's store: migrations run on the connection CentralStore hands over
(``config.attributes["connection"]``), inside the transaction it holds; see central/store.py."""

from alembic import context

from central.store import metadata

connection = context.config.attributes["connection"]
# Batch mode: SQLite alters a table by copying it, which later revisions may need.
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():  # the store's own transaction: nothing is begun or committed here
    context.run_migrations()
