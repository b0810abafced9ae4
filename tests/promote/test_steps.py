"""One conformance test over every registered promotion step (registry.PROMOTION_STEPS): asked
for alone, a step runs after what it needs, and leaves artifacts the manifest describes the
same way (a status, a reason unless ok, a hashed file unless skipped or failed)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from raytune_opt import registry
from raytune_opt.promote import pipeline, promote
from raytune_opt.promote.select import sha256_file
from tests.promote.conftest import TRIAL, set_promote
from tests.promote.test_promote import ARTIFACT_KEYS

# What a step needs the spec to say to run at all (validation refuses it otherwise), kept cheap:
# distill's student, one epoch each of training.
SETTINGS = {"distill": {"distill": {"model": {"width": 8}, "epochs": 1}},
            "prune": {"prune": {"finetune_epochs": 1}}}


def _pt2_runs_alone(doc: dict, promotion: Path) -> None:
    """model.pt2 (the step added as one file, raytune_opt/promote/steps/pt2.py) loads with torch.export
    alone and gives the trial model's outputs, also at batch sizes it was not traced with."""
    import numpy as np
    import torch

    from raytune_opt.recipe.checkpoint import load_model

    rec = {a["name"]: a for a in doc["artifacts"]}["pt2"]
    assert rec["parity"]["max_abs_diff"] <= rec["parity"]["atol"] and rec["test_accuracy"] is not None
    program = torch.export.load(promotion / rec["path"]).module()
    model, _ = load_model(doc["source"]["checkpoint"])  # the trial's own model, rebuilt from its code
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((7, 1, 8, 8)).astype(np.float32))
    with torch.no_grad():
        for batch in (1, 7):
            torch.testing.assert_close(program(x[:batch]), model.eval()(x[:batch]), rtol=1e-5, atol=1e-5)


# What a step's artifacts must also do, beyond what every step's must (checked on the manifest and the files).
CHECKS = {"pt2": _pt2_runs_alone}


def test_targets_are_the_steps_in_registration_order_with_what_they_need():
    assert pipeline.parse_targets("tensorrt, onnx") == ["onnx", "tensorrt"]
    assert set(SETTINGS) | set(CHECKS) <= set(registry.PROMOTION_STEPS)  # nothing here for a step that is not there
    for name in registry.PROMOTION_STEPS:
        steps = pipeline.steps_for([name])
        assert steps[-1] == name and set(registry.PROMOTION_STEPS[name].meta["needs"]) <= set(steps[:-1])


@pytest.mark.parametrize("name", registry.PROMOTION_STEPS.names())
def test_every_promotion_step_alone_runs_after_its_needs_and_records_its_artifacts(name, experiment, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a GPU step must skip cleanly without one
    monkeypatch.setitem(sys.modules, "ray", None)
    set_promote(experiment, **SETTINGS.get(name, {}))
    doc = promote(experiment, targets=[name])
    assert doc["status"] == "ok", doc["artifacts"]  # nothing failed (a rejection or a skip says why below)
    assert doc["targets"] == [name]
    arts = doc["artifacts"]
    assert arts[0]["name"] == "pytorch" and arts[0]["status"] == "ok"  # the fp32 reference everything compares to
    names = [a["name"] for a in arts]
    built = pipeline.steps_for([name])
    # Each step's artifacts are named after it and come after those of the steps it needs.
    owners = [next(s for s in built if n == s or n.startswith(s + "-")) for n in names[1:]]
    assert owners == sorted(owners, key=built.index) and set(owners) == set(built), names
    for rec in arts:
        assert ARTIFACT_KEYS <= set(rec), rec
        assert rec["status"] in ("ok", "rejected", "skipped", "failed"), rec
        assert rec["status"] == "ok" or rec["reason"], rec  # anything but ok says why
        if rec["status"] in ("ok", "rejected") and rec["name"] != "pytorch":
            path = experiment / "promotion" / rec["path"]
            assert path.is_file() and rec["sha256"] == sha256_file(path), rec
            assert rec["accuracy"] is not None, rec  # scored on the validation set
    assert json.loads((experiment / "promotion" / "manifest.json").read_text()) == doc
    if name in CHECKS:
        CHECKS[name](doc, experiment / "promotion")



# ---- the steps' contract: one module each, its settings there, a frozen context ------------------------------------


def test_every_built_in_step_is_one_module_owning_its_target_check_and_settings():
    from raytune_opt.spec import schema

    promote_section = schema.lookup(("promote",))
    owned = set()
    for name in registry.PROMOTION_STEPS:
        entry = registry.PROMOTION_STEPS[name]
        module = f"raytune_opt.promote.steps.{name}"
        assert entry.target.partition(":")[0] == module and isinstance(entry.meta["order"], (int, float))
        assert entry.check is None or entry.check.partition(":")[0] == module
        if entry.meta.get("settings") is not None:
            assert promote_section.fields[name] is entry.meta["settings"]  # the schema holds the step's own section
            owned.add(name)
    # No promote.<step> section is written anywhere but beside its step.
    assert {k for k, v in promote_section.fields.items() if isinstance(v, schema.Section)} == owned


@pytest.mark.parametrize("first", ["raytune_opt.promote.steps.prune", "raytune_opt.promote.steps.int8",
                                   "raytune_opt.spec.fields", "raytune_opt.spec.schema", "raytune_opt.registry"])
def test_whichever_module_is_imported_first_every_step_and_section_is_there(first):
    """The steps register themselves when the registry imports their package, and the schema reads
    them: no import order may leave one out (and none imports torch or Ray)."""
    import subprocess

    from raytune_opt.spec import schema
    from tests.promote.conftest import REPO

    code = (f"import importlib, json, sys; importlib.import_module({first!r}); "
            "from raytune_opt import registry; from raytune_opt.spec import schema; "
            "print(json.dumps([list(registry.PROMOTION_STEPS), list(schema.SPEC.fields['promote'].fields), "
            "list(schema.DEFAULT_TARGETS), 'torch' in sys.modules, 'ray' in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [list(registry.PROMOTION_STEPS), list(schema.SPEC.fields["promote"].fields),
                                       list(schema.DEFAULT_TARGETS), False, False]


@pytest.mark.parametrize("neutral", [True, False])
def test_a_new_step_with_settings_leaves_recorded_spec_hashes_as_they_were_when_it_says_so(neutral):
    """A step's section is in every resolved spec: one added after experiments were recorded
    (hash_neutral) is left out of Spec.sha256 at its defaults, so those experiments still resume;
    nothing outside the step's own module has to say so."""
    import subprocess

    from raytune_opt.spec import load_spec
    from tests.promote.conftest import DIGITS, REPO

    code = ("import json; from raytune_opt import registry; from raytune_opt.spec.fields import Field, Section; "
            "registry.PROMOTION_STEPS.register('card', 'json:dumps', order=70, by_default=False, "
            f"hash_neutral={neutral}, settings=Section('A model card.', {{'title': Field('str', 'card', 'Title.')}})); "
            "from raytune_opt.spec import load_spec; "
            f"print(json.dumps([load_spec({str(DIGITS)!r}, o).sha256() for o in ([], ['promote.card.title=x'])]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    default, given = json.loads(proc.stdout)
    assert (default == load_spec(DIGITS).sha256()) is neutral  # the digits spec's hash as recorded, or not
    assert given != load_spec(DIGITS).sha256()  # a value written for the new step is part of the spec

def test_a_registry_discovers_a_package_whose_modules_register_themselves_in_their_order(tmp_path, monkeypatch):
    pkg = f"discovered_{tmp_path.name.replace('-', '_')}"
    (tmp_path / pkg).mkdir()
    (tmp_path / pkg / "__init__.py").write_text("from raytune_opt.registry import Registry\nREG = Registry('thing')\n")
    for name, order in (("alpha", 20), ("beta", None), ("gamma", 10), ("_hidden", 5)):
        meta = "" if order is None else f", order={order}"
        (tmp_path / pkg / f"{name}.py").write_text(f"from {pkg} import REG\nREG.register({name!r}, 'm:f'{meta})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = __import__(pkg).REG
    reg.discover(pkg)
    assert reg.names() == ("gamma", "alpha", "beta") and list(reg) == list(reg.names())  # unordered ones last


def test_the_step_context_is_frozen_and_changes_only_through_its_methods():
    import dataclasses
    import types

    import numpy as np

    from raytune_opt.promote.context import StepContext, _Chain
    from raytune_opt.promote.measure import Scorer

    lines = []
    scorer = Scorer("accuracy", 1.0)
    chain = _Chain(model="trial", reference=np.zeros((2, 3)), model_score=0.9, gate=scorer, footprint={"params": 10})
    ctx = StepContext(step="onnx", source=types.SimpleNamespace(spec={"seed": 3}), checkpoint={}, trial_model="trial",
                      data=None, x_val=np.zeros((2, 4)), y_val=np.zeros(2), x_test=None, y_test=None, scorer=scorer,
                      fp32=0.9, out_dir=Path("/nonexistent"), threads=1, targets=("onnx",), placement=None,
                      code_dirs=(), trust_code=False, log=lines.append,
                      _promote={"int8": {"calibration_batches": 4}, "parity_atol": 1e-4},
                      _sections={"int8": registry.PROMOTION_STEPS["int8"].meta["settings"]},
                      _calibration=lambda n: [np.ones((1, 4))] * n, _chain=chain)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.step = "int8"
    int8 = ctx.for_step("int8")
    assert int8.settings == {"calibration_batches": 4, "calibration_method": "minmax", "max_accuracy_drop": 1.0,
                             "max_relative_change": 0.05}  # the schema's defaults under what the spec says
    int8.settings["calibration_batches"] = 99
    assert int8.settings["calibration_batches"] == 4 and ctx.settings == {}  # copies; onnx has no section
    ctx.promote["parity_atol"] = 1.0
    assert ctx.promote["parity_atol"] == 1e-4 and int8.seed == 3 and len(int8.calibration_batches(2)) == 2
    with pytest.raises(TypeError):
        ctx.outputs["onnx"] = b"x"
    ctx.leave("onnx", b"bytes")
    assert int8.outputs["onnx"] == b"bytes"  # what one step leaves, the later ones see
    ctx.for_step("prune").use("pruned", np.ones((2, 3)), 0.8, {"params": 5}, against="the pruned fp32 model")
    assert (int8.model, int8.made_by, int8.model_score, int8.footprint) == ("pruned", "prune", 0.8, {"params": 5})
    assert int8.gate.against == "the pruned fp32 model" and int8.scorer.against != int8.gate.against
    rec = int8.record("int8", "rejected", reason="gate", **int8.scored(0.7))
    assert rec["from_step"] == "prune" and rec["params"] == 5 and rec["delta_points"] == pytest.approx(-20.0)
    assert lines == ["int8: rejected — gate"] and int8.artifacts[-1] == rec and int8.artifacts[-1] is not rec


# ---- your own step, by import path ---------------------------------------------------------------------------------

_USER_STEPS = '''
import json


def card(ctx):
    """The README's example, plus what the step saw."""
    onnx = {a["name"]: a for a in ctx.artifacts}.get("onnx")
    if ctx.outputs.get("onnx") is None:
        ctx.record("card", "skipped", reason="no ONNX model passed its parity check")
        return
    path = ctx.out_dir / "card.json"
    path.write_text(json.dumps({"trial": ctx.source.trial_id, "onnx_sha256": onnx["sha256"],
                                "input_shape": list(ctx.data.input_shape), "classes": list(ctx.data.class_names),
                                "step": ctx.step, "settings": ctx.settings, "targets": list(ctx.targets),
                                "seen": [a["name"] for a in ctx.artifacts]}))
    ctx.record("card", "ok", path=path, **ctx.scored(ctx.model_score))


def broken(ctx):
    raise ValueError("no card today")


def two(ctx, extra):
    pass
'''


def test_a_step_of_yours_by_import_path_runs_after_the_built_ins_with_the_same_context(experiment, tmp_path,
                                                                                      monkeypatch):
    module = f"user_steps_{tmp_path.name.replace('-', '_')}"
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / f"{module}.py").write_text(_USER_STEPS)
    monkeypatch.chdir(tmp_path / "code")  # named by the caller: imported from the current directory
    doc = promote(experiment, targets=f"{module}:card,{module}:broken,onnx")
    assert doc["targets"] == ["onnx", f"{module}:card", f"{module}:broken"]
    arts = {a["name"]: a for a in doc["artifacts"]}
    assert list(arts) == ["pytorch", "onnx", "card", f"{module}:broken"]
    card = json.loads((experiment / "promotion" / "card.json").read_text())
    assert card == {"trial": TRIAL, "onnx_sha256": arts["onnx"]["sha256"], "input_shape": [1, 8, 8],
                    "classes": [str(i) for i in range(10)], "step": f"{module}:card", "settings": {},
                    "targets": doc["targets"], "seen": ["pytorch", "onnx"]}
    assert arts["card"]["status"] == "ok" and arts["card"]["sha256"] == sha256_file(experiment / "promotion" /
                                                                                     "card.json")
    assert arts["card"]["accuracy"] == arts["pytorch"]["accuracy"]
    failed = arts[f"{module}:broken"]  # what a step of yours raises is its own failed record
    assert failed["status"] == "failed" and failed["reason"] == "ValueError: no card today"
    assert "in broken" in failed["traceback"] and doc["status"] == "failed"


def test_a_step_of_yours_that_does_not_import_or_take_the_context_stops_promotion_before_it_writes(
        experiment, tmp_path, monkeypatch):
    from raytune_opt.promote.errors import PromotionError

    module = f"user_steps_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(_USER_STEPS)
    monkeypatch.chdir(tmp_path)
    for target, fragment in ((f"{module}:crad", f"has no attribute 'crad'; did you mean 'card'?"),
                             (f"{module}:two", f"{module}:two must take the step context as its only argument "
                                               f"(got a signature (ctx, extra))")):
        with pytest.raises(PromotionError, match=re.escape(fragment)):
            promote(experiment, targets=f"onnx,{target}")
        assert not (experiment / "promotion").exists()


def test_validation_takes_a_step_of_yours_that_imports_and_takes_the_context(tmp_path, monkeypatch):
    from raytune_opt.spec import load_spec
    from tests.promote.conftest import DIGITS

    module = f"user_steps_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(_USER_STEPS)
    monkeypatch.chdir(tmp_path)
    spec = load_spec(DIGITS, [f"promote.targets=[onnx, '{module}:card']"])
    assert spec.data["promote"]["targets"] == ["onnx", f"{module}:card"]
