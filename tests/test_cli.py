"""CLI contract (docs/contracts.md): each --json shape, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import JOBFLEET, ConfigFactory, worker_env
from servers import free_port
from sqlalchemy import update

from jobfleet.cli import COMMANDS, build_parser, main
from jobfleet.ledger import SHOW_KEYS
from jobfleet.schema import STATUSES, jobs, utcnow

pytestmark = pytest.mark.timeout(60)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    data = json.loads(out) if out.strip() and "--json" in argv else out
    return code, data, err


def one_line_error(err: str, command: str) -> None:
    assert err.count("\n") == 1 and err.startswith(f"jobfleet {command}: "), err
    assert "Traceback" not in err and "s3cret" not in err


@pytest.fixture
def cfg(make_config: ConfigFactory, sqlite_url: str, redis_url: str) -> str:
    return str(make_config(sqlite_url, redis_url))


def test_db_init_json(capsys: pytest.CaptureFixture[str], tmp_path: Path, redis_url: str) -> None:
    path = tmp_path / "c.yml"
    path.write_text(
        yaml.safe_dump({"database_url": f"sqlite:///{tmp_path}/l.db", "redis_url": redis_url})
    )
    code, data, _ = run(capsys, "db", "init", "--config", str(path), "--json")
    assert (code, data) == (0, {"schema_version": 2, "changed": True})
    code, data, _ = run(capsys, "db", "init", "--config", str(path), "--json")
    assert (code, data) == (0, {"schema_version": 2, "changed": False})


def test_enqueue_show_cancel_retry_json(cfg: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, data, _ = run(
        capsys,
        "enqueue",
        "jobhelpers.add",
        "2",
        "3",
        "--config",
        cfg,
        "--json",
        "--id",
        "job-1",
        "--max-attempts",
        "5",
    )
    assert code == 0
    assert data == {"id": "job-1", "queue": "default", "dispatched": True}
    code, row, _ = run(capsys, "job", "show", "job-1", "--config", cfg, "--json")
    assert code == 0 and sorted(row) == sorted(SHOW_KEYS) and len(SHOW_KEYS) == 19
    assert (row["func"], row["args"], row["kwargs"]) == ("jobhelpers:add", [2, 3], {})
    assert (row["status"], row["max_attempts"], row["mode"]) == ("pending", 5, "rq")
    assert row["created_at"].endswith("Z") and row["finished_at"] is None
    code, _, err = run(capsys, "job", "retry", "job-1", "--config", cfg, "--json")
    assert code == 1
    one_line_error(err, "job")
    code, row, _ = run(capsys, "job", "cancel", "job-1", "--config", cfg, "--json")
    assert (code, row["status"], row["error_kind"]) == (0, "cancelled", "cancelled")
    code, row, _ = run(capsys, "job", "retry", "job-1", "--config", cfg, "--json")
    assert (code, row["status"], row["attempts"], row["dispatched"]) == (0, "pending", 0, True)


def test_enqueue_user_errors_are_one_line_exit_2(
    cfg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (
        ("enqueue", "jobhelpers:add", "{not json"),
        ("enqueue", "jobhelpers:add", "--kwargs", "[1]"),
        ("enqueue", "jobhelpers:no_such_function"),
        ("enqueue", "no_such_module_xyz:f"),
        ("enqueue", "jobhelpers:add", "--queue", "nope"),
        ("enqueue", "not a function"),
    ):
        code, _, err = run(capsys, *argv, "--config", cfg, "--json")
        assert code == 2, argv
        one_line_error(err, "enqueue")


def test_unknown_job_id_is_exit_1(cfg: str, capsys: pytest.CaptureFixture[str]) -> None:
    for action in ("show", "retry", "cancel"):
        code, out, err = run(capsys, "job", action, "nope", "--config", cfg, "--json")
        assert code == 1 and out == ""
        one_line_error(err, "job")
        assert "no job nope" in err


def test_status_health_reap_cleanup_prune_json(
    cfg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "enqueue", "jobhelpers:add", "1", "1", "--config", cfg, "--id", "a", "--json")
    code, data, _ = run(capsys, "status", "--config", cfg, "--json")
    assert code == 0 and set(data) == {"queues", "oldest_pending_age", "stale_running"}
    assert data["queues"]["default"] == {s: (1 if s == "pending" else 0) for s in STATUSES}
    assert data["oldest_pending_age"] >= 0 and data["stale_running"] == []
    code, data, _ = run(capsys, "health", "--config", cfg, "--json")
    assert (code, data) == (0, {"healthy": True, "redis": True, "database": True, "stuck": []})

    from jobfleet.runtime import Runtime

    ledger = Runtime.from_path(cfg).ledger
    assert ledger.claim("a", "h:w@1.service") is not None
    with ledger.engine.begin() as conn:
        old = utcnow() - timedelta(seconds=600)
        conn.execute(update(jobs).where(jobs.c.id == "a").values(heartbeat_at=old))
    code, data, _ = run(capsys, "status", "--config", cfg, "--json")
    assert data["stale_running"] == ["a"]
    code, data, _ = run(capsys, "health", "--config", cfg, "--json")
    assert (code, data["healthy"], data["stuck"]) == (1, False, ["a"])
    code, data, err = run(capsys, "reap", "--config", cfg, "--json")
    assert (code, data) == (0, {"requeued": ["a"], "failed": [], "redispatched": []})
    assert '"event":"JOB_REQUEUED"' in err  # events on stderr; stdout is one object
    code, data, _ = run(
        capsys, "startup-cleanup", "--name", "h:w@1.service", "--config", cfg, "--json"
    )
    assert (code, data) == (0, {"worker": "h:w@1.service", "requeued": [], "failed": []})
    code, data, _ = run(capsys, "prune", "--older-than", "30d", "--config", cfg, "--json")
    assert (code, data) == (0, {"deleted": 0})
    code, _, err = run(capsys, "prune", "--older-than", "soon", "--config", cfg, "--json")
    assert code == 2
    one_line_error(err, "prune")


def test_redis_down_enqueue_succeeds_health_fails(
    make_config: ConfigFactory, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    cfg = str(make_config(sqlite_url, dead))
    code, data, _ = run(capsys, "enqueue", "jobhelpers:add", "1", "2", "--config", cfg, "--json")
    assert code == 0 and data["dispatched"] is False
    code, data, _ = run(capsys, "health", "--config", cfg, "--json")
    assert (code, data["healthy"], data["redis"], data["database"]) == (1, False, False, True)
    code, _, err = run(capsys, "worker", "--queues", "default", "--name", "w", "--config", cfg)
    assert code == 1
    one_line_error(err, "worker")
    assert "redis unreachable" in err
    # Rolled back to database polling: no queue needs Redis any more.
    code, data, _ = run(capsys, "queue", "set-mode", "default", "db", "--config", cfg, "--json")
    assert code == 0, data
    code, data, _ = run(capsys, "health", "--config", cfg, "--json")
    assert (code, data["healthy"], data["redis"], data["database"]) == (0, True, False, True)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "does not exist"),
        ("database_url: sqlite:///x.db\nqueues: {q: {mode: db}}\ncolour: red\n", "unknown key"),
        ("database_url: mysql://h/db\nqueues: {q: {mode: db}}\n", "bad URL"),
        (
            "database_url: sqlite:///x.db\nqueues: {q: {mode: db}}\norphan_after: soon\n",
            "orphan_after",
        ),
        ("database_url: sqlite:///x.db\nqueues: {q: {mode: fast}}\n", "mode"),
        ("database_url: sqlite:///x.db\n", "redis_url is required"),
        ("queues: [\n", "malformed YAML"),
    ],
)
def test_config_errors_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, needle: str
) -> None:
    path = tmp_path / "jobfleet.yml"
    if content is not None:
        path.write_text(content)
    code, _, err = run(capsys, "status", "--config", str(path), "--json")
    assert code == 2
    one_line_error(err, "status")
    assert needle in err


def test_env_overrides_the_database_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "jobfleet.yml"
    path.write_text("database_url: sqlite:////nonexistent/dir/x.db\nqueues: {q: {mode: db}}\n")
    monkeypatch.setenv("JOBFLEET_CONFIG", str(path))
    monkeypatch.setenv("JOBFLEET_DATABASE_URL", f"sqlite:///{tmp_path}/env.db")
    code, data, _ = run(capsys, "db", "init", "--json")
    assert (code, data["changed"]) == (0, True)
    assert (tmp_path / "env.db").exists()


def test_unreachable_database_is_one_line_through_the_real_script(tmp_path: Path) -> None:
    path = tmp_path / "jobfleet.yml"
    url = f"postgresql://u:s3cret@127.0.0.1:{free_port()}/db"
    path.write_text(yaml.safe_dump({"database_url": url, "queues": {"q": {"mode": "db"}}}))
    for argv in (["status", "--json"], ["reap"], ["job", "show", "x"]):
        done = subprocess.run(
            [JOBFLEET, *argv, "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            env=worker_env(path),
        )
        assert done.returncode == 1 and done.stdout == ""
        one_line_error(done.stderr, argv[0])
        assert "database unreachable" in done.stderr


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_is_registered_by_the_module_that_routes_it(command: str) -> None:
    # A run imports only its command's module, so a wrong COMMANDS entry would break it.
    parser = build_parser([command])
    assert command in parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(parser._subparsers._group_actions[0].choices) <= set(COMMANDS)  # type: ignore[union-attr]


def test_python_dash_m_runs_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "jobfleet.cli", "affected", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "--workers" in done.stdout
