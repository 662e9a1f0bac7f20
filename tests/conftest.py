"""Fixtures: a real redis-server (with a password), a throwaway PostgreSQL cluster,
SQLite files under tmp_path, config files, and worker subprocesses stopped by pid."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from servers import PostgresServer, RedisServer, postgres_server, redis_server, stop_process

from jobfleet.reaper import ReapResult, reap
from jobfleet.runtime import Runtime
from jobfleet.schema import init_db

TESTS_DIR = Path(__file__).resolve().parent
JOBFLEET = str(Path(sys.executable).parent / "jobfleet")


@pytest.fixture(scope="session")
def redis_srv() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture
def redis_url(redis_srv: RedisServer) -> Iterator[str]:
    from redis import Redis

    client = Redis.from_url(redis_srv.url)
    client.flushall()
    yield redis_srv.url
    client.flushall()
    client.close()


@pytest.fixture(scope="session")
def pg_srv() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture
def pg_url(pg_srv: PostgresServer) -> str:
    return pg_srv.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    server: PostgresServer = request.getfixturevalue("pg_srv")
    return server.create_database(f"t_{uuid.uuid4().hex[:12]}")


ConfigFactory = Callable[..., Path]


@pytest.fixture
def make_config(tmp_path: Path) -> ConfigFactory:
    """Write a config file; returns its path. ``db`` is created with ``db init``."""

    def factory(database_url: str, redis_url: str | None = None, **settings: Any) -> Path:
        queues = settings.pop("queues", None)
        if queues is None:
            mode = "rq" if redis_url else "db"
            queues = {"default": {"mode": mode, "max_attempts": 3, "timeout": 60}}
        raw: dict[str, Any] = {
            "database_url": database_url,
            "queues": queues,
            "heartbeat_interval": 0.5,
            "orphan_after": 3,
            "backoff_base": 0.0,
            "backoff_max": 0.0,
            "poll_interval": 0.1,
        }
        if redis_url:
            raw["redis_url"] = redis_url
        raw.update(settings)
        path = tmp_path / f"jobfleet-{uuid.uuid4().hex[:6]}.yml"
        path.write_text(yaml.safe_dump(raw))
        init_db(Runtime.from_path(str(path)).ledger.engine)
        return path

    return factory


def worker_env(config: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["JOBFLEET_CONFIG"] = str(config)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")])
    env.pop("JOBFLEET_REDIS_URL", None)
    env.pop("JOBFLEET_DATABASE_URL", None)
    return env


class Procs:
    """Worker subprocesses started by a test; all stopped (by pid) at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}

    def start(self, config: Path, *args: str) -> subprocess.Popen[bytes]:
        log = self.tmp_path / f"proc-{len(self.procs)}.log"
        with open(log, "wb") as out, open(log.with_suffix(".err"), "wb") as err:
            proc = subprocess.Popen(
                [JOBFLEET, *args],
                env=worker_env(config),
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        self.procs.append(proc)
        self.logs[proc.pid] = log
        return proc

    def worker(self, config: Path, name: str, *extra: str, queues: str = "default") -> Any:
        return self.start(config, "worker", "--queues", queues, "--name", name, *extra)

    def poller(self, config: Path, name: str, *extra: str, queues: str = "default") -> Any:
        return self.start(config, "poll-worker", "--queues", queues, "--name", name, *extra)

    def events(self, proc: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
        """The JSON event lines on stdout (every stdout line must be one)."""
        text = self.logs[proc.pid].read_text()
        complete = text[: text.rfind("\n") + 1]  # a line still being written waits
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        log = self.logs[proc.pid]
        return log.read_text() + log.with_suffix(".err").read_text()

    def kill_tree(self, proc: subprocess.Popen[bytes]) -> list[int]:
        """SIGKILL the process and everything in its session (horse, scheduler), as
        ``systemctl kill --signal=SIGKILL`` does to a unit's cgroup."""
        killed = []
        for pid in session_members(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        proc.wait(10)
        return killed

    def stop_all(self) -> None:
        for proc in self.procs:
            self.kill_tree(proc)
            stop_process(proc)


def session_members(sid: int) -> list[int]:
    """Pids whose session id is ``sid`` (the session leader included)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid:
            members.append(int(entry.name))
    return members


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    group = Procs(tmp_path)
    try:
        yield group
    finally:
        group.stop_all()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def reapers_at_once(cfg: Path, count: int = 2) -> list[ReapResult]:
    """``count`` reaper passes started at the same moment (several hosts' timers), each
    with its own runtime; their results."""
    results: list[ReapResult] = []
    barrier = threading.Barrier(count)

    def one() -> None:
        rt = Runtime.from_path(str(cfg))
        barrier.wait(10)
        results.append(reap(rt))

    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results
