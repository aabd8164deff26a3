"""What a wheel built from pyproject.toml holds, checked without building one: its packages and its package data."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path
from types import UnionType

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]

#: Folders of files that the code opens at run time (``__file__``-relative or importlib.resources).
RUNTIME_DATA = ["reddit_amazon/sample/inputs", "reddit_amazon/sample/reddit-amazon", "reddit_amazon/prompts",
                "cards/templates"]


def _packages() -> list[str]:
    # Only these tests need setuptools: Python >= 3.12 venvs come without it (the `test` extra installs it).
    find_namespace_packages = pytest.importorskip("setuptools").find_namespace_packages
    return find_namespace_packages(where=str(ROOT), **SETUPTOOLS["packages"]["find"])


def test_the_wheel_installs_only_the_four_top_level_packages():
    """``include = ["benchmark*"]`` also took ``benchmarks/`` (the speed scripts) into site-packages."""
    assert {name.partition(".")[0] for name in _packages()} == {"reddit_amazon", "benchmark", "lavic_ref", "cards"}


def test_package_data_covers_every_file_the_code_reads():
    shipped = {path for package in _packages() for pattern in SETUPTOOLS["package-data"].get(package, [])
               for path in ROOT.joinpath(*package.split(".")).glob(pattern)}
    read = {path for folder in RUNTIME_DATA for path in (ROOT / folder).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".py"}
    assert read
    assert sorted(str(path.relative_to(ROOT)) for path in read - shipped) == []


def test_the_sdist_carries_what_the_readme_points_to_and_the_licence():
    """The README installs with ``-c constraints.txt`` and links docs/; Apache-2.0 asks for the licence text."""
    manifest = (ROOT / "MANIFEST.in").read_text(encoding="utf-8").split()
    assert {"constraints.txt", "LICENSE", "docs"} <= set(manifest)
    assert "Apache License" in (ROOT / "LICENSE").read_text(encoding="utf-8")[:200]
    assert tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["license-files"] == ["LICENSE"]


def test_the_test_extra_installs_what_these_tests_import():
    """A Python >= 3.12 venv has no setuptools: without it in `test`, the wheel checks above were skipped there."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert any(req.startswith("setuptools") for req in extra["test"]), extra["test"]


#: Releases that the build must not run with: it decodes images and follows URLs from metadata it does not control.
VULNERABLE = {
    "pillow": "10.0.0",  # bundled libwebp with CVE-2023-4863 (heap overflow decoding a WebP image)
    "requests": "2.32.3",  # CVE-2024-47081: a crafted URL sent the user's ~/.netrc credentials to another host
}


def test_the_dependencies_leave_out_releases_with_known_holes_in_what_the_build_feeds_them():
    from packaging.requirements import Requirement

    requirements = {(r := Requirement(line)).name.lower(): r.specifier for line in
                    tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]}
    assert {name: version for name, version in VULNERABLE.items() if requirements[name].contains(version)} == {}


@pytest.mark.parametrize("package", ["reddit_amazon", "benchmark", "lavic_ref"])
def test_python_dash_m_runs_each_command_line(package):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", package, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.startswith("Usage: "), done.stderr


SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_python_dash_m_runs_the_module_each_console_script_names(script):
    """``python -m reddit_amazon.cli build`` (the module of ``[project.scripts]``, as from a checkout without an
    install) exited 0 having done nothing: the module defined ``main`` but never called it."""
    import subprocess
    import sys

    module = SCRIPTS[script].partition(":")[0]
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.startswith("Usage: "), (done.stdout, done.stderr)


@pytest.mark.parametrize("package", ["reddit_amazon", "benchmark", "lavic_ref", "cards"])
def test_each_package_ships_a_py_typed_marker(package):
    """PEP 561: without ``py.typed`` in the wheel, mypy/pyright treat the annotated API as untyped
    (``import-untyped``) in a caller's notebook or project."""
    assert (ROOT / package / "py.typed").is_file()
    assert "py.typed" in SETUPTOOLS["package-data"].get(package, [])


PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _distribution_name(requirement: str) -> str:
    """The normalized (PEP 503) distribution name a requirement line names."""
    return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]).lower()


@functools.cache  # read by two tests; ~4 s each (packages_distributions() scans every installed distribution)
def _imported_distributions() -> dict[str, list[str]]:
    """Each third-party top-level module that a module of the toolkit imports (lazily or not), with the installed
    distributions providing it; a module of an extra that is not installed here (torch on Python 3.13) goes by its
    own name. Cached: the callers only read it."""
    import sys

    from benchmark.registry import installed_distributions

    own = {"reddit_amazon", "benchmark", "lavic_ref", "cards"}
    imported = set()
    for package in own:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.partition(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.partition(".")[0])
    third_party = imported - own - set(sys.stdlib_module_names)
    return {module: installed_distributions(module) or [module] for module in sorted(third_party)}


def test_every_package_the_toolkit_imports_is_declared():
    """The toolkit imported PyYAML, urllib3 and jinja2 without declaring them: each came in only through another
    package, which may drop it in any release (a clean install would then fail at import)."""
    requirements = [*PROJECT["dependencies"], *(r for extra in PROJECT["optional-dependencies"].values() for r in extra)]
    declared = {_distribution_name(r) for r in requirements}
    missing = {module: names for module, names in _imported_distributions().items()
               if not any(_distribution_name(d) in declared for d in names)}
    assert missing == {}


#: Core dependencies that no module of the toolkit imports, each with why it is required all the same. None today:
#: urllib3 (http_session's private-address guard) and pyyaml (dataset_folder's card YAML errors) are imported.
REQUIRED_WITHOUT_AN_IMPORT: dict[str, str] = {}


def test_every_core_dependency_is_imported_by_the_toolkit():
    """The reverse of the test above: a core dependency that no module imports any more is installed by every user
    for nothing (or is needed for a reason that belongs in REQUIRED_WITHOUT_AN_IMPORT, with the reason)."""
    imported = {_distribution_name(d) for names in _imported_distributions().values() for d in names}
    core = {_distribution_name(r) for r in PROJECT["dependencies"]}
    assert sorted(core - imported - set(REQUIRED_WITHOUT_AN_IMPORT)) == []
    assert sorted(set(REQUIRED_WITHOUT_AN_IMPORT) & imported) == []  # an entry whose package is now imported goes


def _admits(annotation, kind: type) -> bool:
    """Whether a value of type ``kind`` fits ``annotation`` (a class or a union of classes and generics)."""
    import typing

    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, UnionType) else (annotation,)
    return any(isinstance(option, type) and issubclass(kind, option)
               or isinstance(typing.get_origin(option), type) and issubclass(kind, typing.get_origin(option))
               for option in options)


def test_the_python_entry_points_are_typed_to_take_the_paths_they_take():
    """Each takes a str or a Path at run time (``load`` was typed so), yet ``RunConfig(dataset=Path(...))``,
    ``run_reddit_stage(["dumps"], "work", ...)`` and ``sample_options("out")`` failed a caller's type check: the
    package ships py.typed, so mypy and pyright read these annotations in the caller's notebook or project."""
    import typing

    from benchmark.retrieve import RetrieveConfig
    from benchmark.runner import RunConfig
    from reddit_amazon.build import sample_options
    from reddit_amazon.dataset_folder import load
    from reddit_amazon.pipeline import run_reddit_stage

    paths = [(RunConfig, "dataset"), (RetrieveConfig, "dataset"), (load, "path"), (run_reddit_stage, "workdir"),
             (sample_options, "out"), (sample_options, "workdir")]
    for entry, parameter in paths:
        annotation = typing.get_type_hints(entry)[parameter]
        assert _admits(annotation, str) and _admits(annotation, Path), (entry.__name__, parameter, annotation)
    (inputs,) = typing.get_args(typing.get_type_hints(run_reddit_stage)["inputs"])
    assert _admits(inputs, str) and _admits(inputs, Path), inputs


#: Regular-expression syntax that Python 3.11 added: possessive quantifiers (``a++``, ``a*+``, ``a?+``,
#: ``a{2}+``) and atomic groups (``(?>...)``). On 3.10, which the package supports, ``re.compile`` refuses them
#: when the module is imported.
_PYTHON_311_REGEX = re.compile(r"(?<!\\)(?:[+*?}]\+|\(\?>)")


def _regex_literals(path: Path) -> list[str]:
    """The string literals ``path`` passes to a ``re`` function (``re.compile``, ``re.sub`` ...), concatenations
    of literals joined."""
    literals = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "re" and node.args
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            literals.append(node.args[0].value)
    return literals


def test_regular_expressions_compile_on_python_3_10():
    """A possessive quantifier in the redaction's field pattern made every command fail at import on 3.10."""
    sources = [path for package in ("reddit_amazon", "benchmark", "lavic_ref", "cards")
               for path in (ROOT / package).rglob("*.py")]
    found = [(str(path.relative_to(ROOT)), pattern) for path in sources for pattern in _regex_literals(path)
             if _PYTHON_311_REGEX.search(pattern)]
    assert sum(len(_regex_literals(path)) for path in sources) > 40
    assert found == []


#: Attributes of exceptions that Python 3.11 added: ``BaseException.add_note``, ``sqlite3.Error.sqlite_errorcode``
#: and ``sqlite_errorname``.
_PYTHON_311_EXCEPTION_ATTRIBUTES = {"add_note", "sqlite_errorcode", "sqlite_errorname"}


def test_no_exception_attribute_of_python_3_11_is_used():
    """On 3.10, which the package supports, a failing Reddit-stage task raised AttributeError (``add_note``) in
    place of its own error, and so did the relevance cache's close on a full disk (``sqlite_errorcode``)."""
    uses = [(str(path.relative_to(ROOT)), node.attr) for package in ("reddit_amazon", "benchmark", "lavic_ref", "cards")
            for path in (ROOT / package).rglob("*.py")
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Attribute) and node.attr in _PYTHON_311_EXCEPTION_ATTRIBUTES]
    assert uses == []
