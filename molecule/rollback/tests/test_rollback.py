"""Issue 6 on real hosts: rollback to database polling and roll-forward, nothing lost.

converge deployed examples/shop with every queue in rq mode; worker1 runs the definition
``backup`` (queues backup, default; 2 instances), ``reports`` (reports, slow; 1) and the
Celery worker ``catalog`` (queue catalog, mode celery), which no rollback or roll-forward
touches: its mode stays celery and its process is never restarted. These
tests run in file order, each on top of the previous one, and drive the real playbooks with
ansible-playbook. Every job is ``shop.jobs:record TOKEN`` under the job id TOKEN (it appends
``host TOKEN`` to a side-effect file) unless it is a sleep that keeps a worker busy, so a
test counts the side effects of its own tokens: each exactly once.
  1. planned rollback of backup and default with 1,000 jobs waiting and 2 running;
  2. roll-forward: everything back to RQ, new jobs through the RQ workers;
  3. partial rollback of backup only: its jobs run in the poller unit while default's run
     in the RQ unit of the same definition, at the same time;
  4. emergency rollback of default with a 30 s job in flight;
  5. a rollback whose migrate step is killed halfway (JOBFLEET_MIGRATE_PAUSE_AFTER), then
     run again; then check mode changes nothing;
  6. an emergency rollback of reports and slow with Redis stopped and 40 jobs in it: the
     ledger alone moves them, the report names them unconfirmed, the poller runs each once.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections import Counter
from typing import Any

import pytest
from conftest import (
    APP_DIR,
    connect,
    group_hosts,
    journal,
    lab_secret,
    playbook,
    start_playbook,
    wait_until,
)

WORKER = group_hosts("workers")[0]
DATA = group_hosts("redis")[0]
SIDE_EFFECTS = "/var/lib/jobfleet/shop-side-effects.log"
PYTHON = f"{APP_DIR}/current/venv/bin/python"
CLI = f"{APP_DIR}/current/venv/bin/jobfleet"
#: Distinguishes this run's tokens from an earlier run's on the same hosts.
RUN = f"r{int(time.time())}"
RQ_UNIT = re.compile(r":jobfleet-backup@[0-9]+\.service$")
POLL_UNIT = re.compile(r":jobfleet-backup-poll@[0-9]+\.service$")

#: Host-side helper: enqueue jobs (argv: JSON list of [func, args, queue, job_id]), or print
#: the ledger rows whose id starts with a prefix (argv: --rows PREFIX).
HOST_SCRIPT = """
import json, sys
import jobfleet
if sys.argv[1] == "--rows":
    from jobfleet.runtime import Runtime
    from jobfleet.schema import jobs
    rt = Runtime.from_path(None)
    rows = rt.ledger.select_rows(jobs.c.id.like(sys.argv[2] + "%"), limit=100000)
    print(json.dumps({r.id: r.public() for r in rows}))
else:
    for func, args, queue, job_id in json.loads(sys.stdin.read()):
        jobfleet.enqueue(func, *args, queue=queue, job_id=job_id)
"""


def sh(host: str, script: str, timeout: float = 120, stdin: str | None = None) -> str:
    """Run a shell script in a container (docker exec); its stdout, failing on rc != 0."""
    argv = ["docker", "exec", "-i", host, "sh", "-c", script]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, input=stdin
    )
    assert done.returncode == 0, f"{host}: {script}\n{done.stdout}{done.stderr}"
    return done.stdout


def as_service(args: str) -> str:
    return f"runuser -u jobfleet -- {args}"


def enqueue(jobs: list[tuple[str, list[Any], str, str]]) -> None:
    """Enqueue (func, args, queue, job_id) in one process on the worker host."""
    script = as_service(f"{PYTHON} -c {shlex.quote(HOST_SCRIPT)} --enqueue")
    sh(WORKER, script, stdin=json.dumps(jobs))


def records(prefix: str, queues: list[str], count: int) -> list[tuple[str, list[Any], str, str]]:
    """``count`` record jobs round-robin on ``queues``; each job id is its token."""
    out = []
    for i in range(count):
        token = f"{prefix}-{i:04d}"
        out.append(("shop.jobs:record", [token], queues[i % len(queues)], token))
    return out


def rows(prefix: str) -> dict[str, dict[str, Any]]:
    """Ledger rows whose id starts with ``prefix``."""
    script = as_service(f"{PYTHON} -c {shlex.quote(HOST_SCRIPT)} --rows {prefix}")
    data = json.loads(sh(WORKER, script))
    assert isinstance(data, dict)
    return data


def side_effects(prefix: str) -> Counter[str]:
    """How often each token with ``prefix`` left its side effect."""
    text = sh(WORKER, f"cat {SIDE_EFFECTS} 2>/dev/null || true")
    return Counter(
        parts[1]
        for parts in (line.split() for line in text.splitlines())
        if len(parts) > 1 and parts[1].startswith(prefix)
    )


def wait_done(prefix: str, count: int, timeout: float = 240) -> dict[str, dict[str, Any]]:
    """Wait until ``count`` rows of ``prefix`` are terminal; every one completed, each
    token's side effect seen exactly once. The rows then."""
    found: dict[str, dict[str, Any]] = {}

    def terminal() -> bool:
        found.clear()
        found.update(rows(prefix))
        done = [r for r in found.values() if r["status"] in ("completed", "failed", "cancelled")]
        return len(found) == count and len(done) == count

    wait_until(terminal, timeout, f"{count} jobs {prefix}-* finished", connect(WORKER))
    bad = {k: (r["status"], r["error"]) for k, r in found.items() if r["status"] != "completed"}
    assert not bad, f"jobs that did not complete: {bad}"
    ran = side_effects(prefix)
    records_ = [k for k, r in found.items() if r["func"] == "shop.jobs:record"]
    twice = {t: n for t, n in ran.items() if n != 1}
    assert not twice, f"tokens that ran more than once: {twice}"
    assert set(ran) == set(records_), (
        f"missing side effects: {sorted(set(records_) - set(ran))[:10]}"
    )
    return found


def report(out: str) -> dict[str, Any]:
    """The msg of the playbook's Report task (the default callback prints it as JSON)."""
    at = out.rfind("TASK [Report]")
    assert at >= 0, out[-3000:]
    start = out.index("=> {", at) + 3
    data, _ = json.JSONDecoder().raw_decode(out[start:])
    msg = data["msg"]
    assert isinstance(msg, dict)
    print(json.dumps(msg, indent=1))
    return msg


def modes() -> dict[str, str]:
    data = json.loads(sh(WORKER, as_service(f"{CLI} queue list --json")))
    return {q: m["mode"] for q, m in data["queues"].items()}


CELERY_UNIT = "jobfleet-catalog@1.service"


def celery_pid() -> str:
    """MainPID of the Celery worker catalog (its queue is never moved)."""
    pid = sh(WORKER, f"systemctl show -p MainPID --value {CELERY_UNIT}").strip()
    assert pid.isdigit() and pid != "0", f"{CELERY_UNIT} is not running: {pid!r}"
    return pid


def loaded_units() -> dict[str, str]:
    """Loaded jobfleet worker instance units on the worker host -> active state."""
    out = sh(WORKER, "systemctl list-units --all --plain --no-legend 'jobfleet-*@*.service'")
    units = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[1] == "loaded":
            units[parts[0]] = parts[2]
    return units


def exec_start(unit: str) -> str:
    return sh(WORKER, f"systemctl show -p ExecStart --value {unit}")


def wait_running(job_ids: list[str], timeout: float = 60) -> None:
    def running() -> bool:
        found = rows(job_ids[0].rsplit("-", 1)[0])
        return all(found.get(j, {}).get("status") == "running" for j in job_ids)

    wait_until(running, timeout, f"jobs {job_ids} running", connect(WORKER))


def busy_jobs(prefix: str, seconds: int) -> list[str]:
    """A sleep job on backup and one on default, both running (one per instance)."""
    busy = [f"{prefix}-busy-{q}" for q in ("backup", "default")]
    enqueue(
        [("shop.jobs:sleep", [seconds, 5], q, f"{prefix}-busy-{q}") for q in ("backup", "default")]
    )
    wait_running(busy)
    return busy


@pytest.fixture(scope="module")
def state() -> dict[str, Any]:
    """Which steps passed: a step whose predecessor failed fails at once."""
    return {}


def needs(state: dict[str, Any], step: str) -> None:
    if not state.get(step):
        pytest.fail(f"needs step {step!r}, which did not pass; read that step's failure first")


@pytest.mark.timeout(900)
def test_planned_rollback_of_1000_jobs_runs_each_once(state: dict[str, Any]) -> None:
    assert {m for q, m in modes().items() if q in ("backup", "default")} == {"rq"}
    assert modes()["catalog"] == "celery"
    state["celery_pid"] = celery_pid()
    prefix = f"{RUN}-planned"
    # Both RQ instances busy with a 45 s job, so the 1,000 records wait in RQ (the RQ workers
    # may take some between the end of those jobs and their stop, on a slow machine).
    busy = busy_jobs(prefix, 45)
    enqueue(records(prefix, ["backup", "default"], 1000))
    out = playbook("playbooks/rollback.yml", "-e", "jobfleet_rollback_queues=backup,default")
    msg = report(out)
    assert msg["verification"].startswith("ok"), msg
    assert msg["backup_verified"] is True, msg
    assert sorted(msg["moved"]) == ["backup", "default"], msg
    moved = sum(r["moved"] for r in msg["moved"].values())
    assert all(r["ok"] and r["created"] == 0 for r in msg["moved"].values()), msg
    assert {q: m for q, m in modes().items() if q in ("backup", "default")} == {
        "backup": "db",
        "default": "db",
    }
    found = wait_done(prefix, 1002)
    for job_id in busy:  # warm stop: the running jobs finished in the RQ workers, once
        assert found[job_id]["attempts"] == 1, found[job_id]
        assert RQ_UNIT.search(found[job_id]["worker"]), found[job_id]
    polled = [r for k, r in found.items() if k not in busy and POLL_UNIT.search(r["worker"])]
    by_rq = [r for k, r in found.items() if k not in busy and RQ_UNIT.search(r["worker"])]
    print(f"planned: {moved} jobs moved and run by the pollers, {len(by_rq)} ran in RQ before")
    assert len(polled) == moved and len(polled) + len(by_rq) == 1000, (len(polled), len(by_rq))
    assert moved >= 500, f"only {moved} of 1,000 jobs were still waiting at the rollback"
    assert all(r["mode"] == "db" and r["attempts"] == 1 for r in polled)
    backup = msg["backup"]
    manifest = json.loads(sh(WORKER, f"cat {backup}/manifest.json"))
    counted = sum(manifest["files"][f"rq-{q}-queued.jsonl"]["count"] for q in ("backup", "default"))
    assert counted == moved, manifest
    units = loaded_units()
    assert not any(u.startswith("jobfleet-backup@") for u in units), units
    assert {u: s for u, s in units.items() if u.startswith("jobfleet-backup-poll@")} == {
        "jobfleet-backup-poll@1.service": "active",
        "jobfleet-backup-poll@2.service": "active",
    }, units
    assert "--queues backup,default" in exec_start("jobfleet-backup-poll@1.service")
    assert "poll-worker" in exec_start("jobfleet-backup-poll@1.service")
    # A second run has nothing left to move and changes nothing.
    again = report(
        playbook("playbooks/rollback.yml", "-e", "jobfleet_rollback_queues=backup,default")
    )
    assert again["verification"] == "nothing to move" and again["moved"] == {}, again
    state["planned"] = True


@pytest.mark.timeout(900)
def test_rollforward_returns_everything_to_rq(state: dict[str, Any]) -> None:
    needs(state, "planned")
    prefix = f"{RUN}-forward"
    busy_jobs(prefix, 45)  # both pollers busy: the next jobs stay pending
    enqueue(records(f"{prefix}-a", ["backup", "default"], 200))  # pending db rows
    out = playbook("playbooks/rollforward.yml")  # default: every queue in db mode
    msg = report(out)
    assert sorted(msg["queues"]) == ["backup", "default"], msg  # never catalog (celery)
    assert msg["verification"].startswith("ok"), msg
    moved = sum(r["moved"] for r in msg["moved"].values())
    after = modes()
    assert after.pop("catalog") == "celery" and set(after.values()) == {"rq"}, modes()
    assert celery_pid() == state["celery_pid"], "the Celery worker was restarted"
    units = loaded_units()
    assert not any("-poll@" in u for u in units), units
    assert sh(WORKER, "ls /etc/systemd/system/ | grep -c -- '-poll@' || true").strip() == "0"
    assert units["jobfleet-backup@1.service"] == units["jobfleet-backup@2.service"] == "active"
    enqueue(records(f"{prefix}-b", ["backup", "default"], 100))  # new jobs: through RQ
    found = wait_done(prefix, 302)
    assert all(r["attempts"] == 1 for r in found.values()), "a job ran twice"
    waiting = [r for k, r in found.items() if k.startswith(f"{prefix}-a-")]
    by_rq = [r for r in waiting if r["mode"] == "rq" and RQ_UNIT.search(r["worker"])]
    by_poll = [r for r in waiting if POLL_UNIT.search(r["worker"])]
    print(f"roll-forward: {moved} jobs moved and run by RQ, {len(by_poll)} polled before")
    assert len(by_rq) == moved and len(by_rq) + len(by_poll) == 200, (len(by_rq), len(by_poll))
    assert moved >= 100, f"only {moved} of 200 jobs were still pending at the roll-forward"
    new = [r for k, r in found.items() if k.startswith(f"{prefix}-b-")]  # not -busy-
    assert all(r["mode"] == "rq" and RQ_UNIT.search(r["worker"]) for r in new), new[:3]
    state["forward"] = True


@pytest.mark.timeout(900)
def test_partial_rollback_runs_a_by_poller_and_b_by_rq_at_once(state: dict[str, Any]) -> None:
    needs(state, "forward")
    prefix = f"{RUN}-partial"
    msg = report(playbook("playbooks/rollback.yml", "-e", "jobfleet_rollback_queues=backup"))
    assert msg["verification"].startswith("ok") and list(msg["moved"]) == ["backup"], msg
    assert {q: m for q, m in modes().items() if q in ("backup", "default")} == {
        "backup": "db",
        "default": "rq",
    }
    units = loaded_units()
    for n in (1, 2):
        assert units[f"jobfleet-backup@{n}.service"] == "active", units
        assert units[f"jobfleet-backup-poll@{n}.service"] == "active", units
    rq_exec, poll_exec = (
        exec_start("jobfleet-backup@1.service"),
        exec_start("jobfleet-backup-poll@1.service"),
    )
    assert "jobfleet worker --queues default " in rq_exec.replace(f"{CLI}", "jobfleet"), rq_exec
    assert "poll-worker --queues backup " in poll_exec, poll_exec
    enqueue(records(prefix, ["backup", "default"], 300))
    found = wait_done(prefix, 300)
    spans: dict[str, tuple[str, str]] = {}
    for queue, unit, mode in (("backup", POLL_UNIT, "db"), ("default", RQ_UNIT, "rq")):
        mine = [r for r in found.values() if r["queue"] == queue]
        assert len(mine) == 150
        wrong = [(r["id"], r["mode"], r["worker"]) for r in mine if r["mode"] != mode
                 or not unit.search(r["worker"])]  # fmt: skip
        assert not wrong, f"{queue}: ran elsewhere: {wrong[:5]}"
        spans[queue] = (
            min(r["first_started_at"] for r in mine),
            max(r["finished_at"] for r in mine),
        )
    print(f"partial: backup (poller) ran {spans['backup']}, default (RQ) ran {spans['default']}")
    (a0, a1), (b0, b1) = spans["backup"], spans["default"]
    assert a0 < b1 and b0 < a1, f"the two queues did not run at the same time: {spans}"
    state["partial"] = True


@pytest.mark.timeout(900)
def test_emergency_rollback_requeues_the_job_in_flight(state: dict[str, Any]) -> None:
    needs(state, "partial")
    prefix = f"{RUN}-emergency"
    long_job = f"{prefix}-long"
    enqueue([("shop.jobs:sleep", [30, 30], "default", long_job)])
    wait_running([long_job])
    enqueue(records(prefix, ["default"], 50))
    out = playbook(
        "playbooks/rollback.yml",
        "-e",
        "jobfleet_rollback_mode=emergency",
        "-e",
        "jobfleet_rollback_queues=default",
    )
    msg = report(out)
    assert msg["mode"] == "emergency" and msg["verification"].startswith("ok"), msg
    assert modes()["default"] == "db"
    units = loaded_units()
    assert not any(u.startswith("jobfleet-backup@") for u in units), units
    assert "--queues backup,default " in exec_start("jobfleet-backup-poll@1.service")
    row = rows(long_job)[long_job]
    assert row["status"] in ("pending", "running"), row  # killed, not finished
    found = wait_done(prefix, 51, timeout=180)
    long_row = found[long_job]
    assert long_row["attempts"] == 2, long_row  # killed once, requeued, completed
    assert POLL_UNIT.search(long_row["worker"]), long_row
    log = sh(WORKER, f"journalctl --no-pager -u 'jobfleet-*' -g {long_job} -o cat || true")
    events = Counter(json.loads(line)["event"] for line in log.splitlines() if line.startswith("{"))
    print(f"events of the job in flight: {dict(events)}")
    assert events["JOB_SUCCESS"] == 1, log
    assert events["JOB_START"] == 2, log
    state["emergency"] = True


def redis_llen(key: str) -> int:
    password = lab_secret("redis_password")
    out = sh(DATA, f"REDISCLI_AUTH={password} redis-cli --no-auth-warning llen {key}")
    return int(out.strip())


@pytest.mark.timeout(1200)
def test_interrupted_rollback_finishes_on_rerun_with_exact_counts(state: dict[str, Any]) -> None:
    needs(state, "emergency")
    prefix = f"{RUN}-killed"
    sh(WORKER, "systemctl stop jobfleet-reports@1.service")  # the jobs wait in RQ
    jobs = records(prefix, ["reports", "slow"], 300)
    enqueue(jobs)
    assert redis_llen("rq:queue:reports") == 150
    env = {"JOBFLEET_MIGRATE_PAUSE_AFTER": "120", "JOBFLEET_MIGRATE_BATCH": "50"}
    extra = ["-e", "jobfleet_rollback_queues=reports,slow",
             "-e", json.dumps({"jobfleet_rollback_migrate_env": env})]  # fmt: skip
    proc = start_playbook("playbooks/rollback.yml", *extra)
    pid = ""
    try:
        # Batches 1 and 2 left Redis; batch 3 is committed in the ledger and still in Redis.
        wait_until(lambda: redis_llen("rq:queue:reports") == 50, 300, "migrate paused")
        time.sleep(2)
        third = [job_id for _, _, queue, job_id in jobs if queue == "reports"][100]
        row = rows(third)[third]
        assert row["mode"] == "db" and row["status"] == "pending", row
        assert redis_llen("rq:queue:reports") == 50
        pid = sh(WORKER, "pgrep -f '[j]obfleet migrate rq-to-db' || true").strip()
        assert pid and pid.isdigit(), f"one migrate process expected: {pid!r}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the controller dies, with its forks
        proc.communicate(timeout=60)
        if pid.isdigit():
            sh(WORKER, f"kill -9 {pid}")  # and the migrate process it started
    assert {q: m for q, m in modes().items() if q in ("reports", "slow")} == {
        "reports": "migrating",
        "slow": "migrating",
    }
    msg = report(playbook("playbooks/rollback.yml", "-e", "jobfleet_rollback_queues=reports,slow"))
    assert msg["verification"].startswith("ok"), msg
    assert msg["moved"]["reports"]["before"] == 150 and msg["moved"]["reports"]["after"] == 150
    assert msg["moved"]["slow"]["moved"] == 150, msg
    assert modes()["reports"] == modes()["slow"] == "db"
    found = wait_done(prefix, 300)
    assert all(r["attempts"] == 1 for r in found.values()), "a job ran twice"
    state["interrupted"] = True


@pytest.mark.timeout(600)
def test_check_mode_changes_nothing(state: dict[str, Any]) -> None:
    needs(state, "interrupted")
    before_modes, before_units = modes(), loaded_units()
    msg = report(playbook("playbooks/rollforward.yml", "--check"))
    assert msg["check_mode"] is True and msg["verification"] == "not run (check mode)", msg
    assert modes() == before_modes
    assert loaded_units() == before_units
    assert modes()["catalog"] == "celery"
    assert celery_pid() == state["celery_pid"], "the Celery worker was restarted"
    print(journal(connect(WORKER), lines=5))
    state["check"] = True


def redis_service(action: str) -> None:
    sh(DATA, f"systemctl {action} redis-server.service")


@pytest.mark.timeout(900)
def test_emergency_rollback_with_redis_gone_runs_from_the_ledger(state: dict[str, Any]) -> None:
    """Redis dies with jobs waiting in it: the ledger alone moves them (``--redis-lost``),
    the report names the rows it could not confirm, and the pollers run each job once."""
    needs(state, "check")
    prefix = f"{RUN}-lost"
    msg = report(
        playbook("playbooks/rollforward.yml", "-e", "jobfleet_rollback_queues=reports,slow")
    )
    assert msg["verification"].startswith("ok"), msg
    sh(WORKER, "systemctl stop jobfleet-reports@1.service")  # the jobs wait in RQ
    jobs = records(prefix, ["reports", "slow"], 40)
    enqueue(jobs)
    assert redis_llen("rq:queue:reports") == 20
    redis_service("stop")
    try:
        out = playbook(
            "playbooks/rollback.yml",
            "-e",
            "jobfleet_rollback_mode=emergency",
            "-e",
            "jobfleet_rollback_queues=reports,slow",
        )
        msg = report(out)
        assert msg["verification"].startswith("ok"), msg
        assert msg["redis"].startswith("NOT ANSWERING"), msg
        assert modes()["reports"] == modes()["slow"] == "db"
        unconfirmed = sorted(i for q in ("reports", "slow") for i in msg["moved"][q]["unconfirmed"])
        assert unconfirmed == sorted(job_id for *_, job_id in jobs), msg["moved"]
        assert loaded_units().get("jobfleet-reports-poll@1.service") == "active"
        found = wait_done(prefix, 40)  # each side effect exactly once
        assert all(r["mode"] == "db" and r["attempts"] == 1 for r in found.values())
    finally:
        redis_service("start")
    print(f"Redis gone: {len(unconfirmed)} rows unconfirmed, run by the poller, each once")
