"""Alembic environment: migrations run on the connection ``Database`` hands over.

``Database.upgrade()`` opens a transaction, puts its connection in ``config.attributes`` and
runs alembic, so there is no ``alembic.ini`` and no second engine. To write a new migration,
from the repository root::

    python -c "from fedhive.storage.database import Database; from alembic import command; \\
        db = Database('sqlite:///tmp/dev.db'); db.upgrade(); \\
        command.revision(db.alembic_config(), message='add x', autogenerate=True, rev_id='0002')"

(``alembic_config`` carries the URL, so without a connection this module opens its own.)
"""

from __future__ import annotations

from alembic import context

from fedhive.errors import ConfigError
from fedhive.storage.database import Database
from fedhive.storage.models import Base


def run_migrations(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=Base.metadata,
        # SQLite cannot ALTER constraints; batch mode rebuilds the table instead.
        render_as_batch=True,
        compare_type=True,
    )
    # Inside Database's transaction this begins nothing; on its own connection it is one.
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise ConfigError("fedhive migrations run online only (Database.upgrade())")

_connection = context.config.attributes.get("connection")
if _connection is not None:
    run_migrations(_connection)
else:
    _db = Database(context.config.get_main_option("sqlalchemy.url") or "")
    try:
        with _db.engine.begin() as conn:
            run_migrations(conn)
    finally:
        _db.dispose()
