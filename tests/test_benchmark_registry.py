"""Finding recommenders: built-ins, entry points, module:Class, file.py:Class; --model-args parsing."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from core_install import import_extra  # tests/

from benchmark import registry
from benchmark.registry import RegistryError, build, parse_model_args, plugin_failure, redacted_args, resolve


def test_builtins_resolve_without_heavy_imports():
    code = ("import sys; from benchmark.registry import resolve; import benchmark.cli, benchmark.runner; "
            "[resolve(n) for n in ('random', 'bm25', 'sbert', 'openai-chat', 'hf-vlm')]; "
            "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers', 'bm25s') if m in sys.modules))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_lavic_is_found_through_its_entry_point():
    assert "lavic" in registry.available_names()
    points = [ep for ep in registry.entry_points(group=registry.ENTRY_POINT_GROUP) if ep.name == "lavic"]
    assert points[0].value == "lavic_ref.recommender:LavicRecommender"


def test_third_party_entry_point(monkeypatch):
    point = EntryPoint(name="third-party", value="benchmark.recommenders.random_choice:RandomRecommender",
                       group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [point] if group == registry.ENTRY_POINT_GROUP else [])
    resolved, instance = build("third-party", {"seed": 5})
    assert resolved.source == "entry point" and instance.seed == 5
    broken = EntryPoint(name="broken", value="no_such_package.mod:Thing", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [broken])
    with pytest.raises(RegistryError, match="'broken'.*failed to load: ModuleNotFoundError"):
        resolve("broken")


@pytest.mark.parametrize("how", ["file", "module", "entry point"])
def test_a_plugin_exiting_while_imported_fails_naming_it(tmp_path, monkeypatch, how):
    """A plugin file that is also a script (argparse at module level, a sys.exit without `if __name__ ==
    "__main__"`) exited `benchmark run` while it was imported: silently in its status, or with argparse's usage
    line, which reads as the benchmark command's own."""
    module = f"exiting_at_import_{how.replace(' ', '_')}"
    (tmp_path / f"{module}.py").write_text("import sys\n\nclass Mine:\n    def recommend(self, examples):\n"
                                           "        return []\n\nsys.exit(2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = {"file": f"{tmp_path / module}.py:Mine", "module": f"{module}:Mine", "entry point": "mine"}[how]
    point = EntryPoint(name="mine", value=f"{module}:Mine", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [point] if group == registry.ENTRY_POINT_GROUP else [])
    with pytest.raises(RegistryError) as refused:
        resolve(spec)
    assert str(refused.value).startswith(f"recommender {spec!r} (")
    assert str(refused.value).endswith(" failed to load: SystemExit: 2 (the module exits when imported: put its "
                                       "script code under `if __name__ == \"__main__\":`)")


def test_module_and_file_specs(tmp_path):
    assert resolve("benchmark.recommenders.random_choice:RandomRecommender").source == "module"
    plugin = tmp_path / "plug.py"
    plugin.write_text("class Mine:\n    def recommend(self, examples):\n        return []\n")
    assert resolve(f"{plugin}:Mine").source == "file"
    with pytest.raises(RegistryError, match="has no 'Mien'.*Did you mean: Mine"):
        resolve(f"{plugin}:Mien")
    with pytest.raises(RegistryError, match="no such file"):
        resolve(f"{tmp_path}/absent.py:Mine")
    with pytest.raises(RegistryError, match="cannot import"):
        resolve("no_such_module_xyz:Thing")


def test_a_module_spec_naming_a_file_that_is_not_importable_says_how_to_give_the_file(tmp_path, monkeypatch):
    """`--model mine:Pick` beside mine.py failed with only "No module named 'mine'": the console script does not put
    the working folder on sys.path, and nothing said that `mine.py:Pick` would work."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.py").write_text("class Pick:\n    def recommend(self, examples):\n        return []\n")
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "ranker.py").write_text("class Rank:\n    def rank(self, examples):\n        return []\n")
    with pytest.raises(RegistryError, match=r"cannot import 'mine': No module named 'mine'; mine\.py is here: "
                                            r"give --model mine\.py:Pick"):
        resolve("mine:Pick")
    with pytest.raises(RegistryError, match=r"plugins/ranker\.py is here: give --model plugins/ranker\.py:Rank"):
        resolve("plugins.ranker:Rank")
    (tmp_path / "needs_dependency.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # found as a module: the module missing is its dependency
    with pytest.raises(RegistryError, match="No module named 'no_such_dependency_xyz'") as refused:
        resolve("needs_dependency:Thing")
    assert "is here" not in str(refused.value)


def test_every_spelling_of_a_model_has_one_identity_and_other_models_another(tmp_path, monkeypatch):
    """A run folder is resumed by model identity: the name of a built-in or an entry point and its module:Class
    are one model; a plugin file is named by its file name and class, however its path is spelled."""
    lavic = "lavic_ref.recommender:LavicRecommender"  # the lavic entry point's value
    assert registry.identity("lavic") == registry.identity(lavic) == lavic
    assert registry.identity("random") == registry.identity("benchmark.recommenders.random_choice:RandomRecommender")
    assert registry.identity("random") != registry.identity("bm25")
    monkeypatch.chdir(tmp_path)
    spellings = {registry.identity(spec) for spec in ("./plugins/x.py:Mine", "plugins/x.py:Mine",
                                                        f"{tmp_path}/plugins/x.py:Mine")}
    assert spellings == {"x.py:Mine"}
    assert registry.identity("plugins/x.py:Other") != "x.py:Mine"


def test_a_plugin_folder_stays_on_sys_path_for_its_own_block_only(tmp_path, monkeypatch):
    """A block inside another (a plugin whose run starts runs of its own) takes off only the folders it added; a
    plugin that took its folder off sys.path itself is no error."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    outer, inner, leaving = (tmp_path / name for name in ("outer", "inner", "leaving"))
    for folder in (outer, inner, leaving):
        folder.mkdir()
        (folder / "plug.py").write_text("class Mine:\n    def recommend(self, examples):\n        return []\n")
    (leaving / "plug.py").write_text(f"import sys\nsys.path.remove({str(leaving)!r})\n"
                                     "class Mine:\n    def recommend(self, examples):\n        return []\n")
    before = list(sys.path)
    with registry.plugin_imports():
        resolve(f"{outer / 'plug.py'}:Mine")
        with registry.plugin_imports():
            resolve(f"{inner / 'plug.py'}:Mine")
            resolve(f"{leaving / 'plug.py'}:Mine")
            assert str(inner) in sys.path
        assert str(outer) in sys.path and str(inner) not in sys.path
    assert sys.path == before


def test_a_plugins_code_is_named_by_its_files_hash_and_its_installed_distribution(tmp_path, monkeypatch):
    """Nothing named a plugin's code: two runs of an edited plugin file were recorded alike."""
    from importlib.metadata import distribution, version

    from reddit_amazon.files import file_sha256

    bm25s = import_extra("bm25s")
    plugin = tmp_path / "mine.py"
    plugin.write_text("class Mine:\n    pass\n")
    assert resolve(f"{plugin}:Mine").code == registry.PluginCode(file_sha256(plugin), None)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve("mine:Mine").code == registry.PluginCode(file_sha256(plugin), None)  # importable, not installed
    installed = registry.PluginCode(file_sha256(Path(bm25s.__file__)), f"bm25s=={version('bm25s')}")
    assert resolve("bm25s:BM25").code == installed
    point = EntryPoint(name="theirs", value="bm25s:BM25", group=registry.ENTRY_POINT_GROUP)._for(distribution("bm25s"))
    monkeypatch.setattr(registry, "entry_points", lambda group: [point])  # as an installed package registers it
    assert resolve("theirs").code == installed
    # The toolkit's own code is named by its package version and git revision instead.
    assert resolve("random").code is None
    assert resolve("benchmark.recommenders.random_choice:RandomRecommender").code is None


def test_a_plugin_class_a_package_re_exports_is_named_by_the_file_defining_it_too(tmp_path, monkeypatch):
    """An entry point or spec ``pkg:Rec`` names the package, whose __init__ only imports Rec from pkg/impl.py: an
    edit of impl.py, the plugin's code, must make another run."""
    package = tmp_path / "reexporting_plugin"
    package.mkdir()
    (package / "__init__.py").write_text("from .impl import Rec\n")
    (package / "impl.py").write_text("class Rec:\n    answer = 'B000000001'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = resolve("reexporting_plugin:Rec").code
    (package / "impl.py").write_text("class Rec:\n    answer = 'B000000002'\n")
    for name in ("reexporting_plugin", "reexporting_plugin.impl"):
        monkeypatch.delitem(sys.modules, name)
    assert resolve("reexporting_plugin:Rec").code.sha256 != before.sha256
    # A file plugin importing its class from a module beside it: that module counts too.
    (tmp_path / "beside.py").write_text("class Near:\n    pass\n")
    script = tmp_path / "script_plugin.py"
    script.write_text("from beside import Near\n")
    before = resolve(f"{script}:Near").code
    (tmp_path / "beside.py").write_text("class Near:\n    edited = True\n")
    monkeypatch.delitem(sys.modules, "beside")
    assert resolve(f"{script}:Near").code.sha256 != before.sha256


def test_dotted_attributes_resolve_as_entry_points_do(tmp_path, monkeypatch):
    plugin = tmp_path / "nested_plugin.py"
    plugin.write_text("class Outer:\n    class Inner:\n        def recommend(self, examples):\n            return []\n")
    assert resolve(f"{plugin}:Outer.Inner").cls.__qualname__ == "Outer.Inner"
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve("nested_plugin:Outer.Inner").cls.__qualname__ == "Outer.Inner"
    with pytest.raises(RegistryError, match="nested_plugin:Outer has no 'Iner'. Did you mean: Inner"):
        resolve("nested_plugin:Outer.Iner")


@pytest.mark.parametrize("code, error", [("class X(:\n    pass\n", "SyntaxError: invalid syntax"),
                                         ("raise RuntimeError('boom at import')\n", "RuntimeError: boom at import")])
def test_a_plugin_failing_at_import_is_named(tmp_path, monkeypatch, code, error):
    plugin = tmp_path / "failing_plugin.py"
    plugin.write_text(code)
    with pytest.raises(RegistryError, match=f"'{plugin}:X' \\(file {plugin}\\) failed to load: {error}"):
        resolve(f"{plugin}:X")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RegistryError, match=f"'failing_plugin:X' \\(module failing_plugin\\) failed to load: {error}"):
        resolve("failing_plugin:X")


def test_unknown_name_did_you_mean():
    with pytest.raises(RegistryError, match="unknown recommender 'opanai-chat'. Did you mean: openai-chat"):
        resolve("opanai-chat")


def test_bad_constructor_args_are_reported():
    with pytest.raises(RegistryError, match="does not accept --model-args"):
        build("random", {"sed": 1})


def test_a_spec_naming_something_that_is_not_a_class_says_so():
    with pytest.raises(RegistryError, match=r"'os:path': os:path is a module, not a class"):
        build("os:path", {})


def test_model_args_parsing():
    assert parse_model_args("") == {}
    assert parse_model_args("model=llava-hf/x,with_images=true,batch_size=8,temperature=0.5,device=none") == {
        "model": "llava-hf/x", "with_images": True, "batch_size": 8, "temperature": 0.5, "device": None}
    assert parse_model_args("base_url=http://127.0.0.1:8000/v1") == {"base_url": "http://127.0.0.1:8000/v1"}
    assert parse_model_args("name=007") == {"name": "007"}  # not valid JSON: kept as text
    assert parse_model_args('name="NaN",x=nan') == {"name": "NaN", "x": "nan"}
    for text in ("k1=NaN", "k1=Infinity", "b=-Infinity", "k1=1e999"):  # JSON's non-finite numbers
        with pytest.raises(RegistryError, match="--retriever-args: [kb]1? is not a finite number"):
            parse_model_args(text, "--retriever-args")
    with pytest.raises(RegistryError) as caught:
        parse_model_args("api_key=Infinity")
    assert "Infinity" not in str(caught.value)
    with pytest.raises(RegistryError, match="expected name=value"):
        parse_model_args("oops")
    # A JSON string is a scalar too: quotes are dropped, and they let a value hold commas.
    assert parse_model_args('model="gpt-4o-mini",prompt="a, b",n="2"') == {
        "model": "gpt-4o-mini", "prompt": "a, b", "n": "2"}
    for text in ("openai-api-key=sk-proj-TOPSECRET", "api_key=sk-SECRET12,3456"):
        with pytest.raises(RegistryError) as caught:
            parse_model_args(text)
        assert "SECRET" not in str(caught.value) and "3456" not in str(caught.value), caught.value


def test_only_secret_looking_argument_names_are_redacted():
    args = {"api_key": "a", "apikey": "b", "hf_token": "c", "client_secret": "d", "password": "e",
            "Authorization": "Bearer f", "proxy_auth": "g", "bearer": "h", "credentials": "i", "cookie": "j",
            "max_tokens": 2000, "max_new_tokens": 8, "keyword": "lamp", "tokenizer": "t", "author": "k"}
    assert redacted_args(args) == {**args, **dict.fromkeys(["api_key", "apikey", "hf_token", "client_secret",
                                                             "password", "Authorization", "proxy_auth", "bearer",
                                                             "credentials", "cookie"], "<redacted>")}


def test_credentials_in_url_arguments_are_never_recorded():
    """run.json / results.json / reports hold recorded args: a base_url's user:password@ or ?api_key= must not
    reach them (the build keeps them out of the manifest the same way); a plain URL stays as given."""
    args = {"base_url": "http://proxyuser:hunter2-secret@127.0.0.1:8000/v1?api-key=sk-in-the-url",
            "endpoint": "HTTP://127.0.0.1:8000/v1/", "model": "m"}
    recorded = redacted_args(args)
    assert "hunter2" not in str(recorded) and "sk-in-the-url" not in str(recorded)
    assert recorded["base_url"].startswith("http://127.0.0.1:8000/v1")
    assert recorded["endpoint"] == args["endpoint"] and recorded["model"] == "m"  # run signatures unchanged


def test_a_type_error_inside_the_constructor_is_not_blamed_on_the_model_args(tmp_path):
    """Arguments the constructor accepts, and a TypeError of the plugin's own code: the plugin author needs that
    error (and its traceback), not "does not accept --model-args"."""
    plugin = tmp_path / "typo_plugin.py"
    plugin.write_text("import math\n\nclass Mine:\n    def __init__(self, size=3):\n        self.root = math.sqrt('4')\n"
                      "    def recommend(self, examples):\n        return []\n")
    with pytest.raises(TypeError, match="must be real number") as raised:
        build(f"{plugin}:Mine", {"size": 3})
    assert plugin_failure(raised.value) == f"recommender '{plugin}:Mine' failed while starting"
    with pytest.raises(RegistryError, match="does not accept --model-args"):
        build(f"{plugin}:Mine", {"sise": 3})


def test_an_option_a_built_in_passes_on_and_its_retriever_refuses_is_still_a_bad_option():
    """bm25 takes **options for its retriever: a TypeError there is about the option, not a bug to trace."""
    with pytest.raises(RegistryError, match=r"does not accept --model-args \{'kk': 1\}"):
        build("bm25", {"kk": 1})


def test_a_plugin_that_fails_while_starting_keeps_its_own_error(tmp_path):
    plugin = tmp_path / "weights_plugin.py"
    plugin.write_text("class Mine:\n    def __init__(self, weights='missing.bin'):\n        open(weights)\n"
                      "    def recommend(self, examples):\n        return []\n")
    with pytest.raises(FileNotFoundError) as raised:
        build(f"{plugin}:Mine", {})
    assert plugin_failure(raised.value) == f"recommender '{plugin}:Mine' failed while starting"
    with pytest.raises(RegistryError):  # the toolkit's own: a bad option, not a plugin bug
        build("random", {"sed": 1})


def test_a_plugin_missing_an_extra_names_it(tmp_path, monkeypatch):
    """`benchmark run --model lavic` on a core install said only "No module named 'torch'"."""
    (tmp_path / "needs_torch_plugin.py").write_text("import torch\n\nclass Rec:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "torch", None)
    point = EntryPoint(name="needs-torch", value="needs_torch_plugin:Rec", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [point])
    with pytest.raises(RegistryError, match=r"failed to load: ModuleNotFoundError: .*torch.*"
                                            r"\(pip install 'reddit-amazon\[lavic\]'\)$"):
        resolve("needs-torch")


def test_list_says_when_an_entry_point_is_shadowed_and_not_used(monkeypatch):
    from click.testing import CliRunner

    from benchmark.cli import cli

    points = [EntryPoint(name=name, value=f"pkg.mod:{cls}", group=registry.ENTRY_POINT_GROUP)
              for name, cls in [("random", "Mine"), ("mine", "A"), ("mine", "B")]]
    monkeypatch.setattr(registry, "entry_points", lambda group: points if group == registry.ENTRY_POINT_GROUP else [])
    lines = CliRunner().invoke(cli, ["list"]).output.splitlines()
    assert any("pkg.mod:Mine" in line and "not used: the built-in of that name wins" in line for line in lines)
    assert any("pkg.mod:A" in line and "not used" not in line for line in lines)
    assert any("pkg.mod:B" in line and "not used: an entry point listed above" in line for line in lines)
    assert resolve("random").source == "builtin"


def test_list_aligns_its_columns_to_the_longest_name(monkeypatch):
    """Names of 14 characters or more ran into their target with a single space."""
    from click.testing import CliRunner

    from benchmark.cli import cli

    long_name = "my-recommender-with-a-long-name"
    points = [EntryPoint(name=long_name, value="pkg.mod:Long", group=registry.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(registry, "entry_points", lambda group: points if group == registry.ENTRY_POINT_GROUP else [])
    lines = CliRunner().invoke(cli, ["list"]).output.splitlines()
    targets = [line.index(" benchmark.recommenders.") + 1 if " benchmark." in line else line.index(" pkg.mod:") + 1
               for line in lines]
    assert len(set(targets)) == 1 and targets[0] >= len(long_name) + 2, lines


def test_an_argument_given_twice_is_refused():
    """`--model-args k=1,k=2` recorded k=2 without a word."""
    with pytest.raises(RegistryError, match="--model-args: k is given twice"):
        parse_model_args("k=1,k=2")


def test_a_file_or_module_plugin_missing_an_extra_names_it(tmp_path, monkeypatch):
    """Entry points named the extra; `path.py:Class` and `module:Class` said only "No module named 'torch'"."""
    (tmp_path / "torch_plugin.py").write_text("import torch\n\nclass Rec:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "torch", None)
    for spec in (f"{tmp_path / 'torch_plugin.py'}:Rec", "torch_plugin:Rec"):
        with pytest.raises(RegistryError, match=r"\(pip install 'reddit-amazon\[lavic\]'\)$"):
            resolve(spec)


TYPED_PLUGIN = """
from pathlib import Path
from typing import Literal, Optional


class Typed:
    def __init__(self, count: int = 1, rate: float = 0.5, flag: bool = False, name: str = "x",
                 folder: Path | None = None, mode: Literal["fast", "slow"] = "fast", level: Optional[int] = None,
                 device: str = None, token: int = 0, loose=None, **extra):
        (Path(__file__).parent / "constructed").touch()
        self.got = dict(count=count, rate=rate, flag=flag, name=name, folder=folder, mode=mode, level=level,
                        device=device, loose=loose, **extra)

    def recommend(self, examples):
        return [e.candidates[0].item_id for e in examples]
"""


@pytest.fixture
def typed_plugin(tmp_path) -> str:
    (tmp_path / "typed_plugin.py").write_text(TYPED_PLUGIN)
    return f"{tmp_path / 'typed_plugin.py'}:Typed"


def test_model_args_are_converted_to_the_constructors_annotated_types(typed_plugin):
    """`--model-args count=abc` for `count: int` reached the plugin as the text 'abc'."""
    _, instance = build(typed_plugin, parse_model_args(
        "count=3,rate=1,flag=1,name=2024,folder=runs/a,mode=slow,level=null,device=none,loose=abc,other=xyz"))
    got = instance.got
    assert got == {"count": 3, "rate": 1.0, "flag": True, "name": "2024", "folder": Path("runs/a"), "mode": "slow",
                   "level": None, "device": None, "loose": "abc", "other": "xyz"}
    assert type(got["rate"]) is float and type(got["flag"]) is bool
    _, instance = build(typed_plugin, parse_model_args('folder=2024,level=4,flag=false,name="1.50",rate=0.25'))
    assert instance.got["folder"] == Path("2024") and instance.got["level"] == 4 and instance.got["flag"] is False
    assert instance.got["name"] == "1.50" and instance.got["rate"] == 0.25
    _, instance = build(typed_plugin, {"folder": Path("p"), "count": 2})  # from Python, values as they are
    assert instance.got["folder"] == Path("p")


@pytest.mark.parametrize("text,expected", [
    ("count=abc", "count must be int, not 'abc'"),
    ("count=2.5", "count must be int, not 2.5"),
    ("count=true", "count must be int, not true"),
    ("rate=fast", "rate must be float, not 'fast'"),
    ("flag=2", "flag must be true or false, not 2"),
    ("flag=maybe", "flag must be true or false, not 'maybe'"),
    ("name=1.50", 'name must be str, not 1.5 (quote a value meant as text: name="...")'),
    ("name=null", 'name must be str, not null (quote a value meant as text: name="...")'),
    ("name=none", 'name must be str, not null (quote a value meant as text: name="...")'),  # "none" is null too
    ("folder=true", 'folder must be Path or null, not true (quote a value meant as text: folder="...")'),
    ("mode=medium", "mode must be one of 'fast', 'slow', not 'medium'"),
    ("mode=2.5", "mode must be one of 'fast', 'slow', not 2.5"),  # no text fits: no quoting hint
    ("level=abc", "level must be int or null, not 'abc'"),
    ("token=abc", "token must be int, not '<redacted>'"),
])
def test_a_model_arg_of_the_wrong_type_is_refused_before_the_model_is_built(typed_plugin, tmp_path, text, expected):
    with pytest.raises(RegistryError) as refused:
        build(typed_plugin, parse_model_args(text))
    assert str(refused.value) == f"recommender {typed_plugin!r}: --model-args {expected}"
    assert not (tmp_path / "constructed").exists()


def test_the_run_command_refuses_a_wrong_type_before_anything_is_written(typed_plugin, tmp_path):
    from click.testing import CliRunner

    from benchmark.cli import cli

    result = CliRunner().invoke(cli, ["run", "--model", typed_plugin, "--model-args", "count=abc", "--out",
                                      str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1].endswith("--model-args count must be int, not 'abc'")
    assert not (tmp_path / "out").exists() and not (tmp_path / "constructed").exists()


def test_settings_are_recorded_as_json_the_same_in_every_run():
    from benchmark.registry import settings_of

    def factory(scorer=len, marker=object(), folder=Path("runs/a"), sizes=(1, 2), api_key="sk-x"):
        return None

    assert settings_of(factory, {"sizes": [3]}) == {"scorer": "len", "marker": "<object object>",
                                                   "folder": "runs/a", "sizes": [3], "api_key": "<redacted>"}


def test_recorded_settings_redact_nested_secrets_and_are_the_same_in_every_run():
    """A default or a plugin's own ``settings`` may hold a dict (headers, a client's options), a list of URLs or
    an object: results.json wrote their secrets, and a repr with a memory address that changed every run."""
    import json

    import orjson

    from benchmark.registry import settings_of

    def hook(x):
        return x

    def factory(headers={"token": "sk-NESTED-SECRET"}, mirrors=("http://bob:pw-in-url@m.example/",),  # noqa: B006
                hook=hook, tags=frozenset({"b", "a", "c"}), client=object(), huge=2**70):  # noqa: B008
        pass

    settings = settings_of(factory, {"extra": {"api_key": "sk-OWN-SECRET", "n": 1}})
    text = json.dumps(settings)
    assert "sk-NESTED-SECRET" not in text and "pw-in-url" not in text and "sk-OWN-SECRET" not in text
    assert settings["headers"] == {"token": "<redacted>"} and settings["extra"] == {"api_key": "<redacted>", "n": 1}
    assert settings["tags"] == ["a", "b", "c"] and " at 0x" not in text
    assert settings["hook"] == "test_recorded_settings_redact_nested_secrets_and_are_the_same_in_every_run.<locals>.hook"
    orjson.dumps(settings)  # an int past 64 bits made results.json fail to write after the whole run


def test_a_plugins_distribution_is_named_where_only_its_files_name_its_package(monkeypatch):
    """Python 3.10's packages_distributions() reads only top_level.txt, which many wheels lack (markdown-it-py's,
    built with flit): on 3.10 a run of such a plugin recorded no distribution for its code."""
    import importlib.metadata
    from importlib.metadata import distributions, version

    def from_top_level_txt_only() -> dict[str, list[str]]:  # Python 3.10's packages_distributions
        named: dict[str, list[str]] = {}
        for dist in distributions():
            for package in (dist.read_text("top_level.txt") or "").split():
                named.setdefault(package, []).append(dist.metadata["Name"])
        return named

    assert "markdown_it" not in from_top_level_txt_only()
    monkeypatch.setattr(importlib.metadata, "packages_distributions", from_top_level_txt_only)
    assert resolve("markdown_it:MarkdownIt").code.distribution == f"markdown-it-py=={version('markdown-it-py')}"
    assert registry.installed_distributions("yaml") == ["PyYAML"]  # one top_level.txt names


def test_the_toolkits_own_module_spec_looks_up_no_distribution(monkeypatch):
    """Naming a plugin's distribution scans every installed package (~0.2 s); the toolkit's own classes, given as
    module:Class, have no plugin code to name and paid for the scan anyway."""
    import importlib.metadata

    def scanned():
        raise AssertionError("packages_distributions() called")

    monkeypatch.setattr(importlib.metadata, "packages_distributions", scanned)
    assert resolve("benchmark.recommenders.random_choice:RandomRecommender").code is None


def test_a_constructor_parameter_without_a_default_is_asked_for_by_name(tmp_path):
    """It failed as "does not accept --model-args {}: __init__() missing 1 required positional argument", which
    blames the options given and does not say that the missing one goes in --model-args."""
    plugin = tmp_path / "needs_checkpoint.py"
    plugin.write_text("class Mine:\n    def __init__(self, checkpoint: str, device: str = 'cpu', *, top_k):\n"
                      "        pass\n\n    def recommend(self, examples):\n        return []\n")
    with pytest.raises(RegistryError, match=rf"recommender '{plugin}:Mine' needs --model-args checkpoint=\.\.\.,"
                                            r"top_k=\.\.\. \(its constructor has no default for checkpoint, top_k\)"):
        build(f"{plugin}:Mine", {"device": "cuda"})
    resolved, _ = build(f"{plugin}:Mine", {"checkpoint": 2024, "top_k": 3})
    assert resolved.cls.__name__ == "Mine"


def test_a_misspelt_model_arg_is_refused_with_the_close_names_before_the_dataset_loads(tmp_path):
    """temprature=0 failed only once the dataset had loaded, as "does not accept --model-args {'temprature': 0}:
    Mine.__init__() got an unexpected keyword argument", without the names the constructor takes."""
    plugin = tmp_path / "spelt.py"
    plugin.write_text("class Mine:\n    def __init__(self, temperature: float = 0.0, top_k: int = 1):\n        pass\n\n"
                      "    def recommend(self, examples):\n        return []\n\n\n"
                      "class Open(Mine):\n    def __init__(self, temperature: float = 0.0, **options):\n        pass\n")
    resolved = resolve(f"{plugin}:Mine")
    with pytest.raises(RegistryError) as caught:
        registry.typed_args(resolved, {"temprature": 0, "api_key": "sk-SECRET-1234"})
    assert str(caught.value) == (f"recommender '{plugin}:Mine' does not accept --model-args temprature, api_key. "
                                 "Did you mean: temperature? It takes: temperature, top_k.")
    assert registry.typed_args(resolve(f"{plugin}:Open"), {"anything": 1}) == {"anything": 1}  # **options: its say
