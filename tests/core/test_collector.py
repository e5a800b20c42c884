"""core.collector: the cycle collector paused around imports and the first app import frozen out
of later collections. Each case runs in a fresh interpreter: the freeze is per process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path


def _run(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_collector_is_paused_in_the_block_and_restored_after() -> None:
    seen = _run(
        """
        import gc, json
        from fedhive.core.collector import collector_paused
        with collector_paused():
            inside = gc.isenabled()
        after = gc.isenabled()
        gc.disable()
        with collector_paused():
            pass
        kept_off = not gc.isenabled()
        gc.enable()
        try:
            with collector_paused(freeze_once=True):
                raise ValueError
        except ValueError:
            pass
        print(json.dumps({"inside": inside, "after": after, "kept_off": kept_off,
                          "after_raise": gc.isenabled(), "frozen": gc.get_freeze_count()}))
        """
    )
    assert seen == seen | {"inside": False, "after": True, "kept_off": True, "after_raise": True}
    assert seen["frozen"] > 0  # an import that fails still freezes what was loaded by then


def test_only_the_first_app_import_of_a_process_is_frozen() -> None:
    seen = _run(
        """
        import gc, json
        from fedhive.core.collector import collector_paused
        before = gc.get_freeze_count()
        with collector_paused(freeze_once=True):
            first = [[i] for i in range(10_000)]
        frozen = gc.get_freeze_count()
        with collector_paused(freeze_once=True):
            later = [[i] for i in range(10_000)]
        print(json.dumps({"before": before, "frozen": frozen, "again": gc.get_freeze_count()}))
        """
    )
    assert seen["before"] == 0
    assert seen["frozen"] >= seen["before"] + 10_000  # the first block's objects left the collector
    assert seen["again"] == seen["frozen"]  # a later app's leftovers are collected as usual


def test_loading_an_app_freezes_its_imports_and_leaves_the_collector_on(tmp_path: Path) -> None:
    (tmp_path / "heavy_app.py").write_text(
        textwrap.dedent(
            """
            import fedhive
            TABLE = [{"row": i} for i in range(20_000)]  # stands for a library's import-time state
            app = fedhive.ClientApp(init=lambda weights, config, ctx: {}, train=lambda weights, config, ctx: None)
            """
        )
    )
    seen = _run(
        f"""
        import gc, json
        from fedhive.app.loader import load_app
        load_app({str(tmp_path / "heavy_app.py")!r} + ":app")
        print(json.dumps({{"enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}}))
        """
    )
    assert seen["enabled"] is True
    assert seen["frozen"] >= 20_000
