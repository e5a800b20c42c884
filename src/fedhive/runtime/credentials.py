"""Client identities: a client id and an HMAC secret per client, kept by the coordinator.

Messages are signed with HMAC-SHA256 (docs/architecture.md, "Wire protocol"), a symmetric scheme: the coordinator
needs each client's secret to check that client's messages and to sign the messages it sends to
it, so the secrets are stored, not hashes of them. The store is a JSON file that only its owner
may read (mode 0600), written atomically (temp file + rename) under an exclusive lock, so a
coordinator reading it while ``fedhive clients add`` writes it sees the old or the new file, never
half of one. The coordinator looks secrets up on every message and reloads the file when it
changed, so a client added while a session runs can join it.

This is the stop-gap until the SQL metadata store holds clients: keep the interface small.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fedhive.errors import ConfigError, StorageError
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.transports.amqp_topology import hosted_id

log = logging.getLogger("fedhive.credentials")

DEFAULT_STORE = "fedhive-clients.json"
SECRET_BYTES = 32
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$")
_HEX_SECRET = re.compile(f"[0-9a-fA-F]{{{2 * SECRET_BYTES}}}")
# What secrets.token_urlsafe(32) gives (the platform's secrets): exactly 43 characters, so that a
# hex secret with a digit lost or added is an error here, not a key that no one else holds.
_TOKEN_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")


@dataclass(frozen=True, slots=True)
class ClientRecord:
    client_id: str
    name: str
    created_at: str


def parse_secret(text: str) -> bytes:
    """The HMAC key a secret stands for, in either form fedhive prints one: 64 hexadecimal digits
    (``fedhive clients add``, the key itself) or a URL-safe token of 43 characters
    (``fedhive admin site create`` and the platform's API, whose key is the token's own bytes, as
    the server's check takes it: ``storage.users_repo.get_client_secret``)."""
    text = text.strip()
    if _HEX_SECRET.fullmatch(text):
        return bytes.fromhex(text)
    if _TOKEN_SECRET.fullmatch(text):
        return text.encode()
    raise ConfigError(
        f"a client secret is {2 * SECRET_BYTES} hexadecimal digits ('fedhive clients add') or the token "
        "'fedhive admin site create' printed"
    )


class CredentialStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._clients: dict[str, dict[str, str]] = {}
        self._users_of: dict[str, dict[str, str]] | None = None
        self._users: dict[str, str] = {}
        self._hosts_of: dict[str, dict[str, str]] | None = None
        self._hosts: dict[str, str] = {}

    # -- reading ---------------------------------------------------------------------------------
    def secret_of(self, client_id: str) -> bytes | None:
        """The HMAC key of ``client_id``, or None if no such client exists."""
        entry = self._current().get(client_id)
        return bytes.fromhex(entry["secret"]) if entry else None

    def broker_users(self) -> dict[str, str]:
        """Client id -> the broker user it publishes as, for clients given one (``fedhive clients
        add --broker-user``); the same mapping object until the file changes."""
        clients = self._current()
        if clients is not self._users_of:
            self._users = {cid: e["broker_user"] for cid, e in clients.items() if e.get("broker_user")}
            self._users_of = clients
        return self._users

    def hosts(self) -> dict[str, str]:
        """Hosted client id -> its host's id (``fedhive clients add --hosted-by HOST``): the
        coordinator sends what is for such a client to its host's queue; the same mapping object
        until the file changes."""
        clients = self._current()
        if clients is not self._hosts_of:
            self._hosts = {cid: e["host"] for cid, e in clients.items() if e.get("host")}
            self._hosts_of = clients
        return self._hosts

    def combiners(self) -> list[str]:
        """Ids of the combiners given a broker user (``fedhive clients add --role combiner
        --broker-user``): the coordinator binds their queues to the up exchange for them."""
        return [cid for cid, e in self._current().items() if e.get("broker_user") and e.get("role") == "combiner"]

    def list(self) -> list[ClientRecord]:
        return [ClientRecord(cid, e["name"], e["created_at"]) for cid, e in sorted(self._current().items())]

    def _current(self) -> dict[str, dict[str, str]]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._clients = None, {}
            return self._clients
        except OSError as exc:
            raise StorageError(f"cannot read the client store {self.path}: {exc.strerror}") from exc
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:  # one stat per lookup; parse only when the file changed
            self._clients = self._read()
            self._stamp = stamp
            if st.st_mode & 0o077:
                log.warning("client store %s is readable by others; run: chmod 600 %s", self.path, self.path)
        return self._clients

    def _read(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            clients = data["clients"]
            for cid, entry in clients.items():
                if not isinstance(cid, str) or not {"name", "secret", "created_at"} <= set(entry):
                    raise KeyError(cid)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StorageError(f"the client store {self.path} is unreadable or malformed ({exc!r})") from None
        return dict(clients)

    # -- writing ---------------------------------------------------------------------------------
    def add(
        self, name: str, *, broker_user: bool = False, role: str = "client", hosted_by: str | None = None
    ) -> tuple[str, str]:
        """Create a client; returns its id and its secret (64 hex digits) to hand to the client.
        ``broker_user``: record that it has a broker user of its own, named like it; ``role``:
        "combiner" for a combiner of a hierarchical federation, "host" for a client host
        (recorded only if not a client); ``hosted_by``: the id of the host (a record of role
        "host") that answers for this client: the client's id names it (``CLIENT:HOST``) and its
        messages come from the host's broker user, if the host has one."""
        if not _NAME.match(name) or name == COORDINATOR_ID:
            raise ConfigError(
                f"client name {name!r}: use 1-48 letters, digits, '.', '_' or '-', starting with a letter or "
                f"digit, and not {COORDINATOR_ID!r}"
            )
        secret = secrets.token_hex(SECRET_BYTES)
        with self._locked() as clients:
            host = clients.get(hosted_by) if hosted_by is not None else None
            if hosted_by is not None and (host is None or host.get("role") != "host"):
                raise ConfigError(
                    f"--hosted-by {hosted_by}: no host of that id (make one: clients add NAME --role host)"
                )

            def new_id() -> str:
                plain = f"{name}-{secrets.token_hex(3)}"
                return hosted_id(plain, hosted_by) if hosted_by is not None else plain

            client_id = new_id()
            while client_id in clients:
                client_id = new_id()
            created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            clients[client_id] = {"name": name, "secret": secret, "created_at": created}
            if host is not None and hosted_by is not None:
                clients[client_id]["host"] = hosted_by
                if host.get("broker_user"):
                    clients[client_id]["broker_user"] = host["broker_user"]
            if broker_user:
                clients[client_id]["broker_user"] = client_id
            if role != "client":
                clients[client_id]["role"] = role
        return client_id, secret

    def remove(self, client_id: str) -> bool:
        """Delete a client (its messages are rejected from then on); False if it did not exist."""
        with self._locked() as clients:
            return clients.pop(client_id, None) is not None

    @contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, str]]]:
        """Read-modify-write under an exclusive lock, then replace the file atomically."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot write the client store {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            clients = self._read()
            yield clients
            self._write(clients)
        finally:
            os.close(lock)  # closing releases the lock

    def _write(self, clients: dict[str, dict[str, str]]) -> None:
        text = json.dumps({"version": 1, "clients": clients}, indent=2, sort_keys=True) + "\n"
        try:
            write_secret_file(self.path, text, overwrite=True)
        except OSError as exc:
            raise StorageError(f"cannot write the client store {self.path}: {exc.strerror}") from exc


def write_secret_file(path: str | Path, text: str, *, overwrite: bool) -> None:
    """Write ``text`` to ``path`` readable by its owner only (mode 0600), all at once.

    The text goes to a temporary file in the same folder (``mkstemp`` creates it with mode 0600,
    so the secrets are never in a file others may read, not even for a moment), then takes the
    final name: by rename when ``overwrite``, else by a hard link, which fails if ``path`` exists
    (``FileExistsError``), so two writers never replace each other's file. Readers see no file
    or the whole file, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
