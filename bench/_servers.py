"""Shared bench helpers: the tests' real servers, worker processes, job functions, timing.

Worker subprocesses import this module (``bench`` is put on their PYTHONPATH) for the job
functions below.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT / "tests"))

from servers import (  # noqa: E402
    PostgresServer,
    RedisServer,
    free_port,
    postgres_server,
    redis_server,
)

BIN = Path(sys.executable).parent
__all__ = ["PostgresServer", "RedisServer", "free_port", "postgres_server", "redis_server"]


def noop() -> None:
    """The no-op job of the throughput benches."""


def sleep_job(seconds: float) -> None:
    time.sleep(seconds)


def write_config(
    path: Path,
    database_url: str,
    redis_url: str | None = None,
    queues: dict[str, dict[str, Any]] | None = None,
    init: bool = True,
    **settings: Any,
) -> Path:
    """Write a jobfleet config file (and, with ``init``, run ``db init`` on its ledger)."""
    import yaml

    raw: dict[str, Any] = {"database_url": database_url, **settings}
    if redis_url is not None:
        raw["redis_url"] = redis_url
    if queues is not None:
        raw["queues"] = queues
    path.write_text(yaml.safe_dump(raw))
    if init:
        from jobfleet.runtime import Runtime
        from jobfleet.schema import init_db

        init_db(Runtime.from_path(str(path)).ledger.engine)
    return path


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages (the machine is shared: report them)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def quick() -> bool:
    return "--quick" in sys.argv or os.environ.get("JOBFLEET_BENCH_QUICK") == "1"


def env(config: Path | None = None) -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(BENCH_DIR), out.get("PYTHONPATH", "")])
    if config is not None:
        out["JOBFLEET_CONFIG"] = str(config)
    return out


def start(argv: list[str], config: Path | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv,
        env=env(config),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def session_members(sid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError, IndexError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) == sid:
                    members.append(int(entry.name))
    return members


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process and its session (as systemd kills a unit's cgroup)."""
    for pid in session_members(proc.pid):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def wait_all(procs: Iterable[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for proc in procs:
        proc.wait(max(1.0, deadline - time.monotonic()))


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def rq_span(redis_url: str, ids: list[str]) -> float:
    """Seconds from the first job's start to the last job's end, from RQ's job hashes."""
    from redis import Redis
    from rq.utils import utcparse

    client = Redis.from_url(redis_url)
    with client.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(f"rq:job:{job_id}", "started_at", "ended_at")
        rows = pipe.execute()
    starts = [utcparse(s.decode()) for s, _ in rows if s]
    ends = [utcparse(e.decode()) for _, e in rows if e]
    if len(ends) != len(ids):
        raise RuntimeError(f"only {len(ends)} of {len(ids)} jobs finished")
    return span(starts, ends)


def span(starts: list[datetime], ends: list[datetime]) -> float:
    return (max(ends) - min(starts)).total_seconds()


def median(values: list[float]) -> float:
    return statistics.median(values)
