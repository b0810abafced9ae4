"""Tune's state kept whole through a crash (raytune_opt/tune_state.py), without a sweep.

The kill-and-resume test (tests/test_resume.py) cuts a real experiment's state short and
resumes it; here the keeping and the repair, case by case.
"""

from __future__ import annotations

import json

import pytest
import ray.cloudpickle as cloudpickle

from raytune_opt.tune_state import KEPT, _Keeper, repair

S1, S2 = "2026-12-02_10-00-00", "2026-12-02_10-05-00"


def _write_session(d, session, n_trials=2):
    d.mkdir(parents=True, exist_ok=True)
    (d / f"experiment_state-{session}.json").write_text(json.dumps({"trial_data": list(range(n_trials))}))
    (d / f"searcher-state-{session}.pkl").write_bytes(cloudpickle.dumps({"trials": n_trials}))
    (d / f"search_gen_state-{session}.pkl").write_bytes(cloudpickle.dumps({"counter": n_trials}))


def _state(exp, session):
    return (json.loads((exp / f"experiment_state-{session}.json").read_text()),
            cloudpickle.loads((exp / f"searcher-state-{session}.pkl").read_bytes()))


def test_the_keeper_copies_a_whole_set_only_when_tune_saved_again(tmp_path):
    staging, exp = tmp_path / "staging", tmp_path / "exp"
    _write_session(staging, S1)
    (staging / "trial_1").mkdir()  # trial artifacts are not Tune's state
    keeper = _Keeper(exp, min_interval_s=0, max_share=1)
    assert keeper.keep(staging)
    [first] = (exp / KEPT).iterdir()
    assert sorted(f.name for f in first.iterdir()) == sorted(f.name for f in staging.iterdir() if f.is_file())
    assert not keeper.keep(staging)  # nothing new
    _write_session(staging, S1, n_trials=3)
    assert keeper.keep(staging)
    [second] = (exp / KEPT).iterdir()  # the older copy is gone
    assert second.name > first.name and _state(second, S1) == ({"trial_data": [0, 1, 2]}, {"trials": 3})


def test_the_keeper_waits_for_tunes_first_save(tmp_path):
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / f"searcher-state-{S1}.pkl").write_bytes(cloudpickle.dumps({}))
    assert not _Keeper(tmp_path / "exp", min_interval_s=0, max_share=1).keep(staging)



def test_the_keeper_lists_the_staging_directory_only_now_and_then(tmp_path, monkeypatch):
    # The staging directory holds a directory per trial: a listing at every step of Tune's
    # loop grew with the trials (benchmarks/sweep_scale.py).
    from raytune_opt import tune_state

    listings = []
    real = tune_state._session_files
    monkeypatch.setattr(tune_state, "_session_files", lambda d: listings.append(d) or real(d))
    staging, exp = tmp_path / "staging", tmp_path / "exp"
    _write_session(staging, S1)
    keeper = _Keeper(exp, min_interval_s=0, max_share=1)
    assert keeper.keep(staging)
    for n in (3, 4):  # later saves of the session are seen without a listing
        _write_session(staging, S1, n_trials=n)
        assert keeper.keep(staging) and not keeper.keep(staging)
    assert len(listings) == 1
    [kept] = (exp / KEPT).iterdir()
    assert _state(kept, S1)[0] == {"trial_data": [0, 1, 2, 3]}
    # A file the session writes later is in the copy once the directory is listed again.
    (staging / f"callback-states-{S1}.pkl").write_bytes(cloudpickle.dumps({"cb": 1}))
    _write_session(staging, S1, n_trials=5)
    monkeypatch.setattr(tune_state, "RELIST_S", 0.0)
    keeper._relist_at = 0.0
    assert keeper.keep(staging) and len(listings) == 2
    [kept] = (exp / KEPT).iterdir()
    assert (kept / f"callback-states-{S1}.pkl").is_file()

def test_repair_leaves_a_readable_state_alone(tmp_path):
    _write_session(tmp_path, S1)
    _write_session(tmp_path, S2, n_trials=3)
    _Keeper(tmp_path, min_interval_s=0, max_share=1).keep(tmp_path)
    before = {f.name: f.read_bytes() for f in tmp_path.iterdir() if f.is_file()}
    assert repair(tmp_path) == []
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir() if f.is_file()} == before


def test_repair_puts_back_the_kept_copy_of_a_state_cut_short(tmp_path):
    _write_session(tmp_path, S1)
    _write_session(tmp_path, S2, n_trials=3)
    _Keeper(tmp_path, min_interval_s=0, max_share=1).keep(tmp_path)
    # The crash: Tune's copy of a newer save stopped half-way through two files.
    for name in (f"searcher-state-{S2}.pkl", f"experiment_state-{S2}.json"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
    notes = repair(tmp_path)
    assert len(notes) == 1 and "last complete copy" in notes[0], notes
    assert _state(tmp_path, S2) == ({"trial_data": [0, 1, 2]}, {"trials": 3})


def test_repair_restores_a_file_the_crash_left_missing(tmp_path):
    _write_session(tmp_path, S1)
    _Keeper(tmp_path, min_interval_s=0, max_share=1).keep(tmp_path)
    (tmp_path / f"searcher-state-{S1}.pkl").unlink()  # killed before Tune's copy reached it
    assert repair(tmp_path)
    assert _state(tmp_path, S1)[1] == {"trials": 2}


def test_repair_sets_aside_an_unreadable_session_without_a_copy(tmp_path):
    _write_session(tmp_path, S1)
    _write_session(tmp_path, S2, n_trials=3)
    (tmp_path / f"searcher-state-{S2}.pkl").write_bytes(b"")  # EOFError: Ran out of input
    notes = repair(tmp_path)
    assert len(notes) == 1 and "set aside" in notes[0], notes
    assert not list(tmp_path.glob(f"*{S2}*"))  # Tune now restores session 1...
    assert _state(tmp_path, S1) == ({"trial_data": [0, 1]}, {"trials": 2})
    aside = tmp_path / KEPT / f"unreadable-{S2}"  # ...and nothing was deleted
    assert sorted(f.name for f in aside.iterdir()) == sorted(
        [f"experiment_state-{S2}.json", f"searcher-state-{S2}.pkl", f"search_gen_state-{S2}.pkl"])


def test_a_pickle_named_json_reads_as_the_pickle_it_is(tmp_path):
    # Ray's BasicVariantGenerator saves basic-variant-state-<session>.json with cloudpickle.
    _write_session(tmp_path, S1)
    (tmp_path / f"basic-variant-state-{S1}.json").write_bytes(cloudpickle.dumps({"variants": 3}))
    assert repair(tmp_path) == []
    (tmp_path / f"basic-variant-state-{S1}.json").write_bytes(cloudpickle.dumps({"variants": 3})[:-3])
    assert "set aside" in repair(tmp_path)[0]


def test_a_resume_in_the_same_second_keeps_its_copy_beside_the_old_ones_name(tmp_path):
    staging, exp = tmp_path / "staging", tmp_path / "exp"
    _write_session(staging, S1)
    assert _Keeper(exp, min_interval_s=0, max_share=1).keep(staging)
    _write_session(staging, S1, n_trials=3)  # another driver, the same session name
    assert _Keeper(exp, min_interval_s=0, max_share=1).keep(staging)
    [kept] = (exp / KEPT).iterdir()
    assert kept.name == f"{S1}.000002" and _state(kept, S1)[1] == {"trials": 3}


def test_a_copy_that_cannot_be_written_warns_once_and_the_sweep_goes_on(tmp_path, capsys):
    from types import SimpleNamespace

    from raytune_opt.tune_state import KeepState

    staging = tmp_path / "staging"
    _write_session(staging, S1)
    (tmp_path / "exp").write_text("a file where the experiment's directory should be")
    cb = KeepState(tmp_path / "exp")
    trial = SimpleNamespace(storage=SimpleNamespace(experiment_driver_staging_path=str(staging)))
    for _ in range(2):
        cb.on_step_end(0, [trial])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "keeping a copy of Ray Tune's state" in err[0] and "the sweep goes on" in err[0], err


def test_repair_puts_back_the_kept_copy_over_files_of_two_saves(tmp_path):
    """Tune's background copy cut between its files (or overlapping the next save): the
    experiment_state of save 2 beside the searcher state of save 1 would make the searcher
    propose a trial the state already has."""
    import os
    import time

    staging = tmp_path / "staging"
    _write_session(staging, S1, n_trials=2)
    exp = tmp_path / "exp"
    _write_session(exp, S1, n_trials=2)
    _write_session(staging, S1, n_trials=3)
    keeper = _Keeper(exp, min_interval_s=0, max_share=1)
    assert keeper.keep(staging)  # the copy of save 2
    (exp / f"experiment_state-{S1}.json").write_bytes((staging / f"experiment_state-{S1}.json").read_bytes())
    assert _state(exp, S1) == ({"trial_data": [0, 1, 2]}, {"trials": 2})  # mixed
    [note] = repair(exp)
    assert "differ from its last complete copy" in note and _state(exp, S1) == ({"trial_data": [0, 1, 2]}, {"trials": 3})
    assert repair(exp) == []  # now one save's
    # A kept copy far older than the live files (the keeping fell behind) is not put back.
    _write_session(exp, S1, n_trials=5)
    [kept] = (exp / KEPT).iterdir()
    old = time.time() - 3600
    os.utime(kept, (old, old))
    assert repair(exp) == [] and _state(exp, S1) == ({"trial_data": [0, 1, 2, 3, 4]}, {"trials": 5})


def test_tunes_last_save_is_kept_when_the_sweep_ends(tmp_path):
    """Tune saves its state once more after its last step (forced, waited for). The copy kept
    during the sweep lags it (copying takes at most a share of the driver's time), and
    repair() would put that older copy back over a finished sweep's state: a resumed sweep
    that search.budget had ended then lost the trials the budget stopped."""
    from types import SimpleNamespace

    from raytune_opt.tune_state import KeepState

    staging, exp = tmp_path / "staging", tmp_path / "exp"
    _write_session(staging, S1, n_trials=2)
    cb = KeepState(exp)
    cb._keeper.min_interval_s = 3600.0  # the copying keeps to its share of the driver's time
    trial = SimpleNamespace(storage=SimpleNamespace(experiment_driver_staging_path=str(staging)))
    cb.on_step_end(0, [trial])
    _write_session(staging, S1, n_trials=3)  # Tune's last save, after its last step
    _write_session(exp, S1, n_trials=3)  # ... synced into the experiment
    cb.on_step_end(1, [trial])  # too soon for another copy
    cb.on_experiment_end([trial])
    assert repair(exp) == [] and _state(exp, S1) == ({"trial_data": [0, 1, 2]}, {"trials": 3})


# --- An S3 experiment: the same keeping and repair, in a bucket (a real S3 server on loopback) ---

@pytest.fixture(scope="module")
def s3():
    from tests.cluster.conftest import S3Server

    server = S3Server()
    yield server
    server.stop()


@pytest.fixture
def bucket_exp(s3, monkeypatch, request):
    from raytune_opt import storage

    for k, v in s3.creds.items():
        monkeypatch.setenv(k, v)
    return storage.from_uri(f"s3://{s3.bucket}/exp/{request.node.name[:40]}", s3.endpoint)


def _upload(loc, *files):
    for f in files:
        with loc.filesystem().open_output_stream(f"{loc.fs_path}/{f.name}") as out:
            out.write(f.read_bytes())


def _bucket_state(loc, session):
    fs_ = loc.filesystem()
    with fs_.open_input_stream(f"{loc.fs_path}/experiment_state-{session}.json") as a, \
            fs_.open_input_stream(f"{loc.fs_path}/searcher-state-{session}.pkl") as b:
        return json.loads(a.read()), cloudpickle.loads(b.read())


@pytest.mark.slow
def test_on_s3_a_kill_between_two_uploads_resumes_from_the_kept_copy(tmp_path, s3, bucket_exp):
    """Ray uploads the staging directory file by file: a driver killed between two uploads
    left save 2's experiment_state beside save 1's searcher state, and a resumed sweep of 4
    random trials ran 5 (CI, 2026-12-02)."""
    from types import SimpleNamespace

    from raytune_opt.tune_state import KeepState, repair_remote

    loc, staging = bucket_exp, tmp_path / "staging"
    _write_session(staging, S1, n_trials=2)
    _upload(loc, *staging.iterdir())  # Ray's sync of save 1
    _write_session(staging, S1, n_trials=3)  # save 2...
    cb = KeepState(tmp_path / "mirror", loc)
    cb.on_step_end(0, [SimpleNamespace(storage=SimpleNamespace(experiment_driver_staging_path=str(staging)))])
    assert s3.keys(f"exp/{loc.local.name}/{KEPT}/") == [f"exp/{loc.local.name}/{KEPT}/{S1}.zip"]
    _upload(loc, staging / f"experiment_state-{S1}.json")  # ...whose sync was cut after one file
    assert _bucket_state(loc, S1) == ({"trial_data": [0, 1, 2]}, {"trials": 2})  # mixed
    [note] = repair_remote(loc)
    assert note.startswith(loc.uri) and "differ from its last complete copy" in note, note
    assert _bucket_state(loc, S1) == ({"trial_data": [0, 1, 2]}, {"trials": 3})
    assert repair_remote(loc) == []  # one save's now: left alone


@pytest.mark.slow
def test_on_s3_an_unreadable_session_without_a_copy_is_set_aside_in_the_bucket(tmp_path, s3, bucket_exp):
    from raytune_opt.tune_state import repair_remote

    loc = bucket_exp
    _write_session(tmp_path, S1)
    _write_session(tmp_path, S2, n_trials=3)
    (tmp_path / f"searcher-state-{S2}.pkl").write_bytes(b"")
    _upload(loc, *tmp_path.iterdir())
    [note] = repair_remote(loc)
    aside = f"{KEPT}/unreadable-{S2}"
    assert f"set aside in {loc.uri}/{aside}" in note, note
    prefix = f"exp/{loc.local.name}/"
    keys = {k.removeprefix(prefix) for k in s3.keys(prefix)}
    assert not {k for k in keys if S2 in k and not k.startswith(aside)}  # Tune now restores session 1
    assert {k for k in keys if k.startswith(aside)} == {
        f"{aside}/experiment_state-{S2}.json", f"{aside}/searcher-state-{S2}.pkl", f"{aside}/search_gen_state-{S2}.pkl"}
    assert _bucket_state(loc, S1) == ({"trial_data": [0, 1]}, {"trials": 2})
