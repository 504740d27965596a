"""Alembic environment for the control plane: runs on the connection ``db.migrate`` hands over
(or on ``sqlalchemy.url`` when invoked from the alembic command line). Batch mode for SQLite."""

from __future__ import annotations

from alembic import context

from edgegen.fleet.db import Base, make_engine

config = context.config


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    with make_engine(config.get_main_option("sqlalchemy.url")).connect() as conn:
        _run(conn)
        conn.commit()
