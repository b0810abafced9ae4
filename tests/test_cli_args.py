"""Command-line parsing: ``key=value`` overrides anywhere after the subcommand (fast, no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest

from raytune_opt import cli

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "search_spaces" / "digits_cnn.yaml")


@pytest.mark.parametrize("argv, overrides", [
    (["validate", DIGITS, "--quiet", "name=x"], ["name=x"]),
    (["validate", "--quiet", DIGITS, "name=x", "--local", "train.epochs=2"], ["name=x", "train.epochs=2"]),
    (["run", DIGITS, "--dry-run", "name=x"], ["name=x"]),
    (["run", DIGITS, "a=1", "--storage", "/x", "b=2", "--dry-run", "a=3"], ["a=1", "b=2", "a=3"]),
    (["submit", DIGITS, "--address", "http://h:8265", "name=x", "--follow", "search.num_samples=2"],
     ["name=x", "search.num_samples=2"]),
])
def test_overrides_anywhere_keep_their_order_and_flag_values_stay_flag_values(argv, overrides):
    args = cli.parse_args(argv)
    assert args.spec == DIGITS
    assert args.overrides == overrides
    if "--storage" in argv:
        assert args.storage == "/x"  # a flag's value is never an override


def test_validate_applies_an_override_given_after_a_flag(capsys):
    assert cli.main(["validate", DIGITS, "--quiet", "name=after_flag", "search.num_samples=3"]) == 0
    out = capsys.readouterr().out
    assert "3 trial(s)" in out
    assert cli.main(["validate", DIGITS, "name=after_flag"]) == 0
    assert "name: after_flag" in capsys.readouterr().out


def test_a_bad_override_after_a_flag_stops_run_before_anything_starts(tmp_path, capsys):
    rc = cli.main(["run", DIGITS, "--dry-run", "train.epochs=many", "--storage", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("override 'train.epochs=many': train.epochs: must be an integer")
    assert not (tmp_path / "out").exists()


def test_submit_validates_and_passes_overrides_given_after_flags(monkeypatch):
    from raytune_opt import jobs

    seen = {}
    monkeypatch.setattr(jobs, "submit", lambda spec, overrides, address, **kw: seen.update(
        spec=spec, overrides=list(overrides), address=address, **kw) or 0)
    assert cli.main(["submit", DIGITS, "--address", "http://127.0.0.1:8265", "--no-wait", "name=late",
                     "--storage", "/shared/r", "train.epochs=2"]) == 0
    assert seen["overrides"] == ["name=late", "train.epochs=2"] and seen["storage"] == "/shared/r"
    seen.clear()
    assert cli.main(["submit", DIGITS, "--address", "http://127.0.0.1:8265", "--no-wait",
                     "train.epochs=zero"]) == 2  # validated here: never submitted
    assert seen == {}


def test_a_stray_word_is_one_line_exit_2(capsys):
    assert cli.main(["validate", DIGITS, "--quiet", "train.epochs"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "an override must be key=value" in err[0]


@pytest.mark.parametrize("argv, fragment", [
    (["resume", "/tmp/exp", "name=x"], "resume takes no key=value overrides (got name=x)"),
    (["promote", "/tmp/exp", "--targets", "onnx", "train.epochs=2"], "promote takes no key=value overrides"),
    (["report", "/tmp/exp", "name=x"], "report takes no key=value overrides"),
    (["validate", DIGITS, "name=x", "--fast"], "unrecognized arguments: --fast"),
])
def test_refusals_are_one_line_exit_2(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and fragment in err[0], err


def test_every_subcommand_either_takes_overrides_or_says_why_not():
    commands = set(cli.COMMANDS)
    assert commands == set(cli.TAKES_OVERRIDES) | set(cli.NO_OVERRIDES)
    assert not set(cli.TAKES_OVERRIDES) & set(cli.NO_OVERRIDES)


def test_run_without_a_spec_says_only_that_the_spec_is_required(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(["run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1, err
    assert "the following arguments are required: spec;" in err[0] and "key=value" not in err[0]
    assert cli.parse_args(["run", DIGITS]).overrides == []  # overrides stay optional


def test_promote_targets_help_lists_every_promotion_step(capsys):
    from raytune_opt import registry

    with pytest.raises(SystemExit):
        cli.parse_args(["promote", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"comma-separated subset of {','.join(registry.PROMOTION_STEPS)} " in out
    assert {"prune", "distill", "onnx", "int8", "tensorrt"} <= set(registry.PROMOTION_STEPS)
