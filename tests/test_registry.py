"""The registry: names -> lazily imported 'module:callable' targets, and import-path resolution."""

from __future__ import annotations

import dataclasses
import sys

import pytest

from raytune_opt import registry
from raytune_opt.registry import ImportTargetError, Registry, import_target, signature_of


def _package(tmp_path, name, body):
    (tmp_path / f"{name}.py").write_text(body)
    return tmp_path


def test_register_and_look_up():
    reg = Registry("widget")
    entry = reg.register("spinner", "collections:OrderedDict", doc="a dict", colour="red")
    assert "spinner" in reg and list(reg) == ["spinner"] and len(reg) == 1
    assert reg["spinner"] is entry and entry.meta == {"colour": "red"}
    assert reg.target_of("spinner") == "collections:OrderedDict" and reg.target_of("a.b:c") == "a.b:c"
    import collections

    assert entry.load() is collections.OrderedDict


@pytest.mark.parametrize("name,target,fragment", [
    ("spinner", "collections:Counter", "registered already"),
    ("pkg.mod:fn", "collections:Counter", "must be letters"),
    ("has space", "collections:Counter", "must be letters"),
    ("other", "collections.Counter", "must be 'module:callable'"),
])
def test_register_refuses(name, target, fragment):
    reg = Registry("widget")
    reg.register("spinner", "collections:OrderedDict")
    with pytest.raises(ValueError, match=fragment):
        reg.register(name, target)


def test_builtin_models_register_lazily_and_resolve():
    assert "torch" not in registry.MODELS["small_cnn"].target  # a string: nothing imported to register
    for name in registry.MODELS:
        entry = registry.MODELS[name]
        assert callable(entry.load()) and set(entry.meta) == {"inputs", "keys"}
        sig = signature_of(entry.load())
        assert sig is not None and set(entry.meta["keys"]) <= set(sig.names) and not sig.var_keyword


def test_is_import_path():
    assert registry.is_import_path("a.b_c:D.e") and registry.is_import_path("m:f")
    for bad in ("m", "m:", ":f", "m:f:g", "1m:f", "m.:f", None, 3):
        assert not registry.is_import_path(bad)


def test_import_from_given_directory_first_and_sys_path_restored(tmp_path):
    _package(tmp_path, "regtest_first", "def make(**kw):\n    return kw\n")
    before = list(sys.path)
    fn = import_target("regtest_first:make", [str(tmp_path)])
    assert fn(a=1) == {"a": 1} and sys.path == before


def test_import_from_the_current_directory(tmp_path, monkeypatch):
    _package(tmp_path, "regtest_cwd", "class Net:\n    pass\n")
    monkeypatch.chdir(tmp_path)
    assert import_target("regtest_cwd:Net").__name__ == "Net"


@pytest.mark.parametrize("path,body,fragment", [
    ("regtest_nope_xyz:Net", None, "cannot import 'regtest_nope_xyz:Net' (No module named 'regtest_nope_xyz')"),
    ("regtest_attr:Nte", "class Net:\n    pass\n", "'regtest_attr' has no attribute 'Nte'; did you mean 'Net'?"),
    ("regtest_value:SIZE", "SIZE = 3\n", "names an object of type int, not a class or function"),
    ("regtest_raises:Net", "raise ValueError('bad config at import')\n", "(ValueError: bad config at import)"),
    ("regtest_syntax:Net", "def broken(:\n", "(SyntaxError: "),
    ("not a path", None, "is not an import path"),
])
def test_import_errors_are_one_line_with_the_cause(tmp_path, path, body, fragment):
    if body is not None:
        _package(tmp_path, path.split(":")[0], body)
    with pytest.raises(ImportTargetError) as info:
        import_target(path, [str(tmp_path)])
    assert fragment in str(info.value) and "\n" not in str(info.value) and info.value.fix


def test_signature_of_classes_factories_and_kwargs():
    class Net:
        def __init__(self, hidden, /, width, *, depth=2, **extra):
            pass

    sig = signature_of(Net)
    assert sig.names == ("width", "depth") and sig.required == ("hidden", "width") and sig.var_keyword
    assert sig.takes("anything")

    def factory(a, *rest, b=1):
        pass

    sig = signature_of(factory)
    assert sig.names == ("a", "b") and sig.required == ("a",) and not sig.var_keyword and not sig.takes("c")


def test_add_code_paths_puts_directories_first_once(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    registry.add_code_paths([str(tmp_path), str(tmp_path)])
    registry.add_code_paths([str(tmp_path)])
    assert sys.path[0] == str(tmp_path) and sys.path.count(str(tmp_path)) == 1


def test_user_modules_are_those_of_the_users_project_not_installed_packages(tmp_path, monkeypatch):
    """What `run --address` ships to a joined cluster's nodes (tests/cluster/test_multinode.py runs it)."""
    import sys

    from raytune_opt.sweep import code_to_ship
    from raytune_opt.spec import load_spec

    pkg = f"ship_pkg_{tmp_path.name.replace('-', '_')}"
    (tmp_path / pkg).mkdir()
    (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / pkg / "nets.py").write_text("from torch import nn\n\ndef net(num_classes):\n    return nn.Linear(64, "
                                            "num_classes)\n")
    single = f"ship_one_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{single}.py").write_text("def train(config, ctx):\n    pass\n")
    for name in (pkg, single):
        monkeypatch.delitem(sys.modules, name, raising=False)
    mods = registry.user_modules([f"{pkg}.nets:net", f"{single}:train", "torch.nn:Linear", "nope.x:y"],
                                 [str(tmp_path)])
    assert [m.__name__ for m in mods] == [pkg, single]  # torch is installed, nope does not import
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(f"model: {{name: '{pkg}.nets:net'}}\ntrain: {{loop: '{single}:train'}}\n")
    spec = load_spec(spec_path)
    import ray

    # A process about to join a cluster (an earlier test in this one may have left Ray connected).
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    assert sorted(m.__name__ for m in code_to_ship(spec, "127.0.0.1:6379")) == sorted([pkg, single])
    assert code_to_ship(spec, None) == []  # the embedded local Ray: every path is this machine's
    with monkeypatch.context() as m:
        m.setattr(ray, "is_initialized", lambda: True)
        # A process already connected to Ray cannot ship anything: the trials get the directories.
        assert code_to_ship(spec, "127.0.0.1:6379") == []
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    assert code_to_ship(spec, "127.0.0.1:6379") == []  # a Ray job's working directory travels with it


def test_the_readme_tables_of_registries_and_searchers_are_generated_from_the_registries():
    from pathlib import Path

    from raytune_opt import searchers

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert registry.extension_points_markdown() in readme, \
        "regenerate: python -c 'from raytune_opt.registry import extension_points_markdown as t; print(t())'"
    assert searchers.capabilities_markdown() in readme, \
        "regenerate: python -c 'from raytune_opt.searchers import capabilities_markdown as t; print(t())'"


def test_every_registry_entry_has_a_doc_line_and_a_target_that_imports():
    for attr, reg, key in registry.EXTENSION_POINTS:
        for name in reg:
            entry = reg[name]
            assert entry.doc, (attr, name)
            assert callable(entry.load()), (attr, name)
            if isinstance(entry.check, str):
                assert callable(registry.import_target(entry.check)), (attr, name)


def test_a_scheduler_says_through_its_entry_that_it_exploits_checkpoints(monkeypatch):
    import inspect

    from raytune_opt import trial

    assert [n for n in registry.SCHEDULERS if registry.SCHEDULERS[n].meta.get("exploits")] == ["pbt", "pb2"]
    assert trial.records_config("pbt") and not trial.records_config("asha")
    assert '"pbt"' not in inspect.getsource(trial)  # no name test: the entry's meta decides
    schedulers = registry.Registry("scheduler")
    schedulers._entries.update({n: registry.SCHEDULERS[n] for n in registry.SCHEDULERS})
    schedulers.register("my_pbt", "raytune_opt.schedulers:pbt", doc="a user's PBT variant", exploits=True)
    monkeypatch.setattr(registry, "SCHEDULERS", schedulers)
    assert trial.records_config("my_pbt") and not trial.records_config("fifo")


def test_the_scheduler_section_is_assembled_from_what_each_scheduler_entry_reads(monkeypatch):
    from raytune_opt.schedulers import _settings
    from raytune_opt.spec import schema
    from raytune_opt.spec.fields import Field

    section = schema.SPEC.fields["scheduler"].fields
    settings = {n: registry.SCHEDULERS[n].meta["settings"] for n in registry.SCHEDULERS}
    assert list(section) == ["name", *dict.fromkeys(k for own in settings.values() for k in own)]
    for key, fld in section.items():  # each key: the one Field its readers share, its doc naming them
        if key != "name":
            readers = [n for n in registry.SCHEDULERS if key in settings[n]]
            declared = settings[readers[0]][key]
            assert all(settings[n][key] == declared for n in readers)
            assert dataclasses.replace(fld, doc=declared.doc) == declared
            assert fld.doc == f"{'/'.join(readers)}: {settings[readers[0]][key].doc}"
    assert section["max_t"] is not _settings.MAX_T and section["max_t"].default is None
    # Two entries that declare one key differently, or an entry that declares the name, are refused.
    mine = registry.Registry("scheduler")
    mine.register("a", "raytune_opt.schedulers:asha", settings={"grace_period": _settings.GRACE_PERIOD})
    mine.register("b", "raytune_opt.schedulers:median", settings={"grace_period": Field("int", 2, "other")})
    monkeypatch.setattr(registry, "SCHEDULERS", mine)
    with pytest.raises(ValueError, match=r"schedulers \['a'\] and 'b' declare scheduler.grace_period differently"):
        schema.scheduler_section("doc", {"name": Field("str", "a", "")})
    mine = registry.Registry("scheduler")
    mine.register("a", "raytune_opt.schedulers:asha", settings={"name": Field("str", "x", "")})
    monkeypatch.setattr(registry, "SCHEDULERS", mine)
    with pytest.raises(ValueError, match="declares scheduler.name, which the schema owns"):
        schema.scheduler_section("doc", {"name": Field("str", "a", "")})
