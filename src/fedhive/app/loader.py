"""Find a user's app by reference, import it once, and fingerprint its code.

References:

- ``package.module:attr`` — an importable module (``attr`` defaults to ``app``);
- ``path/to/file.py:attr`` — one file, imported under a private module name;
- ``path/to/project`` — a folder whose ``pyproject.toml`` has a ``[tool.fedhive]`` table:
  ``app = "package.module:attr"`` (the folder is put on ``sys.path``) and an optional
  ``[tool.fedhive.config]`` table, the app's default run config;
- ``builtin`` — fedhive's own model zoo, written on the same API.

``attr`` may be a ``ClientApp``, a class with ``init``/``train``/``evaluate`` methods (made with no
arguments) or an instance of one.

The digest is what sites compare to be sure they run the same code as the session, without any
code travelling: sha256 over the relative paths and bytes of the app's Python files — the folder
of a project, the package directory of a module in a package, or the single file otherwise.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedhive.app.client_app import ClientApp
from fedhive.core.collector import collector_paused
from fedhive.errors import AppError

BUILTIN = "builtin"
BUILTIN_REF = "fedhive.learning.builtin_app:app"
_SKIP_DIRS = {"__pycache__", "node_modules", "build", "dist", "venv"}


@dataclass(frozen=True)
class LoadedApp:
    ref: str  # as the user gave it
    name: str  # for people: the project or module name
    app: ClientApp
    digest: str  # sha256 hex of the app's code
    run_config: dict[str, Any] = field(default_factory=dict)  # defaults from [tool.fedhive.config]

    @property
    def short_digest(self) -> str:
        return self.digest[:12]


def load_app(ref: str) -> LoadedApp:
    """Load (once per process) the app ``ref`` names; ``AppError`` in one line if it cannot."""
    ref = ref.strip()
    if not ref:
        raise AppError("empty app reference: give module:attr, file.py:attr or a project folder")
    with collector_paused(freeze_once=True):  # the app's imports: see core.collector
        return _load_cached(BUILTIN_REF if ref == BUILTIN else ref, ref)


@functools.lru_cache(maxsize=32)
def _load_cached(target: str, given: str) -> LoadedApp:
    path = Path(target)
    if ":" not in target and path.is_dir():
        return _load_project(path, given)
    module_part, _, attr = target.rpartition(":") if ":" in target else (target, ":", "app")
    attr = attr or "app"
    if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
        return _load_file(Path(module_part), attr, given)
    module = _import(module_part, given)
    root = _code_root(module)
    name = BUILTIN if given == BUILTIN else module_part
    return LoadedApp(given, name, _app_from(module, attr, given), _digest(root))


def _load_project(folder: Path, given: str) -> LoadedApp:
    pyproject = folder / "pyproject.toml"
    try:
        doc = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AppError(f"app folder {folder} has no pyproject.toml with a [tool.fedhive] table") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise AppError(f"cannot read {pyproject}: {exc}") from None
    table = doc.get("tool", {}).get("fedhive")
    if not isinstance(table, dict) or not isinstance(table.get("app"), str):
        raise AppError(f'{pyproject}: [tool.fedhive] needs app = "package.module:attr"')
    config = table.get("config", {})
    if not isinstance(config, dict) or any(isinstance(v, dict | list) for v in config.values()):
        raise AppError(f"{pyproject}: [tool.fedhive.config] holds plain values (numbers, strings, booleans)")
    inner = table["app"]
    module_part, _, attr = inner.rpartition(":") if ":" in inner else (inner, ":", "app")
    if module_part.endswith(".py"):
        loaded = _load_file(folder / module_part, attr or "app", given)
    else:
        root = str(folder.resolve())
        if root not in sys.path:
            sys.path.insert(0, root)  # the project's own package, as `pip install -e` would give it
        module = _import(module_part, given)
        loaded = LoadedApp(given, "", _app_from(module, attr or "app", given), "")
    name = str(doc.get("project", {}).get("name") or folder.resolve().name)
    return LoadedApp(given, name, loaded.app, _digest(folder.resolve()), dict(config))


def _load_file(path: Path, attr: str, given: str) -> LoadedApp:
    if not path.is_file():
        raise AppError(f"app {given!r}: file {path} does not exist")
    resolved = path.resolve()
    module_name = "fedhive_app_" + hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise AppError(f"app {given!r}: {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise AppError(f"app {given!r}: importing {path} raised {type(exc).__name__}: {exc}") from None
    return LoadedApp(given, path.stem, _app_from(module, attr, given), _digest(resolved))


def _import(module_name: str, given: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise AppError(f"app {given!r}: no module named {exc.name!r} (is the app installed here?)") from None
        raise AppError(f"app {given!r}: importing {module_name} raised ModuleNotFoundError: {exc}") from None
    except Exception as exc:
        raise AppError(f"app {given!r}: importing {module_name} raised {type(exc).__name__}: {exc}") from None


def _app_from(module: Any, attr: str, given: str) -> ClientApp:
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise AppError(f"app {given!r}: module {module.__name__!r} has no attribute {attr!r}") from None
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as exc:
            raise AppError(f"app {given!r}: {attr}() raised {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, ClientApp) and not callable(getattr(obj, "train", None)):
        raise AppError(
            f"app {given!r}: {attr} is a {type(obj).__name__}, not a fedhive.ClientApp or a class with train"
        )
    app = ClientApp.from_object(obj)
    app.check_complete(f"app {given!r}")
    return app


def _code_root(module: Any) -> Path:
    file = getattr(module, "__file__", None)
    if file is None:
        raise AppError(f"module {module.__name__!r} has no source file to fingerprint")
    path = Path(file).resolve()
    # A module in a package: the package's directory (its sibling modules are the app's code too).
    return path.parent if (path.parent / "__init__.py").is_file() else path


def _digest(root: Path) -> str:
    files = [root] if root.is_file() else sorted(_python_files(root))
    h = hashlib.sha256()
    for f in files:
        rel = f.name if root.is_file() else f.relative_to(root).as_posix()
        data = f.read_bytes()
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def _python_files(root: Path) -> list[Path]:
    out = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts[:-1]
        if any(p in _SKIP_DIRS or p.startswith(".") for p in parts):
            continue
        out.append(path)
    return out
