"""``fedhive new NAME --template numpy|torch|sklearn``: write a runnable project to start from.

The project is a folder ``NAME/`` holding ``pyproject.toml`` (with the ``[tool.fedhive]`` table that
``--app NAME`` reads), a package named after the project (``my-app`` -> ``my_app``: the folder goes
on ``sys.path`` when the app is loaded, so the package name must not shadow another module) with
``task.py`` (model and data) and ``client_app.py`` (the ``ClientApp``), the project's own test, a
session file for a run over RabbitMQ and a README.

The templates are files shipped with fedhive (``fedhive/cli/templates/<template>/``, every file
ending in ``.tmpl`` so no tool mistakes them for fedhive's own code). Placeholders are replaced
as plain text; nothing in a template is executed.
"""

from __future__ import annotations

import importlib.util
import keyword
import os
import re
import shlex
import shutil
import sys
import tempfile
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated

import typer

from fedhive import __version__
from fedhive.errors import ConfigError

TEMPLATES = {
    "numpy": "softmax regression in plain numpy",
    "torch": "a small PyTorch MLP with its own training loop",
    "sklearn": "scikit-learn's SGDClassifier, warm-started from the global model",
}
COMMON = "common"  # files every template gets (a template's own file of the same name wins)
SUFFIX = ".tmpl"

# Placeholders in the template files, replaced as plain text.
PROJECT_PLACEHOLDER = "fedhive-template-project"
PACKAGE_PLACEHOLDER = "fedhive_template_pkg"
DESCRIPTION_PLACEHOLDER = "fedhive-template-description"
TEMPLATE_PLACEHOLDER = "fedhive-template-name"
VERSION_PLACEHOLDER = "fedhive-template-version"

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}\Z")
# Modules a project package must not be named after, besides the standard library's and whatever
# is installed here: the project folder goes first on sys.path when its app is loaded.
_RESERVED = {"fedhive", "numpy", "torch", "sklearn", "scipy", "tests", "test", "conftest", "setup", "site"}


def new(
    name: Annotated[str, typer.Argument(help="the project's name (letters, digits, '-', '_'), e.g. my-app")],
    template: Annotated[str, typer.Option("--template", "-t", help="numpy, torch or sklearn")] = "numpy",
    directory: Annotated[Path, typer.Option("--dir", help="the folder to create the project in")] = Path("."),
) -> None:
    package = package_name(name)
    if template not in TEMPLATES:
        raise ConfigError(f"unknown template {template!r}; templates: {', '.join(TEMPLATES)}")
    target = directory / name
    check_target(target)
    written = write_project(target, render(template, name, package))
    where = shlex.quote(str(target))
    print(f"created {target} from the {template} template ({TEMPLATES[template]}):")
    for rel in written:
        print(f"  {target / rel}")
    print("next:")
    print(f"  fedhive simulate --app {where} --clients 5 --rounds 5")
    print(f"  (cd {where} && python -m pytest -q)      # the project's own test")


def package_name(name: str) -> str:
    """The package of project ``name``: ``My-App`` -> ``my_app``; ``ConfigError`` if it cannot be."""
    if not _NAME.match(name) or name.endswith(("-", "_")):
        raise ConfigError(
            f"{name!r} is not a valid project name: use up to 64 letters, digits, '-' and '_', "
            "starting with a letter (e.g. my-app)"
        )
    package = name.lower().replace("-", "_")
    if keyword.iskeyword(package) or not package.isidentifier():
        raise ConfigError(f"{name!r} is not a valid project name: its package {package!r} is a Python keyword")
    if package in _RESERVED or package in sys.stdlib_module_names or _installed(package):
        raise ConfigError(
            f"{name!r} is not a valid project name: its package {package!r} would shadow the module of that name"
        )
    return package


def _installed(package: str) -> bool:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin is not None  # an empty folder (namespace package) is no module


def check_target(target: Path) -> None:
    if target.is_dir():
        if any(target.iterdir()):
            raise ConfigError(f"{target} already exists and is not empty: choose another name or --dir")
    elif target.exists() or target.is_symlink():
        raise ConfigError(f"{target} already exists and is not a folder")
    if target.parent.exists() and not target.parent.is_dir():
        raise ConfigError(f"--dir {target.parent} is not a folder")


def render(template: str, name: str, package: str) -> dict[str, str]:
    """The project's files, relative path -> text, from the common files and the template's own."""
    root = files("fedhive.cli").joinpath("templates")
    sources: dict[str, Traversable] = {}
    for folder in (COMMON, template):
        sources.update(_template_files(root.joinpath(folder), ""))
    replacements = {
        PROJECT_PLACEHOLDER: name,
        PACKAGE_PLACEHOLDER: package,
        DESCRIPTION_PLACEHOLDER: TEMPLATES[template],
        TEMPLATE_PLACEHOLDER: template,
        VERSION_PLACEHOLDER: __version__,
    }
    pattern = re.compile("|".join(re.escape(p) for p in replacements))

    def fill(text: str) -> str:  # one pass: a name that looks like a placeholder stays as it is
        return pattern.sub(lambda m: replacements[m.group(0)], text)

    return {fill(rel): fill(source.read_text(encoding="utf-8")) for rel, source in sorted(sources.items())}


def _template_files(folder: Traversable, prefix: str) -> dict[str, Traversable]:
    found: dict[str, Traversable] = {}
    for entry in folder.iterdir():
        if entry.is_dir():
            if entry.name != "__pycache__":
                found.update(_template_files(entry, f"{prefix}{entry.name}/"))
        elif entry.name.endswith(SUFFIX):
            found[prefix + entry.name.removesuffix(SUFFIX)] = entry
    return found


def write_project(target: Path, project: dict[str, str]) -> list[str]:
    """Write ``project`` into ``target`` all at once: into a temporary sibling folder first, which
    is then renamed, so a failure leaves nothing half-written behind."""
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=parent))
    except OSError as exc:
        raise ConfigError(f"cannot create {target}: {exc.strerror or exc}") from None
    try:
        for rel, text in project.items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        staging.chmod(0o777 & ~_umask())
        if target.is_dir():
            target.rmdir()  # empty (checked): the rename takes its place
        os.replace(staging, target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from None
    return list(project)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
