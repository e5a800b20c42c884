"""The metadata store's own errors, apart from ``storage.database`` so that code which only names
them (the MLflow registry client, the CLI) does not import SQLAlchemy to do so."""

from __future__ import annotations

from fedhive.errors import StorageError


class AlreadyExists(StorageError):
    """A write would duplicate a unique key (an e-mail, a model name, a client id)."""


class NotFound(StorageError):
    """A write names a row that does not exist (reads return None instead)."""
