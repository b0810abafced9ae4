"""Issue 25, section 2: reading a file never runs the code it names, unless the user trusts it.

A checkpoint (or an experiment's spec.yaml, or its run record) names code: a model's or data
set's ``module:callable`` and the directories to import it from. Built-in targets (exact
registry entries) are always rebuilt; anything else only with ``trust_code=True`` /
``--trust-code``, else one line naming the target, the file and the flag (exit 2, nothing
imported, nothing written). ``report`` imports no user code at all.

Every "evil" module here writes a marker file when it is imported: the marker must not appear.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from raytune_opt.cli import main
from raytune_opt.errors import RaytuneOptError
from tests._experiments import make_experiment

ROOT = Path(__file__).resolve().parents[2]
FLAG_LINE = ("raytune-opt imports code named by a file only when you trust it: add --trust-code "
             "(Python: trust_code=True) if this is your own experiment")


def _evil_module(directory: Path, name: str, marker: Path, body: str = "") -> str:
    """``directory/name.py`` that writes ``marker`` when imported; returns the module's name."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
                                          + textwrap.dedent(body))
    return name


def _forget(*names: str) -> None:
    for name in names:
        sys.modules.pop(name, None)


def _mlp_checkpoint(path: Path, *, model: dict | None = None, data: dict | None = None) -> Path:
    """A real checkpoint of a tiny built-in mlp on digits (its model spec or data section replaced when given)."""
    from raytune_opt.recipe.checkpoint import make_checkpoint, save_checkpoint
    from raytune_opt.recipe.models import build_model_from_spec, model_spec

    section = {"name": "mlp", "width": 8, "depth": 1}
    spec = model_spec(section, (1, 8, 8), 10)
    state = build_model_from_spec(spec).state_dict()
    recipe = {"data": data or {"dataset": "digits", "val_fraction": 0.2}, "model": section,
              "train": {"batch_size": 64}}
    return save_checkpoint(make_checkpoint(model_spec=model or spec, model_state=state, epoch=1,
                                           metrics={"val_accuracy": 0.5}, recipe=recipe), path)


def _untrusted_experiment(tmp_path: Path, **ckpt) -> tuple[Path, Path]:
    """A synthetic experiment (no promotion yet) whose best checkpoint is replaced by ``_mlp_checkpoint(**ckpt)``."""
    exp = make_experiment(tmp_path / "store", 3, name="exp", promoted=False)
    best = Path(json.loads((exp / "best.json").read_text())["checkpoint"])
    best = best if best.suffix == ".pt" else best / "best.pt"
    _mlp_checkpoint(best, **ckpt)
    return exp, best


def _files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*")}


# ---------------------------------------------------------------- load_model


@pytest.mark.parametrize("target, args", [
    ("os:system", {"command": "touch {marker}"}),
    ("subprocess:call", {"args": ["touch", "{marker}"]}),
    ("runpy:run_path", {"path_name": "{script}"}),
])
def test_a_checkpoint_naming_a_callable_outside_raytune_opt_runs_nothing_without_trust(tmp_path, target, args):
    from raytune_opt.errors import UsageError
    from raytune_opt.recipe.checkpoint import load_model

    marker = tmp_path / "ran"
    script = tmp_path / "script.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    fill = {"marker": str(marker), "script": str(script)}
    args = {k: [a.format(**fill) for a in v] if isinstance(v, list) else v.format(**fill) for k, v in args.items()}
    spec = {"name": target, "target": target, "args": args, "input_shape": [1, 8, 8], "num_classes": 10}
    path = _mlp_checkpoint(tmp_path / "best.pt", model=spec)
    for load in (lambda: load_model(path), lambda: __import__("raytune_opt").load_model(tmp_path)):
        with pytest.raises(RaytuneOptError) as info:
            load()
        assert not marker.exists()
        assert isinstance(info.value, UsageError)
        assert str(info.value) == f"{path} names your own model {target}; {FLAG_LINE}"


def test_only_exact_registry_entries_are_built_in(tmp_path, monkeypatch):
    from raytune_opt import registry
    from raytune_opt.recipe.checkpoint import load_model

    # raytune_opt_evil shares our package's prefix and sits in the current directory: never imported.
    marker = tmp_path / "ran"
    _evil_module(tmp_path, "raytune_opt_evil", marker, "import torch\nNet = lambda **kw: torch.nn.Linear(64, 10)\n")
    monkeypatch.chdir(tmp_path)
    spec = {"name": "raytune_opt_evil:Net", "target": "raytune_opt_evil:Net", "args": {}, "input_shape": [1, 8, 8],
            "num_classes": 10}
    try:
        with pytest.raises(RaytuneOptError) as info:
            load_model(_mlp_checkpoint(tmp_path / "best.pt", model=spec))
        assert not marker.exists() and "raytune_opt_evil" not in sys.modules
        assert "names your own model raytune_opt_evil:Net" in str(info.value)
    finally:
        _forget("raytune_opt_evil")
    from raytune_opt import trust

    assert trust.builtin("raytune_opt.recipe.models:small_cnn", registry.MODELS)
    for target in ("raytune_opt_evil:Net", "raytune_opt.recipe.models:torch.save", "raytune_opt:load_model",
                   "raytune_opt.recipe.data:digits", " raytune_opt.recipe.models:small_cnn", None, ["x"]):
        assert not trust.builtin(target, registry.MODELS), target


def test_a_module_beside_the_user_cannot_stand_in_for_ours(tmp_path, monkeypatch):
    """Our own targets import through the package already loaded, whatever the user's directories hold."""
    from raytune_opt import registry

    marker = tmp_path / "ran"
    fake = tmp_path / "raytune_opt" / "recipe"
    _evil_module(fake, "tabular", marker, "def csv(**kw): pass\n")
    for d in (tmp_path / "raytune_opt", fake):
        (d / "__init__.py").write_text("")
    monkeypatch.chdir(tmp_path)
    fn = registry.import_target("raytune_opt.recipe.tabular:csv", [str(tmp_path)])
    assert Path(sys.modules[fn.__module__].__file__).is_relative_to(ROOT / "raytune_opt") and not marker.exists()


def test_trusting_the_checkpoint_rebuilds_the_users_own_model(tmp_path, monkeypatch):
    import torch

    from raytune_opt.recipe.checkpoint import load_model, make_checkpoint, save_checkpoint

    marker = tmp_path / "imported"
    name = _evil_module(tmp_path / "project", f"own_{tmp_path.name.replace('-', '_')}", marker, """
        import torch
        class Net(torch.nn.Sequential):
            def __init__(self, hidden=4, num_classes=10):
                super().__init__(torch.nn.Flatten(), torch.nn.Linear(64, hidden), torch.nn.Linear(hidden, num_classes))
        """)
    monkeypatch.chdir(tmp_path / "project")  # where the user's own code imports from
    try:
        spec = {"name": f"{name}:Net", "target": f"{name}:Net", "args": {"hidden": 4}, "input_shape": [1, 8, 8],
                "num_classes": 10}
        torch.manual_seed(0)
        state = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4), torch.nn.Linear(4, 10)).state_dict()
        path = save_checkpoint(make_checkpoint(model_spec=spec, model_state=state, epoch=1), tmp_path / "best.pt")
        marker.unlink(missing_ok=True)
        with pytest.raises(RaytuneOptError, match="--trust-code"):
            load_model(path)
        assert not marker.exists() and name not in sys.modules
        model, ckpt = load_model(path, trust_code=True)
        assert marker.exists() and type(model).__name__ == "Net" and ckpt["model"]["target"] == f"{name}:Net"
        assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    finally:
        _forget(name)


# ---------------------------------------------------------------- promote


def test_promote_refuses_an_untrusted_checkpoint_in_one_line_and_writes_nothing(tmp_path, capsys):
    marker = tmp_path / "ran"
    spec = {"name": "os:system", "target": "os:system", "args": {"command": f"touch {marker}"},
            "input_shape": [1, 8, 8], "num_classes": 10}
    exp, best = _untrusted_experiment(tmp_path, model=spec)
    before = _files(exp)
    code = main(["promote", str(exp), "--targets", "onnx"])
    assert not marker.exists() and _files(exp) == before  # nothing ran, nothing written
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"{best} names your own model os:system; {FLAG_LINE}"]
    # The flag is what lets it through (os.system then runs and returns an int, not a model).
    assert main(["promote", str(exp), "--targets", "onnx", "--trust-code"]) == 2
    assert marker.exists() and "returned a int, not a torch.nn.Module" in capsys.readouterr().err


def test_promote_refuses_a_data_set_named_by_the_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAYTUNE_OPT_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "ran"
    name = _evil_module(tmp_path / "here", f"evil_data_{tmp_path.name.replace('-', '_')}", marker,
                        "def load(**kw): raise SystemExit(3)\n")
    monkeypatch.chdir(tmp_path / "here")
    try:
        exp, best = _untrusted_experiment(tmp_path, data={"dataset": f"{name}:load"})
        before = _files(exp)
        code = main(["promote", str(exp), "--targets", "onnx"])
        assert not marker.exists() and name not in sys.modules and _files(exp) == before
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err == [f"{best} names your own data set {name}:load; {FLAG_LINE}"]
    finally:
        _forget(name)


def test_an_untrusted_checkpoint_cannot_make_promote_download_where_it_says(tmp_path, capsys, monkeypatch):
    # A built-in data set, but data.root and data.download come from the file: untrusted, promote
    # only reads what is already there (here nothing) and writes nowhere the file names.
    monkeypatch.setenv("RAYTUNE_OPT_CACHE", str(tmp_path / "cache"))
    victim = tmp_path / "victim" / "cifar"
    exp, _ = _untrusted_experiment(tmp_path, data={"dataset": "cifar10", "root": str(victim), "download": True,
                                                    "val_fraction": 0.2})
    code = main(["promote", str(exp), "--targets", "onnx"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and str(victim) in err, err
    assert not (tmp_path / "victim").exists()


def test_promote_refuses_a_distillation_student_named_by_the_experiments_spec(tmp_path, capsys, monkeypatch):
    import yaml

    monkeypatch.setenv("RAYTUNE_OPT_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "ran"
    name = _evil_module(tmp_path / "here", f"evil_student_{tmp_path.name.replace('-', '_')}", marker,
                        "import torch\nNet = lambda **kw: torch.nn.Sequential(torch.nn.Flatten(), "
                        "torch.nn.Linear(64, 10))\n")
    monkeypatch.chdir(tmp_path / "here")
    try:
        exp, _ = _untrusted_experiment(tmp_path)
        spec = yaml.safe_load((exp / "spec.yaml").read_text())
        spec["promote"]["distill"] = {**(spec["promote"].get("distill") or {}), "model": {"name": f"{name}:Net"},
                                      "epochs": 1}
        (exp / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        before = _files(exp)
        code = main(["promote", str(exp), "--targets", "distill"])
        assert not marker.exists() and name not in sys.modules and _files(exp) == before
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err == [f"{exp / 'spec.yaml'} names your own model {name}:Net; {FLAG_LINE}"]
    finally:
        _forget(name)


def test_promote_refuses_a_promotion_step_named_by_the_experiments_spec(tmp_path, capsys, monkeypatch):
    import yaml

    monkeypatch.setenv("RAYTUNE_OPT_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "ran"
    name = _evil_module(tmp_path / "here", f"evil_step_{tmp_path.name.replace('-', '_')}", marker,
                        "def card(ctx):\n    ctx.record('card', 'skipped', reason='ran as a step')\n")
    monkeypatch.chdir(tmp_path / "here")
    try:
        exp, _ = _untrusted_experiment(tmp_path)
        spec = yaml.safe_load((exp / "spec.yaml").read_text())
        spec["promote"]["targets"] = [f"{name}:card"]  # alone: trusted, nothing but the reference is measured first
        (exp / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        before = _files(exp)
        code = main(["promote", str(exp)])
        assert not marker.exists() and name not in sys.modules and _files(exp) == before
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err == [f"{exp / 'spec.yaml'} names your own promotion step {name}:card; {FLAG_LINE}"]
        # Trusted, it runs as the built-in steps do.
        from raytune_opt.promote import measure

        monkeypatch.setattr(measure, "LATENCY_BUDGET_S", 0.01)  # the reference's latency is not the point here
        assert main(["promote", str(exp), "--trust-code"]) == 0 and marker.exists()
        manifest = json.loads((exp / "promotion" / "manifest.json").read_text())
        assert [a["name"] for a in manifest["artifacts"]] == ["pytorch", "card"]
    finally:
        _forget(name)


def test_promote_puts_the_run_records_code_dirs_on_sys_path_only_when_trusted(tmp_path):
    """A built-in model and data set, but the run record's code_dirs hold a module that the
    built-in data set imports on first use (scikit-learn, for digits): a fresh process that
    promotes without --trust-code must not import it from there."""
    from raytune_opt.experiment import RUN_META

    marker = tmp_path / "ran"
    planted = tmp_path / "planted"
    _evil_module(planted / "sklearn", "__init__", marker, "raise ImportError('planted')\n")
    exp, _ = _untrusted_experiment(tmp_path)
    meta = json.loads((exp / RUN_META).read_text())
    (exp / RUN_META).write_text(json.dumps({**meta, "code_dirs": [str(planted)]}))
    (tmp_path / "cwd").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAYTUNE_OPT_CACHE": str(tmp_path / "cache")}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "raytune_opt", "promote", str(exp), "--targets", "onnx"],
                          cwd=tmp_path / "cwd", env=env, capture_output=True, text=True, timeout=300)
    assert not marker.exists(), proc.stderr[-2000:]
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_the_flag_and_what_run_and_resume_trust_are_in_the_help(capsys):
    with pytest.raises(SystemExit):
        main(["promote", "--help"])
    assert "--trust-code" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["resume", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "Resume trusts the experiment" in out


# ---------------------------------------------------------------- report


def test_report_imports_no_code_the_experiment_or_the_current_directory_names(tmp_path, monkeypatch, capsys):
    """An experiment from elsewhere: its spec.input.yaml names a module beside it, its
    spec.yaml and checkpoint name one in the current directory. The report reads the files as
    data and draws the page without importing either."""
    import yaml

    marker_exp, marker_cwd = tmp_path / "ran_exp", tmp_path / "ran_cwd"
    exp = make_experiment(tmp_path / "store", 4, name="elsewhere", promoted=False)
    beside = _evil_module(exp, f"evil_beside_{tmp_path.name.replace('-', '_')}", marker_exp, "Net = print\n")
    here = _evil_module(tmp_path / "cwd", f"evil_cwd_{tmp_path.name.replace('-', '_')}", marker_cwd,
                        "Net = load = train = print\n")
    monkeypatch.chdir(tmp_path / "cwd")
    try:
        given = yaml.safe_load((exp / "spec.input.yaml").read_text())
        given["model"] = {"name": f"{beside}:Net"}
        given.setdefault("data", {})["dataset"] = f"{here}:load"
        given.setdefault("train", {})["loop"] = f"{here}:train"
        (exp / "spec.input.yaml").write_text(yaml.safe_dump(given, sort_keys=False))
        resolved = yaml.safe_load((exp / "spec.yaml").read_text())
        resolved["model"]["name"] = f"{here}:Net"
        (exp / "spec.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        best = Path(json.loads((exp / "best.json").read_text())["checkpoint"])
        best = best if best.suffix == ".pt" else best / "best.pt"
        _mlp_checkpoint(best, model={"name": f"{here}:Net", "target": f"{here}:Net", "args": {},
                                     "input_shape": [1, 8, 8], "num_classes": 10})
        code = main(["report", str(exp)])
        assert not marker_exp.exists() and not marker_cwd.exists()
        assert beside not in sys.modules and here not in sys.modules
        assert code == 0, capsys.readouterr().err
        assert (exp / "report.html").is_file() and "report:" in capsys.readouterr().out
    finally:
        _forget(beside, here)
