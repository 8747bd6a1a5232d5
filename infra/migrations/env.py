"""Alembic's environment for the alert store.

The store runs the migrations itself (``sinks.store.upgrade_schema``) on a
connection it has already opened and locked, and hands that connection over in
``config.attributes["connection"]``; this file only runs them on it. Run by hand
(``alembic -c <ini> upgrade head``) it opens ``sqlalchemy.url`` from the ini file.
"""
from alembic import context
from sqlalchemy import create_engine

config = context.config


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=None,
                      # SQLite alters tables by copying them; batch mode does that.
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()
