"""Find a recommender class by name and build it with ``--model-args``.

A model spec is one of:

* a built-in name (:data:`BUILTIN`);
* an entry point name in the group ``reddit_amazon.recommenders`` (how third-party packages and
  ``lavic`` register: ``[project.entry-points."reddit_amazon.recommenders"] mine = "pkg.mod:Class"``);
* ``package.module:Class``;
* ``path/to/file.py:Class``.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import json
import math
import re
import sys
import threading
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path, PurePath
from types import UnionType
from typing import Any, Literal, Union

from reddit_amazon.cli_errors import with_extra_hint
from reddit_amazon.files import file_sha256
from reddit_amazon.redaction import is_secret_name

ENTRY_POINT_GROUP = "reddit_amazon.recommenders"

BUILTIN: dict[str, str] = {
    "random": "benchmark.recommenders.random_choice:RandomRecommender",
    "bm25": "benchmark.recommenders.similarity:BM25Recommender",
    "sbert": "benchmark.recommenders.similarity:SBERTRecommender",
    "openai-chat": "benchmark.recommenders.openai_chat:OpenAIChatRecommender",
    "hf-vlm": "benchmark.recommenders.hf_vlm:HFVisionLanguageRecommender",
}


class RegistryError(ValueError):
    """A model spec or its arguments cannot be resolved."""


@dataclass(frozen=True)
class PluginCode:
    """What names the code of a recommender from outside the toolkit (the toolkit's own is named by its package
    version and git revision): an edited plugin is another run."""

    # of the plugin's file, or of its module's file (None: a module without one); where its class is defined in
    # another module (a package's __init__ re-exporting it), the sha256 of both files' sha256s
    sha256: str | None
    distribution: str | None  # "name==version" of the installed distribution providing its module; None: none


@dataclass(frozen=True)
class ResolvedModel:
    spec: str
    target: str  # "module:Class" or "file.py:Class" that was loaded
    source: str  # builtin | entry point | module | file
    cls: type
    code: PluginCode | None = None  # None: the toolkit's own

    @property
    def identity(self) -> str:
        """What was loaded, however ``spec`` spelled it (see :func:`identity`)."""
        return _identity(self.source, self.target)


def available_names() -> list[str]:
    names = dict.fromkeys(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        names.setdefault(ep.name)
    return sorted(names)


def resolve(spec: str) -> ResolvedModel:
    """The class a model spec names. Unknown names fail with the close matches."""
    source, target, entry_point = _locate(spec)
    if source == "builtin":
        return ResolvedModel(spec, target, source, _load_object(target, spec))
    if source == "entry point" and entry_point is not None:
        try:
            cls = entry_point.load()
        except (Exception, SystemExit) as error:  # report which plugin failed to import, and why
            raise RegistryError(with_extra_hint(f"recommender {spec!r} (entry point {target}) failed to "
                                                f"load: {_import_failure(error)}", error)) from error
        dist = entry_point.dist
        return ResolvedModel(spec, target, source, cls, _module_code(
            entry_point.module, cls, lambda: None if dist is None else f"{dist.name}=={dist.version}"))
    if source == "file":
        where, _, attribute = spec.rpartition(":")
        cls = _load_from_file(Path(where), attribute, spec)
        return ResolvedModel(spec, spec, source, cls, PluginCode(_files_sha256(Path(where), _defining_file(cls)), None))
    if source == "module":
        where = spec.rpartition(":")[0]
        cls = _load_object(spec, spec)
        return ResolvedModel(spec, spec, source, cls, _module_code(where, cls, lambda: _distribution(where)))
    names = available_names()
    close = difflib.get_close_matches(spec, names, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise RegistryError(f"unknown recommender {spec!r}.{hint} Available: {', '.join(names)}; "
                        "or give module:Class or path/to/file.py:Class.")


def identity(spec: str) -> str:
    """What ``spec`` names, the same for every spelling of it, found without loading it: ``module:Class`` for a
    built-in, an entry point or a module (``random`` is ``benchmark.recommenders.random_choice:RandomRecommender``);
    ``file.py:Class`` for a plugin file, by its name, wherever it lies (``./plugins/x.py``, ``plugins/x.py`` and
    its absolute path are one plugin: what its file holds is :class:`PluginCode`'s to tell). An unknown spec is
    itself."""
    source, target, _ = _locate(spec)
    return _identity(source, target)


def _locate(spec: str) -> tuple[str, str, EntryPoint | None]:
    """Where ``spec`` points, in :func:`resolve`'s order, without importing anything: its source (``builtin``,
    ``entry point``, ``module``, ``file``; ``unknown``), its target and its entry point."""
    if spec in BUILTIN:
        return "builtin", BUILTIN[spec], None
    entry_point = next((ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec), None)
    if entry_point is not None:
        return "entry point", entry_point.value, entry_point
    if ":" in spec:
        return ("file" if spec.rpartition(":")[0].endswith(".py") else "module"), spec, None
    return "unknown", spec, None


def _identity(source: str, target: str) -> str:
    if source != "file":
        return target
    where, _, attribute = target.rpartition(":")
    return f"{PurePath(where).name}:{attribute}"


def _module_code(module_name: str, cls: Any, distribution: Callable[[], str | None]) -> PluginCode | None:
    """The code of a plugin from ``module_name``: its file's sha256 (and that of the module defining ``cls``) and
    what ``distribution()`` names; None for the toolkit's (whose distribution is not looked up: that scans every
    installed package, ~0.2 s)."""
    if ships_with_toolkit(cls):
        return None
    return PluginCode(_files_sha256(_module_file(module_name), _defining_file(cls)), distribution())


def _module_file(module_name: str | None) -> Path | None:
    file = getattr(sys.modules.get(module_name or ""), "__file__", None)
    return Path(file) if file else None


def _defining_file(cls: Any) -> Path | None:
    """The file of the module ``cls`` is defined in: the plugin's code where a package only re-exports it."""
    return _module_file(getattr(cls, "__module__", None))


def _files_sha256(*files: Path | None) -> str | None:
    """sha256 of the one file; of the files' sha256s (in order) where there are two (None: no file)."""
    unique = list(dict.fromkeys(file.resolve() for file in files if file is not None))
    if len(unique) < 2:
        return file_sha256(unique[0]) if unique else None
    return hashlib.sha256("\n".join(file_sha256(file) for file in unique).encode()).hexdigest()


def _distribution(module_name: str) -> str | None:
    """``name==version`` of the installed distribution(s) providing ``module_name``'s top-level package."""
    from importlib.metadata import version

    names = installed_distributions(module_name.partition(".")[0])
    return ", ".join(f"{name}=={version(name)}" for name in names) or None


def installed_distributions(top_level: str) -> list[str]:
    """The names of the installed distributions providing the top-level module or package ``top_level``.

    Python 3.10's ``packages_distributions()`` reads only each distribution's ``top_level.txt``, which wheels built
    by flit, hatchling and others lack (markdown-it-py's): a distribution it does not name is looked for by its
    files, as 3.11's does."""
    from importlib.metadata import distributions, packages_distributions

    named = set(packages_distributions().get(top_level, ()))
    if not named:
        named = {dist.metadata["Name"] for dist in distributions()
                 if any((file.parts[0] if len(file.parts) > 1 else file.stem) == top_level
                        for file in dist.files or () if file.suffix == ".py")}
    return sorted(named)


def _load_object(target: str, spec: str) -> Any:
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        message = f"recommender {spec!r}: cannot import {module_name!r}: {error}{_file_hint(module_name, attribute, error)}"
        raise RegistryError(with_extra_hint(message, error)) from error
    except (Exception, SystemExit) as error:  # a plugin that fails at import is named, as an entry point is
        raise RegistryError(with_extra_hint(f"recommender {spec!r} (module {module_name}) failed to load: "
                                            f"{_import_failure(error)}", error)) from error
    return _attribute(module, attribute, spec)


def _import_failure(error: BaseException) -> str:
    """What a plugin's import raised, as a refusal names it. A module that is also a script (argparse, sys.exit at
    module level) exits while imported: said as such, or the run ends in its status without a word."""
    if isinstance(error, SystemExit):
        return (f"SystemExit: {error} (the module exits when imported: put its script code under "
                '`if __name__ == "__main__":`)')
    return f"{type(error).__name__}: {error}"


def _file_hint(module_name: str, attribute: str, error: ImportError) -> str:
    """Where ``module_name`` itself cannot be found but is a file of the working folder (which the ``benchmark``
    command does not put on ``sys.path``), how to give it as a file instead."""
    missing = getattr(error, "name", None) or ""
    file = Path(*module_name.split(".")).with_suffix(".py")
    if not (module_name == missing or module_name.startswith(f"{missing}.")) or not file.is_file():
        return ""
    return f"; {file.as_posix()} is here: give --model {file.as_posix()}:{attribute}"


#: The plugin folders a :func:`plugin_imports` block put on ``sys.path``, each with the number of open blocks
#: (runs, maybe in other threads) that resolved a plugin file in it: it leaves ``sys.path`` with the last of them.
_plugin_folder_users: dict[str, int] = {}
_plugin_folders_lock = threading.Lock()
#: The folders the current block (of this thread or task) uses; None outside a block.
_block_folders: ContextVar[list[str] | None] = ContextVar("plugin_folders", default=None)


@contextmanager
def plugin_imports() -> Iterator[None]:
    """The folders of plugin files resolved in the block stay on ``sys.path`` for the block only: the plugin imports
    the modules beside it while it runs (in its methods too), and a notebook or sweep calling ``benchmark.runner.run``
    would otherwise find that folder's modules first, at ``sys.path[0]``, for the rest of its session. Blocks in
    other threads keep theirs until they end, a folder two of them use included."""
    used: list[str] = []
    token = _block_folders.set(used)
    try:
        yield
    finally:
        _block_folders.reset(token)
        with _plugin_folders_lock:
            for folder in used:
                _plugin_folder_users[folder] -= 1
                if not _plugin_folder_users[folder]:
                    del _plugin_folder_users[folder]
                    with suppress(ValueError):  # the plugin may have taken it off itself
                        sys.path.remove(folder)


def _put_plugin_folder_on_path(folder: str) -> None:
    """``folder`` first on ``sys.path`` (if it is not there yet), counted as used by the current block, if any."""
    used = _block_folders.get()
    with _plugin_folders_lock:
        if folder not in sys.path:
            sys.path.insert(0, folder)
            if used is not None:
                _plugin_folder_users.setdefault(folder, 0)
        if used is not None and folder in _plugin_folder_users and folder not in used:
            _plugin_folder_users[folder] += 1
            used.append(folder)


def _load_from_file(path: Path, attribute: str, spec: str) -> Any:
    if not path.is_file():
        raise RegistryError(f"recommender {spec!r}: no such file {path}")
    module_name = f"_benchmark_plugin_{abs(hash(path.resolve()))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    assert module_spec is not None and module_spec.loader is not None  # a .py file has both
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    folder = str(path.resolve().parent)
    _put_plugin_folder_on_path(folder)  # the plugin may import modules that sit beside it, as a script would
    try:
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as error:  # SyntaxError included: named like an entry point that fails to load
        del sys.modules[module_name]
        raise RegistryError(with_extra_hint(f"recommender {spec!r} (file {path}) failed to load: "
                                            f"{_import_failure(error)}", error)) from error
    return _attribute(module, attribute, spec, where=str(path))


def _attribute(module: Any, attribute: str, spec: str, where: str | None = None) -> Any:
    """``module``'s ``attribute``; a dotted one (``Outer.Inner``) is looked up part by part, as entry points are."""
    found, owner = module, where or module.__name__
    for name in attribute.split("."):
        if not hasattr(found, name):
            public = [n for n, value in getattr(found, "__dict__", {}).items()
                      if not n.startswith("_") and isinstance(value, type)]
            close = difflib.get_close_matches(name, public, n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise RegistryError(f"recommender {spec!r}: {owner} has no {name!r}.{hint}")
        found, owner = getattr(found, name), f"{owner}:{name}" if found is module else f"{owner}.{name}"
    return found


#: One ``key=value`` of ``--model-args``: commas inside double quotes belong to the value.
_ARG = re.compile(r'(?:[^,"]|"(?:\\.|[^"\\])*")+')


def redacted_args(model_args: dict[str, Any]) -> dict[str, Any]:
    """Model args as they may be shown or recorded: the values of secret-named ones
    (:func:`~reddit_amazon.redaction.is_secret_name`: ``api_key``, ``hf_token``, ``accessToken``, ``pwd``) never
    are, nor credentials inside a URL-valued one (``base_url=http://user:pass@host/v1?api_key=...``)."""
    return {k: "<redacted>" if is_secret_name(k) else _without_credentials(v) for k, v in model_args.items()}


def secret_values(model_args: dict[str, Any]) -> list[str]:
    """The values of the secret-named ``model_args`` (as :func:`redacted_args` names them), to redact from what
    is printed: a plugin's own error may quote the key it was given."""
    return [str(value) for name, value in model_args.items() if is_secret_name(name) and value is not None]


def _without_credentials(value: Any) -> Any:
    """A URL holding credentials as the build records endpoints
    (:func:`reddit_amazon.openai_endpoint.display_url`); any other value as given, so the run signatures of
    existing folders do not change."""
    if not isinstance(value, str) or "://" not in value:
        return value
    from reddit_amazon.openai_endpoint import display_url, has_credentials

    return display_url(value) if has_credentials(value) else value


def parse_model_args(text: str | None, option: str = "--model-args") -> dict[str, Any]:
    """``'a=1,b=true,c=x,d="p,q"'`` -> ``{"a": 1, "b": True, "c": "x", "d": "p,q"}``: JSON scalars are decoded
    (a double-quoted value may hold commas), the rest stays text; ``NaN``/``Infinity`` are refused. Errors
    name ``option`` and never quote a value (it may be a key)."""
    if not text:
        return {}
    args: dict[str, Any] = {}
    for number, part in enumerate(_ARG.findall(text), start=1):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep:
            raise RegistryError(f"{option}: argument {number} has no '=' (expected name=value[,name=value...]; "
                                'quote a value holding a comma: name="a,b")')
        if not key.isidentifier():
            raise RegistryError(f"{option}: {key[:40]!r} is not an argument name (letters, digits and _)")
        if key in args:
            raise RegistryError(f"{option}: {key} is given twice")
        decoded = _decode_value(value.strip())
        if isinstance(decoded, float) and not math.isfinite(decoded):  # JSON's NaN, Infinity, 1e999
            raise RegistryError(f"{option}: {key} is not a finite number (quote a value meant as text: "
                                f'{key}="...")')
        if isinstance(decoded, int) and not -2**63 <= decoded < 2**64:  # run.json (JSON via orjson) holds 64 bits
            raise RegistryError(f"{option}: {key} is an integer beyond 64 bits (quote a value meant as text: "
                                f'{key}="...")')
        args[key] = decoded
    return args


def _decode_value(value: str) -> Any:
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        decoded = json.loads(value)
    except ValueError:
        return value
    return decoded if isinstance(decoded, (int, float, str)) else value


def typed_args(resolved: ResolvedModel, model_args: dict[str, Any]) -> dict[str, Any]:
    """``model_args`` as the type hints of ``resolved``'s constructor ask for them, checked before it runs.

    A value is converted where that is unambiguous (``1`` for a ``float`` is ``1.0``, ``0``/``1`` for a ``bool``
    are ``False``/``True``, an integer for a ``str`` or ``Path`` is its digits: a folder named ``2024``), through
    ``Optional``, unions and ``Literal`` choices; any other value is refused with a one-line
    :class:`RegistryError`. Unannotated parameters, ``**kwargs`` and other annotations (``list[str]``, a class
    of the plugin's) take the value as given. A parameter without a default that ``model_args`` leave out, and an
    argument the constructor does not take, are refused too, naming them.
    """
    parameters, hints, takes_any = _keyword_parameters(resolved.cls)
    _check_argument_names(resolved, parameters, takes_any, model_args)
    typed = dict(model_args)
    for name, value in model_args.items():
        if name not in parameters or name not in hints:
            continue
        if value is None and parameters[name].default is None:  # `device: str = None`, as older code annotates
            continue
        try:
            typed[name] = _converted(value, hints[name])
        except _Mismatch:
            shown = redacted_args({name: value})[name]
            shown = json.dumps(shown) if shown is None or isinstance(shown, bool) else repr(shown)  # as typed
            raise RegistryError(f"recommender {resolved.spec!r}: --model-args {name} must be "
                                f"{_describe(hints[name])}, not {shown}{_quoting_hint(name, value, hints[name])}"
                                ) from None
    return typed


def _quoting_hint(name: str, value: Any, annotation: Any) -> str:
    """How to pass as text a value that --model-args decoded as a number, a flag or null (``version=1.50`` is 1.5,
    ``mode=none`` is null), where the parameter takes text."""
    if isinstance(value, str):
        return ""
    try:
        _converted("text", annotation)
    except _Mismatch:
        return ""
    return f' (quote a value meant as text: {name}="...")'


def _check_argument_names(resolved: ResolvedModel, parameters: dict[str, inspect.Parameter], takes_any: bool,
                          model_args: dict[str, Any]) -> None:
    """Refuse, naming them, the constructor parameters without a default that ``model_args`` leave out (Python's
    "missing 1 required positional argument" does not say that ``--model-args`` is where they go), and the names
    it does not take, with the close ones it does, before the dataset loads; a constructor taking ``**options``
    is asked about those when it runs."""
    missing = [name for name, p in parameters.items() if p.default is p.empty and name not in model_args]
    if missing:
        needed = ",".join(f"{name}=..." for name in missing)
        raise RegistryError(f"recommender {resolved.spec!r} needs --model-args {needed} (its constructor has no "
                            f"default for {', '.join(missing)})")
    unknown = [name for name in model_args if name not in parameters]
    if not unknown or takes_any:
        return
    close = [match for name in unknown for match in difflib.get_close_matches(name, list(parameters), n=1)]
    hint = f" Did you mean: {', '.join(dict.fromkeys(close))}?" if close else ""
    raise RegistryError(f"recommender {resolved.spec!r} does not accept --model-args {', '.join(unknown)}.{hint} "
                        f"It takes: {', '.join(parameters) or 'none'}.")


def _keyword_parameters(target: Any) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """The parameters ``target`` (a class or a factory function) takes by name, its type hints, and whether it
    takes any name (``**options``, or no signature to read: then nothing can be checked)."""
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):  # no signature to read (a builtin): nothing is checked
        return {}, {}, True
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    by_name = {name: p for name, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    try:
        hints = typing.get_type_hints(getattr(target, "__init__") if isinstance(target, type) else target)
    except Exception:  # a hint naming what only type checkers import (NameError), or not a type: none checked
        hints = {}
    return by_name, hints, takes_any


def settings_of(target: Any, model_args: dict[str, Any]) -> dict[str, Any]:
    """Every setting ``target`` (a recommender or retriever class, or a factory) ran with: ``model_args`` and the
    defaults of the parameters they leave out (bm25's ``k1`` when no ``k1=`` was given), redacted as
    :func:`redacted_args`, each value as JSON can hold it (a path as its text, any other object as its repr)."""
    parameters, _, _ = _keyword_parameters(target)
    defaults = {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty}
    return _recordable({**defaults, **model_args})


def recorded_settings(recommender: Any, resolved: ResolvedModel | None, model_args: dict[str, Any]) -> dict | None:
    """What results.json records a recommender ran with: :func:`settings_of` its constructor, updated by its own
    ``settings`` dict where it has one (what it passes on, e.g. to a retriever: sbert's model); ``None`` for an
    object the caller made and that says nothing."""
    settings = None if resolved is None else settings_of(resolved.cls, model_args)
    own = plugin_attribute(recommender, "settings", None)
    if isinstance(own, dict):
        settings = {**(settings or {}), **_recordable(own)}
    return settings


def _recordable(settings: dict[str, Any]) -> dict[str, Any]:
    return {name: _as_json(value) for name, value in redacted_args(settings).items()}


def _as_json(value: Any) -> Any:
    """``value`` as JSON holds it, the same in every run: a dict's secret-named keys and a URL's credentials are
    redacted at any depth, a set is sorted, and a repr never shows a memory address (a function, an object)."""
    if value is None or isinstance(value, (bool, float, str)) or (isinstance(value, int) and -2**63 <= value < 2**64):
        return _without_credentials(value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, dict):
        return _recordable({str(name): item for name, item in value.items()})
    if isinstance(value, (list, tuple)):
        return [_as_json(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_as_json(item) for item in value), key=repr)
    if callable(value) and hasattr(value, "__qualname__"):
        return value.__qualname__  # not its module: a plugin file's is named after hash() of its path
    return _ADDRESS.sub("", repr(value))


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


class _Mismatch(Exception):
    """A value that does not fit an annotation."""


def _converted(value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        for choice in typing.get_args(annotation):
            with suppress(_Mismatch):
                if _converted(value, type(choice)) == choice:
                    return choice
        raise _Mismatch
    if origin in (Union, UnionType):
        members = typing.get_args(annotation)
        if any(_already(value, member) for member in members):  # `int | str` keeps 8 an int
            return value
        for member in members:
            with suppress(_Mismatch):
                return _converted(value, member)
        raise _Mismatch
    if annotation is type(None):
        if value is None:
            return None
        raise _Mismatch
    if annotation in (bool, int, float, str) or _is_path_class(annotation):
        return _scalar(value, annotation)
    return value  # an annotation not checked here


def _scalar(value: Any, annotation: type) -> Any:
    if isinstance(value, bool):  # an int to Python, not to a user: true is no count, no text
        if annotation is bool:
            return value
    elif isinstance(value, annotation):
        return value
    elif isinstance(value, int) and annotation is bool and value in (0, 1):
        return bool(value)
    elif isinstance(value, int) and annotation is float:
        return float(value)
    elif isinstance(value, (int, str)) and annotation not in (bool, int, float):  # str or a path
        return annotation(str(value))  # the digits --model-args decoded as a number; "1.50" must be quoted
    raise _Mismatch


def _already(value: Any, member: Any) -> bool:
    """Whether ``value`` already is of the union member ``member`` (a bool is not an int here)."""
    if member is type(None):
        return value is None
    if not isinstance(member, type) or typing.get_origin(member) is not None:
        return False
    return isinstance(value, member) and (member is bool or not isinstance(value, bool))


def _is_path_class(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, PurePath)


def _describe(annotation: Any) -> str:
    origin, members = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, members))
    if origin in (Union, UnionType):
        return " or ".join(_describe(member) for member in members)
    if annotation is type(None):
        return "null"
    if annotation is bool:
        return "true or false"
    return getattr(annotation, "__name__", str(annotation))


def build(spec: str, model_args: dict[str, Any]) -> tuple[ResolvedModel, Any]:
    """Resolve ``spec`` and instantiate it with ``model_args`` (see :func:`typed_args`) as keyword arguments."""
    resolved = resolve(spec)
    return resolved, instantiate(resolved, typed_args(resolved, model_args))


def instantiate(resolved: ResolvedModel, model_args: dict[str, Any]) -> Any:
    spec = resolved.spec
    if not callable(resolved.cls):
        raise RegistryError(f"recommender {spec!r}: {resolved.target} is a {type(resolved.cls).__name__}, not a "
                            "class (or a function that returns a recommender)")
    try:
        instance = resolved.cls(**model_args)
    except Exception as error:
        shipped = ships_with_toolkit(resolved.cls)
        # Ours raise TypeError only for options they do not take (some pass **options on); a plugin's TypeError
        # with options its signature takes is a bug in its own code.
        if isinstance(error, TypeError) and (shipped or not _accepts(resolved.cls, model_args)):
            raise RegistryError(f"recommender {spec!r} does not accept --model-args {redacted_args(model_args)}: "
                                f"{error}") from error
        if not shipped:
            mark_plugin_failure(error, f"recommender {spec!r} failed while starting")
        raise
    except SystemExit as error:  # a plugin's own argparse, or its "cannot go on" branch
        if not ships_with_toolkit(resolved.cls):
            mark_plugin_failure(error, f"recommender {spec!r} failed while starting")
        raise
    if not (callable(getattr(instance, "recommend", None)) or callable(getattr(instance, "rank", None))):
        raise RegistryError(f"recommender {spec!r} ({resolved.target}) has neither recommend() nor rank()")
    return instance


class PluginError(RuntimeError):
    """What ``benchmark run`` raises, chained (``from``) from an exception a recommender from outside this
    toolkit raised, so that the plugin's traceback is printed. A toolkit recommender's ``ValueError`` /
    ``OSError`` is reduced to its one-line message, written for users; a plugin's is most often a bug."""


def mark_plugin_failure(error: BaseException, where: str) -> None:
    """Record on ``error``, raised by a plugin's own code, where that happened (see :func:`plugin_failure`)."""
    error._benchmark_plugin_failure = where  # type: ignore[attr-defined]


def plugin_attribute(recommender: Any, name: str, default: Any) -> Any:
    """``getattr(recommender, name, default)``, where a plugin's property that raises is the plugin's failure (see
    :func:`plugin_failure`): its traceback is printed as a plugin's, with its --model-args secrets hidden."""
    try:
        return getattr(recommender, name, default)
    except Exception as error:
        if not ships_with_toolkit(recommender):
            mark_plugin_failure(error, f"reading the recommender's {name}")
        raise


def plugin_failure(error: BaseException) -> str | None:
    """Where a plugin raised ``error`` (``None``: the toolkit's own code or recommenders raised it)."""
    return getattr(error, "_benchmark_plugin_failure", None)


def ships_with_toolkit(recommender: Any) -> bool:
    """Whether ``recommender`` (a class, function or instance) comes from this toolkit's own packages."""
    module = getattr(recommender, "__module__", None) or ""
    return module.partition(".")[0] in ("benchmark", "lavic_ref", "reddit_amazon")


def _accepts(cls: Any, model_args: dict[str, Any]) -> bool:
    """Whether ``cls``'s signature takes ``model_args`` as keyword arguments (False when it cannot be read)."""
    try:
        inspect.signature(cls).bind(**model_args)
    except (TypeError, ValueError):
        return False
    return True
