"""Settings of the platform service (``fedhive serve``): URLs and limits, embedded defaults.

Scaling out changes URLs, not code: ``--db postgresql://...``, ``--artifacts s3://...``,
``--broker amqp://...``. Every field can also come from an environment variable ``FEDHIVE_<NAME>``
(``FEDHIVE_APPS``: app references separated by commas).

Two secrets are kept in the home folder when not given, each generated on first start into a file
only its owner may read (mode 0600): ``jwt-secret`` signs access tokens, ``secrets-key`` seals the
nodes' signing secrets in the database (``storage.secret_box``). Replicas that share a database must
share both (``FEDHIVE_JWT_SECRET``, ``FEDHIVE_SECRETS_KEY``, or the same files).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, field_validator

from fedhive.runtime.credentials import write_secret_file
from fedhive.storage.secret_box import SecretBox, new_key_text


def _half_the_cores() -> int:
    return max(1, (os.cpu_count() or 2) // 2)


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    home: Path = Field(default=Path(".fedhive"), description="where embedded defaults keep their files")
    db_url: str | None = Field(default=None, description="default: SQLite file under home")
    artifacts_url: str | None = Field(default=None, description="default: directory under home")
    broker_url: str | None = Field(default=None, description="default: in-process memory transport")
    namespace: str = Field(default="fedhive", description="AMQP namespace: one platform per namespace on a broker")
    jwt_secret: SecretStr = Field(default_factory=lambda: SecretStr(secrets.token_urlsafe(32)))
    token_ttl_s: int = Field(default=3600, ge=60)
    max_upload_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    heartbeat_timeout_s: float = Field(default=20.0, gt=0)
    bcrypt_rounds: int = Field(default=12, ge=4, le=16)
    password_hash_concurrency: int = Field(
        default_factory=_half_the_cores, ge=1, description="bcrypt hashes at once (default: half the cores)"
    )
    password_hash_wait_s: float = Field(default=10.0, gt=0, description="a sign-in waits this long for a hash slot")
    signin_window_s: int = Field(default=900, ge=1, description="the window failed sign-ins are counted in")
    signin_failures_per_account: int = Field(default=10, ge=1, description="failed sign-ins per e-mail per window")
    signin_failures_per_address: int = Field(default=30, ge=1, description="failed sign-ins per address per window")
    secrets_key: SecretStr | None = Field(
        default=None, description="seals client secrets in the database; default: the key file HOME/secrets-key"
    )
    public_url: str = Field(default="http://127.0.0.1:8000", description="how clients reach this API")
    mlflow_tracking_uri: str | None = Field(
        default=None, description="MLflow store or server URL: sessions are tracked there, models read from it"
    )
    mlflow_register_as: str | None = Field(default=None, description="register each final model under this name")
    mlflow_run_per_round: bool = Field(default=False, description="also one MLflow run per site per round")
    apps: list[str] = Field(
        default_factory=list,
        description="apps sessions may run besides builtin: module:attr, file.py:attr or a project folder",
    )
    _secret_box: SecretBox | None = PrivateAttr(default=None)

    @field_validator("apps", mode="before")
    @classmethod
    def _apps(cls, value: Any) -> Any:
        if isinstance(value, str):  # FEDHIVE_APPS=pkg.app:app,./my-project
            return [ref.strip() for ref in value.split(",") if ref.strip()]
        return value

    def mlflow_uri(self) -> str:
        """The MLflow store: the configured one, else a local SQLite store under home."""
        return self.mlflow_tracking_uri or f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    def secret_box(self) -> SecretBox:
        """What seals and opens client secrets in the database: ``secrets_key``, else the key file
        in ``home`` (made on first use). Built once per settings object."""
        if self._secret_box is None:
            if self.secrets_key is not None:
                self._secret_box = SecretBox(self.secrets_key.get_secret_value(), origin="FEDHIVE_SECRETS_KEY")
            else:
                path = self.home / "secrets-key"
                self._secret_box = SecretBox(_persistent_secret(path, new_key_text), origin=str(path))
        return self._secret_box

    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{(self.home / 'fedhive.db').resolve()}"

    def artifact_url(self) -> str:
        return self.artifacts_url or str((self.home / "artifacts").resolve())

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Fields from ``FEDHIVE_<NAME>`` variables, then explicit overrides (CLI flags) on top."""
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            env = os.environ.get(f"FEDHIVE_{name.upper()}")
            if env is not None:
                values[name] = env
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "jwt_secret" not in values:
            home = Path(values.get("home", ".fedhive"))
            values["jwt_secret"] = _persistent_secret(home / "jwt-secret", lambda: secrets.token_urlsafe(32))
        return cls(**values)


def _persistent_secret(path: Path, make: Callable[[], str]) -> str:
    """A secret of this installation, generated once and kept (mode 0600): restarting the service
    must not sign every user out, nor lose the key that opens the database's client secrets. Two
    processes starting together agree: the second to write finds the first one's file and uses it."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = make()
        try:
            write_secret_file(path, secret, overwrite=False)
        except FileExistsError:
            return path.read_text().strip()
        return secret
