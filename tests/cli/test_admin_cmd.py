"""``fedhive admin``: the first admin account and site credentials, in the platform's own database.

Run through ``main()`` in this process, as tests/cli/test_networked_cli.py does: the same parsing,
error mapping (one ``error:`` line, exit 2) and exit codes as the installed script.
"""

from __future__ import annotations

import io
import json
import logging
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedhive.api.security import verify_password
from fedhive.cli.main import main
from fedhive.service.settings import Settings
from fedhive.storage import users_repo
from fedhive.storage.database import Database
from fedhive.storage.models import Role


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def fedhive(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    monkeypatch.setenv("FEDHIVE_BCRYPT_ROUNDS", "4")  # the cheapest bcrypt: these tests check behaviour, not cost
    monkeypatch.delenv("FEDHIVE_SECRETS_KEY", raising=False)
    monkeypatch.delenv("FEDHIVE_DB_URL", raising=False)

    def run(*args: str, stdin: str = "") -> Result:
        monkeypatch.setattr(sys, "argv", ["fedhive", *args])
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        level = logging.getLogger("fedhive").level
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        finally:
            logging.getLogger("fedhive").setLevel(level)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def one_error_line(result: Result) -> str:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def stored_secret(home: Path, site_id: str) -> bytes | None:
    """What the server would check the site's signatures with: its database and its key."""
    settings = Settings(home=home)
    db = Database(settings.database_url())
    try:
        with db.session(read_only=True) as s:
            return users_repo.get_client_secret(s, site_id, settings.secret_box())
    finally:
        db.dispose()


def test_create_admin_makes_an_admin_who_can_sign_in_and_refuses_mistakes(
    fedhive: Callable[..., Result], tmp_path: Path
) -> None:
    home = str(tmp_path / "home")
    made = fedhive(
        "admin", "create-admin", "Ann@Example.org", "--password-stdin", "--home", home, stdin="correct horse\n"
    )
    assert made.returncode == 0, made.stderr
    assert "admin ann@example.org created" in made.stdout

    db = Database(Settings(home=tmp_path / "home").database_url())
    try:
        with db.session(read_only=True) as s:
            user = users_repo.get_user_by_email(s, "ann@example.org")
            assert user is not None and user.role is Role.ADMIN
            assert verify_password("correct horse", user.password_hash)
            assert "correct horse" not in user.password_hash
    finally:
        db.dispose()

    again = fedhive("admin", "create-admin", "ann@example.org", "--password-stdin", "--home", home, stdin="other one\n")
    assert "already exists" in one_error_line(again)
    short = fedhive("admin", "create-admin", "bob@example.org", "--password-stdin", "--home", home, stdin="x\n")
    assert "password" in one_error_line(short)
    not_mail = fedhive("admin", "create-admin", "bob", "--password-stdin", "--home", home, stdin="long enough pw\n")
    assert "not an e-mail address" in one_error_line(not_mail)


def test_site_credentials_create_list_rotate_revoke(fedhive: Callable[..., Result], tmp_path: Path) -> None:
    home = tmp_path / "home"
    created = fedhive("admin", "site", "create", "hospital-a", "--id", "hosp-a", "--json", "--home", str(home))
    assert created.returncode == 0, created.stderr
    line = json.loads(created.stdout)
    assert line["client_id"] == "hosp-a" and line["name"] == "hospital-a"
    first = line["secret"]
    assert stored_secret(home, "hosp-a") == first.encode()  # what the server checks signatures with

    listed = fedhive("admin", "site", "list", "--home", str(home))
    assert listed.returncode == 0 and "hosp-a\thospital-a\tOFFLINE" in listed.stdout
    assert first not in listed.stdout  # never a secret

    out_file = tmp_path / "rotated.json"
    rotated = fedhive("admin", "site", "rotate", "hosp-a", "--out-file", str(out_file), "--home", str(home))
    assert rotated.returncode == 0, rotated.stderr
    second = json.loads(out_file.read_text())["secret"]
    assert second != first and second not in rotated.stdout + rotated.stderr
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    assert stored_secret(home, "hosp-a") == second.encode()  # the old secret no longer verifies

    revoked = fedhive("admin", "site", "revoke", "hosp-a", "--home", str(home))
    assert revoked.returncode == 0 and "revoked hosp-a" in revoked.stdout
    assert stored_secret(home, "hosp-a") is None
    assert "hosp-a" not in fedhive("admin", "site", "list", "--home", str(home)).stdout


def test_site_mistakes_are_one_line_errors(fedhive: Callable[..., Result], tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    assert fedhive("admin", "site", "create", "a", "--id", "dup", "--home", home).returncode == 0
    assert "already exists" in one_error_line(fedhive("admin", "site", "create", "b", "--id", "dup", "--home", home))
    assert "no site 'nope'" in one_error_line(fedhive("admin", "site", "revoke", "nope", "--home", home))
    assert "no site 'nope'" in one_error_line(fedhive("admin", "site", "rotate", "nope", "--home", home))
    assert "--id 'a b'" in one_error_line(fedhive("admin", "site", "create", "x", "--id", "a b", "--home", home))
    many = fedhive("admin", "site", "create", "w", "--count", "3", "--home", home)  # secrets on a terminal: no
    assert "--count N takes --json or --out-file" in one_error_line(many)
    existing = tmp_path / "taken.json"
    existing.write_text("{}")
    refused = fedhive("admin", "site", "rotate", "dup", "--out-file", str(existing), "--home", home)
    assert "exists" in one_error_line(refused)
    assert stored_secret(tmp_path / "home", "dup") is not None  # refused before anything changed


def test_a_combiners_credentials_carry_its_role(fedhive: Callable[..., Result], tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    made = fedhive("admin", "site", "create", "rack-1", "--id", "comb-a", "--role", "combiner", "--json", "--home",
                   home)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert stored_secret(Path(home), "comb-a") == json.loads(made.stdout)["secret"].encode()
    assert fedhive("admin", "site", "create", "ward", "--id", "s-1", "--home", home).returncode == 0
    out = fedhive("admin", "site", "list", "--json", "--home", home).stdout
    listed = [json.loads(line) for line in out.splitlines()]
    assert {(s["client_id"], s["role"]) for s in listed} == {("comb-a", "combiner"), ("s-1", "site")}
    bad = fedhive("admin", "site", "create", "x", "--role", "coordinator", "--home", home)
    assert "--role must be 'site' or 'combiner'" in one_error_line(bad)
