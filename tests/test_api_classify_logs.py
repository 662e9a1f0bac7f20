"""The application API, error classification, backoff and the log line format."""

from __future__ import annotations

import io
import json
import zlib
from pathlib import Path

import pytest
from conftest import ConfigFactory
from jobhelpers import HTTPError, StatusError
from rq.timeouts import JobTimeoutException

import jobfleet
from jobfleet.classify import classify
from jobfleet.errors import JobfleetError, UsageError
from jobfleet.logs import KEYS, emit
from jobfleet.runner import backoff_delay
from jobfleet.runtime import Runtime

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 422])
def test_client_errors_are_fatal(status: int) -> None:
    assert classify(HTTPError(status)).fatal
    assert classify(StatusError(status)).kind == f"http_{status}"


@pytest.mark.parametrize("status", [500, 502, 503, 429, 408])
def test_server_errors_are_retryable(status: int) -> None:
    assert not classify(HTTPError(status)).fatal


def test_other_classifications() -> None:
    assert classify(jobfleet.FatalError("no")).fatal
    assert classify(JobTimeoutException("slow")) == classify(JobTimeoutException())
    assert classify(JobTimeoutException()).kind == "timeout"
    assert not classify(JobTimeoutException()).fatal
    assert not classify(ConnectionError()).fatal
    assert classify(KeyError("k"), ["builtins.KeyError"]).fatal
    assert classify(KeyError("k"), ["builtins.LookupError"]).fatal  # base classes count
    assert not classify(KeyError("k"), ["builtins.ValueError"]).fatal


def test_backoff_is_full_jitter_capped() -> None:
    delays = [backoff_delay(3, 1.0, 60.0) for _ in range(2000)]
    assert 0 <= min(delays) < 1 and 7 < max(delays) <= 8
    assert max(backoff_delay(20, 1.0, 60.0) for _ in range(200)) <= 60


def test_log_line_has_exactly_the_keys_and_no_password() -> None:
    out = io.StringIO()
    emit("JOB_FAILED", stream=out, job_id="j", error="cannot reach redis://:hunter2@host:6379/0")
    record = json.loads(out.getvalue())
    assert tuple(record) == KEYS
    assert "hunter2" not in out.getvalue()
    with pytest.raises(ValueError):
        emit("JOB_FAILED", stream=out, args=[1])


def test_api_enqueue_and_progress_outside_a_job(
    make_config: ConfigFactory,
    sqlite_url: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    cfg = make_config(sqlite_url, redis_url)
    monkeypatch.setenv("JOBFLEET_CONFIG", str(cfg))
    jobfleet.configure()
    job_id = jobfleet.enqueue("jobhelpers:add", 1, 2, queue="default", max_attempts=4, b_kw=None)
    row = Runtime.from_path(str(cfg)).ledger.require(job_id)
    assert (row.func, row.max_attempts, row.call_args()) == (
        "jobhelpers:add",
        4,
        ([1, 2], {"b_kw": None}),
    )
    with pytest.raises(UsageError, match="JSON"):
        jobfleet.enqueue("jobhelpers:add", object())
    with pytest.raises(UsageError, match="already exists"):
        jobfleet.enqueue("jobhelpers:add", 1, 2, job_id=job_id)
    with pytest.raises(JobfleetError, match="outside"):
        jobfleet.progress(10)
    from rq.job import Job
    from rq.serializers import JSONSerializer

    rq_job = Job.fetch(
        job_id, connection=Runtime.from_path(str(cfg)).redis, serializer=JSONSerializer
    )
    assert rq_job.func_name == "jobhelpers.add" and rq_job.args == [1, 2]
    raw = Runtime.from_path(str(cfg)).redis.hget(Job.key_for(job_id), "data")
    assert raw is not None
    payload = json.loads(zlib.decompress(raw))  # RQ's JSONSerializer, never pickle
    assert payload[0] == "jobhelpers.add"
