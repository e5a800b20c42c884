"""The metadata database: engine, schema migrations, sessions, and the error boundary.

``Database(url)`` takes ``sqlite:///path/fedhive.db`` (the embedded default), a plain file path
(SQLite too), or ``postgresql://user:pass@host:5432/db`` (run with psycopg 3). ``upgrade()``
brings the schema to the newest migration; the migrations ship inside the package
(``storage/migrations``), so no ``alembic.ini`` is needed at run time.

SQLAlchemy errors never leave this package: ``session()`` and ``atomic()`` turn them into one-line
``StorageError``s that name the database with its password hidden, and never quote SQL
parameters (they can hold client secrets and password hashes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event, exc
from sqlalchemy.orm import Session, sessionmaker

from fedhive.errors import ConfigError, StorageError
from fedhive.storage.errors import AlreadyExists as AlreadyExists  # re-exported: where callers have found them
from fedhive.storage.errors import NotFound as NotFound

MIGRATIONS = Path(__file__).with_name("migrations")
# Any constant works: it only has to be the same in every process that migrates this database.
_MIGRATION_LOCK_KEY = 0x66656468  # "fedh"
_PG_CONNECT_TIMEOUT_S = 10
_SQLITE_BUSY_TIMEOUT_S = 30
_READ_ONLY = "fedhive_read_only"  # execution option read by _sqlite_on_begin


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path).expanduser().resolve()}"


def normalise_url(url: str | Path) -> sa.URL:
    """A plain path means SQLite; ``postgresql://`` means psycopg 3 (SQLAlchemy would pick psycopg2)."""
    text = str(url)
    if "://" not in text:
        text = sqlite_url(text)
    try:
        parsed = sa.make_url(text)
    except exc.ArgumentError as e:
        raise ConfigError(f"malformed database URL {redact(text)!r}") from e
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(f"unsupported database {parsed.get_backend_name()!r} (use sqlite:/// or postgresql://)")
    return parsed


def redact(url: str | sa.URL) -> str:
    if isinstance(url, str):
        try:
            url = sa.make_url(url)
        except exc.ArgumentError:
            return "<malformed URL>"
    return url.render_as_string(hide_password=True)


def _reason(error: BaseException) -> str:
    """The first line of the driver's message: later lines repeat the SQL and its parameters."""
    orig = getattr(error, "orig", None) or error
    lines = str(orig).strip().splitlines()
    return lines[0].strip() if lines else type(orig).__name__


def _is_unique_violation(error: exc.IntegrityError) -> bool:
    sqlstate = getattr(error.orig, "sqlstate", None)  # psycopg
    return sqlstate == "23505" or "UNIQUE constraint failed" in str(error.orig)  # or sqlite3


def storage_error(what: str | None, error: exc.SQLAlchemyError, url: str) -> StorageError:
    """Map one SQLAlchemy error to ours. ``what`` names the failed operation ("cannot record
    round 3"), or is None for the database's own calls; ``url`` is the redacted database URL."""
    prefix = f"{what}: " if what else ""
    if isinstance(error, exc.OperationalError) and error.statement is None:
        # Raised while opening a connection: the driver's last clause is the useful part
        # ("Connection refused", 'database "x" does not exist').
        return StorageError(f"{prefix}cannot connect to database {url}: {_reason(error).rsplit(': ', 1)[-1].strip()}")
    what = what or f"database {url}"
    if isinstance(error, exc.IntegrityError) and _is_unique_violation(error):
        return AlreadyExists(f"{what}: already exists ({_reason(error)})")
    return StorageError(f"{what}: {_reason(error)}")


@contextlib.contextmanager
def atomic(s: Session, what: str) -> Iterator[None]:
    """Run a multi-step write as one unit (a SAVEPOINT): on any error none of it remains, even if
    the caller catches the error and commits the rest of its session."""
    try:
        with s.begin_nested():
            yield
    except exc.SQLAlchemyError as e:
        raise storage_error(what, e, redact(s.get_bind().engine.url)) from e


class Database:
    """One database: a connection pool, the migrations, and ``session()`` for units of work."""

    def __init__(self, url: str | Path, *, echo: bool = False) -> None:
        self.url = normalise_url(url)
        self.display_url = redact(self.url)
        self.engine = self._create_engine(echo)
        # Rows stay readable after commit: the API serialises them after the unit of work ends.
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(self.engine.execution_options(**{_READ_ONLY: True}), expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    def _create_engine(self, echo: bool) -> sa.Engine:
        if not self.is_sqlite:
            return sa.create_engine(
                self.url, echo=echo, pool_pre_ping=True, connect_args={"connect_timeout": _PG_CONNECT_TIMEOUT_S}
            )
        database = self.url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            try:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StorageError(f"cannot create the directory of {self.display_url}: {e.strerror}") from e
        engine = sa.create_engine(self.url, echo=echo, connect_args={"timeout": _SQLITE_BUSY_TIMEOUT_S})
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine

    @contextlib.contextmanager
    def session(self, *, read_only: bool = False) -> Iterator[Session]:
        """A unit of work: committed when the block ends, rolled back (by ``close``) if it raises.

        On SQLite a unit of work takes the write lock when it begins (waiting up to 30 s for it),
        so one that reads and then writes never fails on a write committed in between; pass
        ``read_only=True`` for units that only read, which then never wait."""
        s = (self._read_sessions if read_only else self._sessions)()
        try:
            try:
                yield s
                s.commit()
            except exc.SQLAlchemyError as e:
                raise storage_error(None, e, self.display_url) from e
        finally:
            s.close()

    def alembic_config(self) -> Config:
        """Alembic configured in code; ``env.py`` uses the connection put in ``attributes``."""
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.set_main_option("sqlalchemy.url", self.url.render_as_string(hide_password=False).replace("%", "%%"))
        return cfg

    def upgrade(self, revision: str = "head") -> None:
        """Migrate to ``revision`` in one transaction (PostgreSQL and, with our BEGIN, SQLite run
        DDL transactionally), so a failed migration leaves the previous schema intact."""
        self._migrate(lambda cfg: command.upgrade(cfg, revision))

    def downgrade(self, revision: str) -> None:
        self._migrate(lambda cfg: command.downgrade(cfg, revision))

    def _migrate(self, run: Callable[[Config], None]) -> None:
        cfg = self.alembic_config()
        try:
            with self.engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    # Two coordinators starting together must not both create the tables.
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
                cfg.attributes["connection"] = conn
                run(cfg)
        except exc.SQLAlchemyError as e:
            raise storage_error(None, e, self.display_url) from e

    def current_revision(self) -> str | None:
        """The schema's migration revision (None for an empty database)."""
        try:
            with self.engine.connect() as conn:
                return MigrationContext.configure(conn).get_current_revision()
        except exc.SQLAlchemyError as e:
            raise storage_error(None, e, self.display_url) from e

    def ping(self) -> None:
        """Raise ``StorageError`` unless the database answers (for readiness checks)."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except exc.SQLAlchemyError as e:
            raise storage_error(None, e, self.display_url) from e

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # Take transactions out of the sqlite3 module's hands (it would start them late and commit
    # before DDL); _sqlite_on_begin issues BEGIN, so SAVEPOINTs and transactional DDL work.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    # WAL: readers never block the writer (the API reads while the coordinator writes).
    cur.execute("PRAGMA journal_mode=WAL")
    # SQLite ignores foreign keys unless asked, per connection.
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_on_begin(conn: sa.Connection) -> None:
    # IMMEDIATE takes the write lock at once: a deferred transaction that read a snapshot and then
    # writes fails ("database is locked") if another write committed meanwhile; busy_timeout cannot help.
    conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(_READ_ONLY) else "BEGIN IMMEDIATE")
