"""The client store: ids and secrets the coordinator signs and verifies with."""

from __future__ import annotations

import secrets
import stat
from pathlib import Path

import pytest

from fedhive.errors import ConfigError, StorageError
from fedhive.runtime.credentials import CredentialStore, parse_secret


def test_add_returns_an_id_and_a_secret_that_the_store_then_knows(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "sub" / "clients.json")
    cid, secret = store.add("alice")
    assert cid.startswith("alice-") and cid != "alice"
    assert store.secret_of(cid) == parse_secret(secret) and len(parse_secret(secret)) == 32
    assert store.secret_of("alice") is None and store.secret_of("coordinator") is None
    other, other_secret = store.add("alice")  # the same name twice gives two identities
    assert other != cid and other_secret != secret
    assert [r.name for r in store.list()] == ["alice", "alice"]


def test_the_file_is_private_and_holds_no_secret_in_its_listing(tmp_path: Path) -> None:
    path = tmp_path / "clients.json"
    store = CredentialStore(path)
    _, secret = store.add("bob")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secret in path.read_text()
    assert all(secret not in repr(r) for r in store.list())


def test_a_second_reader_sees_clients_added_and_removed_later(tmp_path: Path) -> None:
    path = tmp_path / "clients.json"
    coordinator_view = CredentialStore(path)
    assert coordinator_view.secret_of("carol-000000") is None  # no file yet: nobody is known
    cid, secret = CredentialStore(path).add("carol")
    assert coordinator_view.secret_of(cid) == parse_secret(secret)
    assert CredentialStore(path).remove(cid)
    assert coordinator_view.secret_of(cid) is None
    assert not CredentialStore(path).remove(cid)


@pytest.mark.parametrize("name", ["", "coordinator", "-x", "a b", "x" * 49, "ünïcode"])
def test_bad_names_are_config_errors(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="client name"):
        CredentialStore(tmp_path / "c.json").add(name)


@pytest.mark.parametrize("text", ["", "abc", "zz" * 32, "ab" * 31, "a" * 42 + "!", "a" * 44])
def test_malformed_secrets_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="64 hexadecimal digits"):
        parse_secret(text)


def test_both_printed_forms_of_a_secret_are_keys() -> None:
    """``clients add`` prints the key in hex; ``admin site create`` (the platform) prints a token
    whose own bytes are the key, as the server's check takes it (``get_client_secret``)."""
    hex_secret = "0f" * 32
    assert parse_secret(hex_secret) == bytes.fromhex(hex_secret)
    token = secrets.token_urlsafe(32)
    assert parse_secret(f" {token}\n") == token.encode()


def test_a_corrupt_store_is_a_storage_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "clients.json"
    path.write_text("{not json")
    with pytest.raises(StorageError, match=r"clients\.json"):
        CredentialStore(path).secret_of("x")
