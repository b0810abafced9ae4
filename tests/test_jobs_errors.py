"""`submit`'s error handling without a cluster: what the Job SDK raises is a user error, our bugs are not (fast)."""

from __future__ import annotations

from pathlib import Path

import pytest

from raytune_opt import jobs
from raytune_opt.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]


def _client_raising(monkeypatch, exc):
    import ray.job_submission

    class Client:
        def __init__(self, address):
            raise exc

    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", Client)


@pytest.mark.parametrize("exc", [ConnectionError("Failed to connect to Ray at address: http://h:8265."),
                                 RuntimeError("Request failed with status code 500")])
def test_what_the_sdk_raises_for_a_cluster_is_one_line(monkeypatch, exc):
    _client_raising(monkeypatch, exc)
    with pytest.raises(UsageError, match=r"--address http://127.0.0.1:8265: the cluster did not take the job \("):
        jobs.submit("search_spaces/digits_cnn.yaml", [], "http://127.0.0.1:8265", storage=None, follow=False,
                    no_wait=True, working_dir=str(ROOT), dry_run=False)


def test_a_bug_of_ours_is_not_reported_as_a_refusing_cluster(monkeypatch):
    _client_raising(monkeypatch, TypeError("submit_job() got an unexpected keyword argument 'entrypoint_resources'"))
    with pytest.raises(TypeError):
        jobs.submit("search_spaces/digits_cnn.yaml", [], "http://127.0.0.1:8265", storage=None, follow=False,
                    no_wait=True, working_dir=str(ROOT), dry_run=False)
