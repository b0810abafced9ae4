"""The training loop end to end on digits: learning, metrics, stopping, divergence, resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raytune_opt.recipe import loop as loop_mod
from raytune_opt.recipe.checkpoint import BEST, LAST, CheckpointError, load_checkpoint, load_model
from raytune_opt.recipe.data import load_data
from raytune_opt.recipe.errors import RecipeConfigError
from raytune_opt.recipe.loop import METRIC_KEYS, classification_metrics, train
from raytune_opt.recipe.session import LocalSession


def _cfg(**train) -> dict:
    return {"seed": 0, "data": {"dataset": "digits"}, "model": {"name": "small_cnn", "width": 16},
            "train": {"epochs": 2, "batch_size": 64, "checkpoint": False,
                      "optimizer": {"name": "adamw", "lr": 3e-3}, **train},
            "search": {"metric": "val_accuracy", "mode": "max"}}


def test_small_cnn_learns_digits_and_reports_every_metric(tmp_path):
    calls = []
    session = LocalSession(str(tmp_path), callback=lambda m, d: calls.append(d))
    final = train(_cfg(epochs=4, checkpoint=True), session)
    reports = session.reports
    assert [r["epoch"] for r in reports] == [1, 2, 3, 4]
    assert final == reports[-1] and final["val_accuracy"] >= 0.9  # 0.94 on the 1,150 images left beside the test split
    for r in reports:
        assert set(r) == set(METRIC_KEYS) | {"best_val_accuracy", "stop_reason"}
        assert not [k for k in r if k.startswith("test_")]  # a trial never measures the test split
        assert all(math.isfinite(r[k]) for k in METRIC_KEYS)
        assert 0 <= r["val_accuracy"] <= 1 and r["grad_norm"] > 0 and r["samples_per_s"] > 0
    assert [r["stop_reason"] for r in reports] == [None, None, None, "completed"]
    assert reports[0]["train_loss"] > reports[-1]["train_loss"]
    assert final["best_val_accuracy"] == max(r["val_accuracy"] for r in reports)
    assert calls == [str(tmp_path)] * 4 and {p.name for p in tmp_path.iterdir()} == {BEST, LAST}
    # The best checkpoint rebuilds a model that scores what was reported for it.
    model, ckpt = load_model(tmp_path / BEST)
    data = load_data({"dataset": "digits", "test_fraction": 0.2}, 0)  # split as the trials split it
    with torch.no_grad():
        accuracy = (model(data.x_val).argmax(1) == data.y_val).float().mean().item()
    assert accuracy == pytest.approx(final["best_val_accuracy"])
    assert ckpt["metrics"]["val_accuracy"] == final["best_val_accuracy"]
    assert ckpt["recipe"]["model"]["width"] == 16 and ckpt["model"]["in_channels"] == 1


def test_macro_metrics_match_scikit_learn():
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 5, 200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 6, 200))  # class 5 only predicted
    confusion = torch.zeros(6, 6, dtype=torch.float64)
    np.add.at(confusion.numpy(), (y_true, y_pred), 1)
    ours = classification_metrics(confusion)
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    assert ours["val_accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert (ours["val_precision"], ours["val_recall"], ours["val_f1"]) == pytest.approx((p, r, f))


def test_huge_lr_diverges_without_an_exception():
    session = LocalSession()
    final = train(_cfg(epochs=3, optimizer={"name": "sgd", "lr": 1e30}), session)
    assert final["stop_reason"].startswith("diverged: non-finite loss at epoch 1 step ")
    assert len(session.reports) == 1 and math.isnan(final["train_loss"])


def test_divergence_names_the_exact_step(monkeypatch):
    real = loop_mod.build_loss

    def poisoned(*args):
        loss, calls = real(*args), []

        def forward(logits, target):
            calls.append(1)
            value = loss(logits, target)
            return value * float("nan") if len(calls) == 9 else value  # 2nd epoch, 4th batch

        return forward

    monkeypatch.setattr(loop_mod, "build_loss", lambda *a: _Wrap(poisoned(*a)))
    final = train(_cfg(epochs=2, limit_batches=5), LocalSession())
    assert final["stop_reason"] == "diverged: non-finite loss at epoch 2 step 4"


class _Wrap(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, logits, target):
        return self.fn(logits, target)


def test_early_stopping_stops_before_the_last_epoch():
    # No epoch can beat the first by min_delta 1.0, so patience 2 stops after epoch 3.
    session = LocalSession()
    final = train(_cfg(epochs=6, limit_batches=2, early_stopping={"patience": 2, "min_delta": 1.0}), session)
    assert [r["epoch"] for r in session.reports] == [1, 2, 3]
    assert final["stop_reason"] == "early_stopping"


def test_resume_continues_the_epoch_count_and_the_run(tmp_path):
    cfg = _cfg(epochs=2, limit_batches=4, checkpoint=True, lr_schedule={"name": "cosine"})
    straight = LocalSession(str(tmp_path / "straight"))
    train({**cfg, "train": {**cfg["train"], "epochs": 4}}, straight)
    # Same schedule length, stopped after two epochs: resumed, it must match the straight run.
    first = LocalSession(str(tmp_path / "first"), callback=lambda m, d: _stop_after(m, 2))
    with pytest.raises(_Stop):
        train({**cfg, "train": {**cfg["train"], "epochs": 4}}, first)
    resumed = LocalSession(str(tmp_path / "resumed"))
    train({**cfg, "train": {**cfg["train"], "epochs": 4}}, resumed, resume_from=str(tmp_path / "first" / LAST))
    assert [r["epoch"] for r in resumed.reports] == [3, 4]
    for a, b in zip(straight.reports[2:], resumed.reports):
        for key in ("train_loss", "val_loss", "val_accuracy", "lr", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key
    assert load_checkpoint(tmp_path / "resumed" / LAST)["epoch"] == 4
    # Resumed once more, there is nothing left to train: the finished run is reported again.
    again = LocalSession(str(tmp_path / "resumed"))
    final = train({**cfg, "train": {**cfg["train"], "epochs": 4}}, again, resume_from=str(tmp_path / "resumed" / LAST))
    assert [r["epoch"] for r in again.reports] == [4] and final["stop_reason"] == "completed"
    assert again.reports[0]["val_accuracy"] == pytest.approx(resumed.reports[-1]["val_accuracy"])


class _Recording(LocalSession):
    """A session whose runner recorded reports up to ``recorded`` (a Tune trial's, say)."""

    def __init__(self, root: str, recorded: int | None):
        super().__init__(root)
        self._recorded = recorded

    def recorded_epoch(self) -> int | None:
        return self._recorded


@pytest.mark.parametrize("recorded,replayed", [(1, True), (0, True), (2, False), (None, False)])
def test_a_resumed_run_replays_the_checkpointed_epoch_its_runner_never_recorded(tmp_path, recorded, replayed):
    cfg = _cfg(epochs=3, limit_batches=2, checkpoint=True)
    first = LocalSession(str(tmp_path / "first"), callback=lambda m, d: _stop_after(m, 2))
    with pytest.raises(_Stop):  # epoch 2 is checkpointed, its report lost with the driver
        train(cfg, first)
    again = _Recording(str(tmp_path / "first"), recorded)
    train(cfg, again, resume_from=str(tmp_path / "first" / LAST))
    epochs = [(r["epoch"], r.get("replayed", 0)) for r in again.reports]
    assert epochs == ([(2, 1), (3, 0)] if replayed else [(3, 0)])
    if replayed:  # what was lost, as it was measured then
        assert again.reports[0]["val_accuracy"] == first.reports[1]["val_accuracy"]


class _Stop(Exception):
    pass


def _stop_after(metrics: dict, epoch: int) -> None:
    if metrics["epoch"] == epoch:
        raise _Stop


def test_limit_batches_and_gradient_accumulation(tmp_path):
    # 5 batches in 2-batch groups: 3 optimizer steps an epoch (the last group is partial).
    session = LocalSession(str(tmp_path))
    train(_cfg(epochs=2, limit_batches=5, grad_accum_steps=2, grad_clip_norm=0.5, checkpoint=True), session)
    assert load_checkpoint(tmp_path / LAST)["scheduler_state"]["step"] == 6
    assert all(math.isfinite(r["grad_norm"]) for r in session.reports)


def test_everything_on_at_once():
    cfg = _cfg(epochs=2, limit_batches=3, precision="bf16",
               loss={"name": "focal", "class_weights": "balanced"},
               augment={"hflip": 0.5, "random_crop_padding": 1, "rotation_degrees": 10, "color_jitter": 0.2,
                        "mixup_alpha": 0.2, "cutmix_alpha": 1.0},
               lr_schedule={"name": "onecycle", "warmup_epochs": 0.5})
    cfg["search"] = {"metric": "val_loss", "mode": "min"}
    session = LocalSession()
    final = train(cfg, session)
    assert final["stop_reason"] == "completed" and math.isfinite(final["val_loss"])
    assert [r["epoch"] for r in session.reports] == [1, 2]
    # The best is the lowest val_loss over the epochs, reported with every epoch so far.
    assert [r["best_val_loss"] for r in session.reports] == [
        min(r["val_loss"] for r in session.reports[:n]) for n in (1, 2)]


def test_fp16_needs_a_gpu():
    with pytest.raises(RecipeConfigError, match="fp16 needs a CUDA GPU"):
        train(_cfg(precision="fp16"), LocalSession())


def test_resume_from_a_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError):
        train(_cfg(), LocalSession(), resume_from=str(tmp_path / "nope.pt"))


def test_mnist1d_separates_an_mlp_from_cnn1d_where_digits_does_not(tmp_path):
    # The same short budget (5 epochs, AdamW 3e-3, batch 128) for all three runs.
    def best(dataset: str, model: dict, checkpoint_dir=None) -> float:
        cfg = _cfg(epochs=5, batch_size=128, checkpoint=checkpoint_dir is not None)
        session = LocalSession(checkpoint_dir)
        return train({**cfg, "data": {"dataset": dataset}, "model": model}, session)["best_val_accuracy"]

    mlp = {"name": "mlp", "width": 64, "depth": 2}
    digits_mlp, mnist1d_mlp = best("digits", mlp), best("mnist1d", mlp)
    cnn = best("mnist1d", {"name": "cnn1d", "width": 16, "depth": 2, "kernel_size": 5}, str(tmp_path))
    assert digits_mlp > 0.9 and mnist1d_mlp < 0.75, (digits_mlp, mnist1d_mlp)
    assert cnn > mnist1d_mlp + 0.15, (cnn, mnist1d_mlp)
    # The checkpoint describes a model for (N, 1, 40) signals and rebuilds it.
    model, ckpt = load_model(tmp_path / BEST)
    assert (ckpt["model"]["spatial_dims"], ckpt["model"]["image_size"]) == (1, 40)
    assert model.eval()(torch.zeros(2, 1, 40)).shape == (2, 10)


EXAMPLES = __import__("pathlib").Path(__file__).resolve().parents[2] / "search_spaces" / "examples"


def _text_cfg(**model_args) -> dict:
    return {"seed": 0, "data": {"dataset": "user_text.data:topics", "args": {"n": 600, "vocab_size": 100}},
            "model": {"name": "user_text.models:BagOfEmbeddings", "args": {"vocab_size": 100, **model_args}},
            "train": {"epochs": 3, "batch_size": 32, "checkpoint": True, "optimizer": {"name": "adamw", "lr": 2e-2}},
            "search": {"metric": "val_accuracy", "mode": "max"}}


def test_a_user_data_set_of_token_ids_trains_checkpoints_and_resumes(tmp_path, monkeypatch):
    """The shipped example's data (a plain Dataset of int64 token ids, iterated sample by sample)
    and model, through the same loop, checkpoints and resume as the built-ins."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    session = LocalSession(str(tmp_path / "a"))
    final = train(_text_cfg(), session)
    assert [r["epoch"] for r in session.reports] == [1, 2, 3] and final["val_accuracy"] > 0.6
    model, ckpt = load_model(tmp_path / "a" / LAST, trust_code=True)  # the user's own model
    assert ckpt["model"]["input_shape"] == [24] and ckpt["model"]["num_classes"] == 4
    assert ckpt["recipe"]["data"]["args"] == {"n": 600, "vocab_size": 100}
    # Two epochs, then one more from the checkpoint: the same numbers as three straight.
    cfg = _text_cfg()
    cfg["train"]["epochs"] = 2
    train(cfg, LocalSession(str(tmp_path / "b")))
    resumed = LocalSession(str(tmp_path / "b"))
    train(_text_cfg(), resumed, resume_from=str(tmp_path / "b" / LAST))
    assert [r["epoch"] for r in resumed.reports] == [3]
    assert resumed.reports[0]["val_loss"] == pytest.approx(final["val_loss"], rel=1e-5)


class _ThreeOutputs(torch.nn.Module):
    """A user model whose head ignores num_classes."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.embed = torch.nn.EmbeddingBag(vocab_size, 3)

    def forward(self, tokens):
        return self.embed(tokens)


def test_a_model_with_the_wrong_output_shape_is_a_trial_error_naming_both_shapes(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    cfg = _text_cfg()
    cfg["model"] = {"name": f"{__name__}:_ThreeOutputs", "args": {"vocab_size": 100}}
    with pytest.raises(RecipeConfigError, match=r"a batch of inputs \(32, 24\) gave shape \(32, 3\), but 4 classes "
                                                r"need \(batch, num_classes\) = \(32, 4\); return one logit per class"):
        train(cfg, LocalSession(str(tmp_path)))


def test_a_model_over_a_static_bound_is_measured_and_never_trained(tmp_path):
    cfg = _cfg(epochs=3, checkpoint=True)
    cfg["search"] = {"metric": "val_accuracy", "mode": "max", "constraints": {"params": {"max": 1000}}}
    session = LocalSession(str(tmp_path))
    final = train(cfg, session)
    (report,) = session.reports  # one report, of epoch 0: no epoch was trained
    assert report["epoch"] == 0 and report["stop_reason"].startswith("infeasible: params")
    assert report["params"] > 1000 and report["macs"] > 0 and math.isnan(report["val_accuracy"])
    assert final["stop_reason"] == report["stop_reason"]
    assert not (tmp_path / LAST).exists()  # nothing to checkpoint


def test_a_latency_bound_stops_a_trial_once_measured():
    cfg = _cfg(epochs=3)
    cfg["search"] = {"metric": ["val_accuracy", "latency_ms"], "mode": ["max", "min"],
                     "constraints": {"latency_ms": {"max": 1e-6}}}
    session = LocalSession()
    train(cfg, session)
    assert [r["epoch"] for r in session.reports] == [1]  # trained one epoch, measured, stopped
    assert session.reports[0]["stop_reason"].startswith("infeasible: latency_ms")
    assert session.reports[0]["latency_ms"] > 1e-6
