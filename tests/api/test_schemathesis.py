"""Schemathesis over the OpenAPI spec, in process: no generated request gets a 5xx.

Every operation is called with a valid admin token (so requests get past authentication and
reach validation and the handlers) on a fresh SQLite database with two ONLINE peers. Bounded to
20 examples per operation. Needs ``schemathesis`` (a dev dependency); skipped where it is absent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")

from api_harness import PASSWORD, make_settings  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from recording_launcher import RecordingLauncher  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from fedhive.api.app import create_app  # noqa: E402
from fedhive.api.auth import create_admin  # noqa: E402
from fedhive.api.security import issue_token  # noqa: E402
from fedhive.service.services import Services, open_stores  # noqa: E402
from fedhive.storage import users_repo  # noqa: E402
from fedhive.storage.models import ClientStatus  # noqa: E402

pytestmark = pytest.mark.slow


class Target:
    def __init__(self, home: Path) -> None:
        config = make_settings(home)
        db, artifacts = open_stores(config)
        self.services = Services(settings=config, db=db, artifacts=artifacts, launcher=RecordingLauncher(db))
        admin = create_admin(self.services, "root@example.org", PASSWORD)
        token = issue_token(str(admin.id), "admin", secret=config.jwt_secret.get_secret_value())
        self.headers = {"Authorization": f"Bearer {token}"}
        with db.session() as s:
            for name in ("peer-a", "peer-b"):
                client_id, _ = users_repo.create_client(s, name, box=config.secret_box())
                users_repo.record_heartbeat(s, client_id, status=ClientStatus.ONLINE)
        self.app = create_app(config, self.services)


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    built = Target(tmp_path)
    try:
        yield built
    finally:
        built.services.close()


# Schemathesis' own pytest integration (``schemathesis.pytest.from_fixture``) fails on pytest 9
# ("'Function' object has no attribute '_nodeid'"), so each operation's Hypothesis strategy is
# driven here directly: the same generation and checks, one test over every operation.
def test_no_request_gets_a_server_error(target: Target) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", target.app)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def call(case: schemathesis.Case) -> None:
                case.call_and_validate(headers=target.headers, checks=[not_a_server_error])

            try:
                call()
            except Unsatisfiable:
                pass  # negative mode on an operation with no inputs: nothing can be made invalid
            except Exception as exc:  # every operation is tried; all failures are reported together
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
