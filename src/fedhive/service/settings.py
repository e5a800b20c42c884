"""Settings of the platform service (``fedhive serve``): URLs and limits, embedded defaults.

Scaling out changes URLs, not code: ``--db postgresql://...``, ``--artifacts s3://...``,
``--broker amqp://...``. Every field can also come from an environment variable ``FEDHIVE_<NAME>``
(``FEDHIVE_APPS``: app references separated by commas).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


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
    public_url: str = Field(default="http://127.0.0.1:8000", description="how clients reach this API")
    mlflow_tracking_uri: str | None = Field(
        default=None, description="MLflow store or server URL: sessions are tracked there, models read from it"
    )
    mlflow_register_as: str | None = Field(default=None, description="register each final model under this name")
    apps: list[str] = Field(
        default_factory=list,
        description="apps sessions may run besides builtin: module:attr, file.py:attr or a project folder",
    )

    @field_validator("apps", mode="before")
    @classmethod
    def _apps(cls, value: Any) -> Any:
        if isinstance(value, str):  # FEDHIVE_APPS=pkg.app:app,./my-project
            return [ref.strip() for ref in value.split(",") if ref.strip()]
        return value

    def mlflow_uri(self) -> str:
        """The MLflow store: the configured one, else a local SQLite store under home."""
        return self.mlflow_tracking_uri or f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

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
            values["jwt_secret"] = _persistent_secret(Path(values.get("home", ".fedhive")))
        return cls(**values)


def _persistent_secret(home: Path) -> str:
    """The token-signing secret of this installation, generated once and kept (mode 0600), so
    that restarting the service does not sign every user out."""
    path = home / "jwt-secret"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        home.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret)
        return secret
