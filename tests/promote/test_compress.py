"""Compression before conversion: structured pruning (Torch-Pruning) fine-tuned with
distillation, and a distilled student; each gated against the trial, saved as a checkpoint
that loads without Torch-Pruning, and converted by the same ONNX -> INT8 chain."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from raytune_opt.cli import main
from raytune_opt.promote import compress, manifest, promote
from raytune_opt.promote.errors import CompressionError
from raytune_opt.promote.prune import prune_model
from raytune_opt.promote.select import sha256_file
from tests.promote.conftest import REPO, set_promote

# The session's digits trial trained 3 epochs (about 94%): far from converged, so 2 epochs of
# fine-tuning recover a 0.3 pruning (measured: +0.3 points) where 1 does not (-4.5). No rounding:
# the default multiple of 8 would leave its 16/32 channels at 8/16, a 0.5 pruning.
PRUNE = {"ratio": 0.3, "round_to": None, "finetune_epochs": 2}


def _arts(doc: dict) -> dict:
    return {a["name"]: a for a in doc["artifacts"]}


def _load_without_torch_pruning(path) -> dict:
    """Load a checkpoint in a fresh interpreter where importing torch_pruning fails."""
    code = textwrap.dedent(f"""
        import json, sys
        sys.modules["torch_pruning"] = None  # any import of it now raises ImportError
        import torch, raytune_opt
        from raytune_opt.recipe.checkpoint import load_model
        model = raytune_opt.load_model({str(path)!r})
        again, ckpt = load_model({str(path)!r})
        torch.load({str(path)!r}, weights_only=True)
        x = torch.zeros(3, 1, 8, 8)
        print(json.dumps({{"params": sum(p.numel() for p in model.parameters()),
                           "modules": sorted({{type(m).__module__ for m in model.modules()}}),
                           "same": bool(torch.equal(model(x), again(x))), "shape": list(model(x).shape),
                           "step": ckpt["promotion"]["step"]}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_pruning_removes_channels_and_the_chain_converts_the_pruned_model(experiment, capsys):
    # The INT8 gate is not what this test is about: the pruned model's INT8 loses about a point
    # and lands either side of the default 1.0 by CPU (-1.04 on an AMD EPYC without AVX-512).
    set_promote(experiment, prune=PRUNE, int8_max_accuracy_drop=3.0)
    assert main(["promote", str(experiment), "--targets", "prune,onnx,int8"]) == 0
    out = capsys.readouterr().out
    doc = json.loads((experiment / "promotion" / "manifest.json").read_text())
    arts = _arts(doc)
    assert list(arts) == ["pytorch", "prune", "onnx", "int8", "int8-tensorrt-qdq"]
    trial, pruned = arts["pytorch"], arts["prune"]
    assert pruned["status"] == "ok" and pruned["path"] == "model.pruned.pt"
    assert pruned["params"] < 0.6 * trial["params"] and pruned["macs"] < 0.6 * trial["macs"]
    assert pruned["of_trial"]["params"] == pytest.approx(pruned["params"] / trial["params"])
    assert -pruned["delta_points"] <= 1.0  # fine-tuned back within the gate
    assert pruned["pruning"]["ratio"] == 0.3 and pruned["pruning"]["round_to"] is None
    assert pruned["pruning"]["library"].startswith("torch-pruning")
    assert set(pruned["latency_ms"]) == {"batch_1", "batch_64"} and pruned["from_step"] is None
    assert doc["settings"]["prune"]["finetune_epochs"] == 2
    # ONNX and INT8 convert the pruned model: parity against its own outputs, its size, its score.
    for name in ("onnx", "int8"):
        rec = arts[name]
        assert rec["status"] == "ok" and rec["from_step"] == "prune", rec
        assert (rec["params"], rec["macs"]) == (pruned["params"], pruned["macs"])
    assert arts["onnx"]["parity"]["top1_agreement"] == 1.0 and arts["onnx"]["accuracy"] == pruned["accuracy"]
    assert arts["onnx"]["delta_points"] == pruned["delta_points"]  # reported against the trial
    # The pruned checkpoint is a plain module that loads without the library.
    loaded = _load_without_torch_pruning(experiment / "promotion" / "model.pruned.pt")
    assert loaded["params"] == pruned["params"] and loaded["same"] and loaded["shape"] == [3, 10]
    assert loaded["modules"] == ["torch.nn.modules.activation", "torch.nn.modules.batchnorm",
                                 "torch.nn.modules.container", "torch.nn.modules.conv", "torch.nn.modules.dropout",
                                 "torch.nn.modules.flatten", "torch.nn.modules.linear", "torch.nn.modules.pooling"]
    assert loaded["step"] == "prune"
    # The table shows the stages side by side, with params and MACs.
    table = out[out.index("artifact "):].splitlines()
    assert table[0].split()[:9] == ["artifact", "status", "val", "accuracy", "Δ", "vs", "trial", "test", "accuracy"]
    assert "params" in table[0] and "MACs" in table[0] and "p50/p95@64" in table[0]
    assert [line.split()[0] for line in table[1:6]] == list(arts)
    assert "prune: ok — params" in out


def test_a_rejected_pruning_keeps_its_file_and_the_chain_goes_on_from_the_trials_model(experiment):
    set_promote(experiment, prune={"ratio": 0.5, "finetune_epochs": 0, "max_accuracy_drop": 0.0})
    arts = _arts(promote(experiment, targets="prune,onnx,int8"))
    pruned, onnx_rec = arts["prune"], arts["onnx"]
    assert pruned["status"] == "rejected"
    assert "promote.prune.max_accuracy_drop=0" in pruned["reason"] and "vs the trial" in pruned["reason"]
    path = experiment / "promotion" / pruned["path"]
    assert path.is_file() and sha256_file(path) == pruned["sha256"]  # kept, marked rejected
    assert onnx_rec["status"] == "ok" and "from_step" not in onnx_rec
    assert onnx_rec["params"] == arts["pytorch"]["params"] and onnx_rec["delta_points"] == 0.0
    assert arts["int8"]["status"] == "ok" and "from_step" not in arts["int8"]


def test_distillation_trains_a_narrower_student_that_the_chain_converts(experiment):
    set_promote(experiment, distill={"model": {"width": 8}, "epochs": 2, "max_accuracy_drop": 100.0})
    doc = promote(experiment, targets="distill,onnx")
    arts = _arts(doc)
    student = arts["distill"]
    assert student["status"] == "ok" and student["student"]["width"] == 8 and student["epochs"] == 2
    assert student["student"]["name"] == "small_cnn"  # the trial's model, narrower
    assert student["params"] < 0.5 * arts["pytorch"]["params"] and student["accuracy"] > 0.5  # learned something
    assert arts["onnx"]["from_step"] == "distill" and arts["onnx"]["params"] == student["params"]
    from raytune_opt.recipe.checkpoint import load_model

    model, ckpt = load_model(experiment / "promotion" / "model.distilled.pt")
    assert ckpt["recipe"]["model"]["width"] == 8 and ckpt["model"]["width"] == 8
    assert model[0].out_channels == 8 and ckpt["metrics"]["val_accuracy"] == student["accuracy"]


def test_a_regression_prunes_behind_its_metric_gate(regression_experiment):
    set_promote(regression_experiment, prune={"finetune_epochs": 2, "max_relative_change": 1.0})
    arts = _arts(promote(regression_experiment, targets="prune,onnx"))
    pruned, onnx_rec = arts["prune"], arts["onnx"]
    assert pruned["status"] == "ok" and pruned["metric"] == "rmse" and pruned["accuracy"] is None
    assert pruned["fp32_score"] == arts["pytorch"]["score"] and pruned["params"] < arts["pytorch"]["params"]
    assert pruned["relative_change"] == pytest.approx((pruned["score"] - pruned["fp32_score"]) / pruned["fp32_score"],
                                                      abs=1e-6)
    assert onnx_rec["status"] == "ok" and onnx_rec["from_step"] == "prune"
    assert onnx_rec["score"] == pytest.approx(pruned["score"], rel=1e-5)  # parity with the pruned model
    set_promote(regression_experiment, prune={"finetune_epochs": 0, "max_relative_change": 0.0})
    rejected = _arts(promote(regression_experiment, targets="prune"))["prune"]
    assert rejected["status"] == "rejected" and "promote.prune.max_relative_change=0" in rejected["reason"]


def test_distillation_without_a_student_is_a_failed_artifact_in_one_line(experiment):
    doc = promote(experiment, targets="distill,onnx")
    arts = _arts(doc)
    assert doc["status"] == "failed" and arts["distill"]["status"] == "failed"
    assert arts["distill"]["reason"].startswith("distill: promote.distill.model is not set")
    assert arts["onnx"]["status"] == "ok" and "from_step" not in arts["onnx"]  # the chain went on


def test_a_later_promotion_without_compression_drops_the_records_of_the_compressed_chain(experiment):
    set_promote(experiment, prune=PRUNE)
    first = _arts(promote(experiment, targets="prune,onnx,int8"))
    assert first["int8"]["from_step"] == "prune"
    second = _arts(promote(experiment, targets="onnx"))  # the chain rebuilt from the trial's model
    assert list(second) == ["pytorch", "onnx"]


# ---- a model Torch-Pruning cannot prune: one line at validation (--smoke) and at promotion --------

NETS = '''
import torch
from torch import nn


class HardView(nn.Module):
    """Reshapes to a channel count written into forward: pruning cannot see it."""

    def __init__(self, in_channels, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 8 * 8, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).view(-1, 16 * 8 * 8))


class Detached(nn.Module):
    """The head reads a detached copy: the graph Torch-Pruning traces is cut."""

    def __init__(self, in_channels, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)).detach())
'''

SPEC = """name: exp
data: {dataset: digits}
model: {name: "compress_nets:HardView"}
train: {epochs: 1, batch_size: 64, lr_schedule: {name: constant}}
search: {algorithm: random, num_samples: 1}
promote: {targets: [prune, onnx]}
"""


@pytest.fixture
def nets(tmp_path, monkeypatch):
    (tmp_path / "compress_nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("RAYTUNE_OPT_CACHE", str(tmp_path / "data_cache"))
    import compress_nets

    return compress_nets


@pytest.mark.parametrize("cls, fragment", [
    ("HardView", "prune: the pruned model no longer runs (RuntimeError: mat1 and mat2 shapes cannot be multiplied"),
    ("Detached", "prune: Torch-Pruning found no channel it can remove: the forward pass is cut off"),
])
def test_a_model_that_cannot_be_pruned_is_one_line(nets, cls, fragment):
    model = getattr(nets, cls)(1, 10).eval()
    with pytest.raises(CompressionError) as info:
        prune_model(model, torch.zeros(2, 1, 8, 8), ratio=0.5)
    assert str(info.value).startswith(fragment) and "\n" not in str(info.value)


def test_validate_smoke_prunes_a_copy_and_refuses_a_model_that_cannot_be_pruned(nets, tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    assert main(["validate", str(spec), "--smoke"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err
    assert lines[0].startswith("smoke: model.name compress_nets:HardView: prune: the pruned model no longer runs")
    spec.write_text(SPEC.replace("compress_nets:HardView", "small_cnn"))
    assert main(["validate", str(spec), "--smoke"]) == 0
    assert "smoke: prune dry run ok (ratio 0.5): 19,562 -> 5,178 parameters" in capsys.readouterr().out


def test_promoting_a_model_that_cannot_be_pruned_records_one_line_and_converts_the_trials(nets, tmp_path, capsys,
                                                                                         monkeypatch):
    from tests.promote.conftest import trained_experiment

    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    exp, _ = trained_experiment(tmp_path, spec, [], {})
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(["promote", str(exp), "--trust-code"]) == 1  # a failed artifact (a user model: trusted by hand)
    captured = capsys.readouterr()
    arts = _arts(json.loads((exp / "promotion" / "manifest.json").read_text()))
    assert arts["prune"]["status"] == "failed" and "traceback" not in arts["prune"]
    assert arts["prune"]["reason"].startswith("prune: the pruned model no longer runs")
    assert arts["onnx"]["status"] == "ok" and "from_step" not in arts["onnx"]
    assert "Traceback" not in captured.err and "promotion failed (prune)" in captured.err


# ---- the parts ----------------------------------------------------------------------------------

def test_validating_compression_targets_imports_neither_torch_nor_ray():
    code = ("import sys; from raytune_opt.spec import load_spec; "
            "load_spec('search_spaces/digits_cnn.yaml', ['promote.targets=[prune,distill,onnx]', "
            "'promote.distill.model={width: 8}']); print('torch' in sys.modules, 'ray' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False"]


def test_the_distillation_loss():
    task = nn.CrossEntropyLoss()
    s, t, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    kw = dict(temperature=4.0, regression=False)
    assert compress.kd_loss(s, t, y, task, alpha=0.0, **kw) == pytest.approx(task(s, y).item())
    assert compress.kd_loss(t, t, y, task, alpha=1.0, **kw).item() == pytest.approx(0.0, abs=1e-6)
    kl = torch.nn.functional.kl_div(torch.log_softmax(s / 4, 1), torch.softmax(t / 4, 1), reduction="batchmean")
    mixed = compress.kd_loss(s, t, y, task, alpha=0.25, **kw)
    assert mixed.item() == pytest.approx(0.25 * 16 * kl.item() + 0.75 * task(s, y).item(), rel=1e-5)
    out, teacher, target = torch.randn(4, 1), torch.randn(4, 1), torch.randn(4)
    mse = nn.MSELoss()
    reg = compress.kd_loss(out, teacher, target, lambda o, y: mse(o.reshape(y.shape), y), alpha=0.5,
                           temperature=4.0, regression=True)
    assert reg.item() == pytest.approx(0.5 * mse(out, teacher).item() + 0.5 * mse(out.reshape(4), target).item())


@pytest.mark.parametrize("name, extra", [("resnet18", {}), ("mobilenet_v3_small", {}), ("tabular_mlp", {})])
def test_a_pruned_model_is_described_by_plain_values_and_rebuilt_exactly(name, extra):
    """Residual adds (resnet), depthwise groups (mobilenet), layer norms (tabular_mlp)."""
    import copy
    import io

    from raytune_opt.recipe import resize
    from raytune_opt.recipe.models import build_model_from_spec, model_spec

    shape = (10,) if name == "tabular_mlp" else (3, 32, 32)
    spec = model_spec({"name": name, "width": 16, **extra}, shape, 10)
    torch.manual_seed(0)
    base = build_model_from_spec(spec).eval()
    x = torch.randn(4, *shape)
    pruned = prune_model(copy.deepcopy(base), x, ratio=0.5, round_to=4, global_pruning=name == "resnet18")
    resized = resize.describe(pruned, base)
    buffer = io.BytesIO()
    torch.save({"model": {**spec, "resized": resized}, "state": pruned.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    rebuilt = build_model_from_spec(saved["model"])
    rebuilt.load_state_dict(saved["state"])
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), pruned(x))
    assert sum(p.numel() for p in rebuilt.parameters()) < 0.5 * sum(p.numel() for p in base.parameters())
    channels = [m.out_channels for m in rebuilt.modules() if isinstance(m, nn.Conv2d)]
    assert all(c % 4 == 0 for c in channels[:-1])  # round_to (the last conv of mobilenet feeds the kept head)


def test_describe_refuses_a_model_whose_modules_changed():
    from raytune_opt.recipe import resize

    base = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    other = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="modules differ"):
        resize.describe(other, base)


def test_the_stage_table_shows_params_macs_and_p95_only_when_a_compression_step_ran():
    lat = {"batch_1": {"p50_ms": 0.2, "p95_ms": 0.3}, "batch_64": {"p50_ms": 2.0, "p95_ms": 2.5}}
    arts = [manifest.artifact("pytorch", "ok", accuracy=0.99, fp32_accuracy=0.99, latency_ms=lat, params=23_178,
                              macs=331_008),
            manifest.artifact("prune", "ok", accuracy=0.985, fp32_accuracy=0.99, latency_ms=lat, params=6_000,
                              macs=92_900, from_step=None),
            manifest.artifact("onnx", "ok", accuracy=0.985, fp32_accuracy=0.99, latency_ms=lat, params=6_000,
                              macs=92_900, from_step="prune")]
    assert manifest.table({"artifacts": arts}).splitlines() == [
        "artifact           status    accuracy Δ vs trial  params    MACs    p50/p95@1 ms   p50/p95@64 ms      size",
        "pytorch            ok          99.00%      +0.00   23.2K  331.0K     0.200/0.300     2.000/2.500         -",
        "prune              ok          98.50%      -0.50    6.0K   92.9K     0.200/0.300     2.000/2.500         -",
        "onnx               ok          98.50%      -0.50    6.0K   92.9K     0.200/0.300     2.000/2.500         -"]
    assert "params" not in manifest.table({"artifacts": [arts[0], arts[2]]})  # as it always was
    assert np.isclose(arts[1]["delta_points"], -0.5)
