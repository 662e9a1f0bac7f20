"""Behaviour of a fresh deploy: workers run, jobs end honestly, crashes heal, secrets stay put."""

from __future__ import annotations

import itertools
import re
import shlex
import time
from typing import Any

import yaml
from conftest import (
    connect,
    group_hosts,
    jobfleet,
    journal,
    lab_secret,
    unit_property,
    wait_for,
    wait_until,
)

WORKERS = group_hosts("workers")
testinfra_hosts = WORKERS


def definitions(host: Any) -> dict[str, Any]:
    """/etc/jobfleet/workers.yml as written by the workers role."""
    data = yaml.safe_load(host.file("/etc/jobfleet/workers.yml").content_string)
    return dict(data["workers"])


def test_every_worker_instance_is_active_and_runs_as_jobfleet(host: Any) -> None:
    expected = [
        f"jobfleet-{name}@{n}.service"
        for name, spec in definitions(host).items()
        for n in range(1, int(spec["instances"]) + 1)
    ]
    assert expected, "no worker definitions in /etc/jobfleet/workers.yml"
    for unit in expected:
        state = unit_property(host, unit, "ActiveState")
        assert state == "active", f"{unit} is {state}\n{journal(host, unit)}"
        pid = unit_property(host, unit, "MainPID")
        owner = host.run(f"ps -o user= -p {pid}").stdout.strip()
        assert owner == "jobfleet", f"{unit} main process {pid} runs as {owner!r}"


def test_an_enqueued_job_completes(host: Any) -> None:
    queued = jobfleet(host, "enqueue", "shop.jobs:succeed", '"hello"', "--queue", "default")
    assert queued["dispatched"] is True
    row = wait_for(host, queued["id"], "completed", timeout=30)
    assert row["attempts"] == 1
    assert row["finished_at"] is not None


def test_a_fatal_job_fails_after_one_attempt(host: Any) -> None:
    queued = jobfleet(host, "enqueue", "shop.jobs:fatal", "--queue", "default")
    row = wait_for(host, queued["id"], "failed", timeout=30)
    assert row["attempts"] == 1, row
    assert "404" in (row["error"] or ""), row


def test_a_retryable_job_fails_after_max_attempts(host: Any) -> None:
    queued = jobfleet(
        host, "enqueue", "shop.jobs:flaky", "--queue", "default", "--max-attempts", "3"
    )
    row = wait_for(host, queued["id"], "failed", timeout=60)
    assert row["attempts"] == 3, row
    assert row["max_attempts"] == 3, row


def test_job_of_a_killed_worker_completes_after_restart() -> None:
    host = connect(WORKERS[0])
    queued = jobfleet(host, "enqueue", "shop.jobs:sleep", "8", "8", "--queue", "slow")
    row = wait_for(host, queued["id"], "running", timeout=30)
    worker_host, unit = row["worker"].split(":", 1)
    target = connect(worker_host)
    pid = unit_property(target, unit, "MainPID")
    restarts = int(unit_property(target, unit, "NRestarts"))
    assert int(pid) > 0, f"{unit} has no main process"
    target.run_expect([0], f"kill -9 {pid}")
    started = time.monotonic()
    wait_until(
        lambda: (
            int(unit_property(target, unit, "NRestarts")) > restarts
            and unit_property(target, unit, "ActiveState") == "active"
        ),
        timeout=30,
        what=f"systemd restarts {unit} on {worker_host}",
        host=target,
    )
    left = 40 - (time.monotonic() - started)
    # With KillMode=mixed the work horse may finish the job (attempt 1) before the unit
    # restarts; otherwise startup cleanup requeues it (attempt 2). Either way it completes.
    done = wait_for(host, queued["id"], "completed", timeout=max(left, 1))
    assert done["first_started_at"] is not None


def test_the_reaper_timer_fires_every_ten_seconds() -> None:
    host = connect(WORKERS[0])
    time.sleep(35)
    out = host.run(
        "journalctl --no-pager -o short-unix -u jobfleet-reap.service --since -35s"
    ).stdout
    starts = [float(line.split()[0]) for line in out.splitlines() if "Starting" in line]
    assert len(starts) >= 3, f"{len(starts)} reaper runs in 35 s\n{out}"
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(8.5 <= gap <= 13.5 for gap in gaps), f"gaps {gaps}\n{out}"
    assert unit_property(host, "jobfleet-reap.service", "Result") == "success", journal(
        host, "jobfleet-reap.service"
    )


def test_redis_refuses_unauthenticated_commands() -> None:
    host = connect(group_hosts("redis")[0])
    address = host.ansible("setup", "gather_subset=network")["ansible_facts"][
        "ansible_default_ipv4"
    ]["address"]
    for bind in ("127.0.0.1", address):
        cmd = host.run(f"redis-cli -h {bind} ping")
        assert "NOAUTH" in cmd.stdout + cmd.stderr, f"{bind}: {cmd.stdout} {cmd.stderr}"
    conf = host.file("/etc/redis/redis.conf")
    assert conf.mode == 0o640


def test_config_is_private_and_the_passwords_stay_out_of_the_journal(host: Any) -> None:
    config = host.file("/etc/jobfleet/jobfleet.yml")
    assert (config.user, config.group, config.mode) == ("root", "jobfleet", 0o640)
    for secret in ("redis_password", "pg_password"):
        password = lab_secret(secret)
        assert password in config.content_string, f"the config should hold the {secret}"
        for name in group_hosts("jobfleet"):
            found = connect(name).run(
                f"journalctl --no-pager -o cat | grep -c -F -- {shlex.quote(password)}"
            )
            assert found.stdout.strip() == "0", f"{secret} in the journal of {name}"


def test_worker_units_are_hardened(host: Any) -> None:
    for name in definitions(host):
        unit = f"jobfleet-{name}@1.service"
        out = host.run(f"systemd-analyze security --no-pager {unit}").stdout
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
        assert match, out
        assert float(match.group(1)) <= 3.0, out
