"""The fedhive exception tree.

Every error fedhive raises on purpose is a ``FedhiveError``; library errors (the broker client,
the database driver, boto3) are mapped to these at the boundary of the module that imports the
library, so callers never need to import a third-party exception type.

    FedhiveError
    ├── ConfigError            a setting, spec string or CLI argument is wrong
    ├── DataError              a data set cannot be loaded or partitioned (names row / column)
    ├── AppError               a user's app cannot be loaded, or broke its contract (names what)
    ├── PayloadError           a received payload is malformed, oversized or does not fit the model
    │   └── NonFiniteError     a payload holds NaN or Inf
    ├── ProtocolError          an envelope is malformed, of an unknown version or out of place
    │   └── AuthenticationError  a signature is missing or wrong, the sender unknown, a replay
    ├── TransportError         the transport (broker, network) failed
    ├── StorageError           the metadata or artifact store failed
    │   ├── AlreadyExists      (storage.database) a unique name or id is taken
    │   └── NotFound           (storage.database) the row or artifact does not exist
    ├── SessionFailed          a session cannot go on (quorum impossible, no clients); has a reason
    └── SessionCancelled       its owner stopped the session (cancelled on the server); has a reason
"""

from __future__ import annotations


class FedhiveError(Exception):
    """Base class of every error fedhive raises on purpose."""


class ConfigError(FedhiveError):
    """A setting, a spec string (model, dataset, partition, strategy) or an argument is wrong."""


class DataError(FedhiveError):
    """A data set cannot be loaded or partitioned; the message names the row and column."""


class AppError(FedhiveError):
    """A user's app does not import, lacks an attribute, or returned something off contract."""


class PayloadError(FedhiveError):
    """A payload is malformed, too large, or does not match the expected names/shapes/dtypes."""


class NonFiniteError(PayloadError):
    """A payload holds NaN or infinite values."""


class ProtocolError(FedhiveError):
    """An envelope is malformed, of an unsupported version, or arrives out of place."""


class AuthenticationError(ProtocolError):
    """A message is unsigned, forged, from an unknown sender, or a replay."""


class TransportError(FedhiveError):
    """The transport failed (broker unreachable, channel closed, publish not confirmed)."""


class StorageError(FedhiveError):
    """The metadata store or the artifact store failed."""


class SessionFailed(FedhiveError):
    """A session cannot go on; ``reason`` says why in words a person can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SessionCancelled(FedhiveError):
    """Its owner stopped the session before its end (``runtime.events.CancelRequested``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
