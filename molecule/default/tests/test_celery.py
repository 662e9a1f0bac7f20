"""Issue 7 on real hosts: Celery jobs survive a restart and a kill -9 of their worker node.

The lab runs the Celery worker ``catalog`` (shop.celery_app, queue ``catalog`` in mode
celery) on both worker hosts: two nodes, catalog-1@worker1 and catalog-1@worker2. Each test
starts a long ``rebuild_catalog`` job with a unique token; the job appends ``host token`` to
the side-effect log of the host that ran it to completion, so a count of those lines is the
number of completed runs. A watcher in the job's host (one Python process polling the ledger
and systemd every 0.2 s) records each change of the row and the unit, which gives the
recovery times that the kill -9 test prints.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import APP_DIR, connect, group_hosts, journal

WORKERS = group_hosts("workers")
UNIT = "jobfleet-catalog@1.service"
SIDE_EFFECTS = "/var/lib/jobfleet/shop-side-effects.log"
PYTHON = f"{APP_DIR}/current/venv/bin/python"
TERMINAL = ("completed", "failed", "cancelled")
#: rebuild_catalog(STEPS, PAUSE): about 15 s of work, with progress after each step.
STEPS, PAUSE = 30, 0.5

#: Runs in a worker host as the service user, one process: enqueues
#: rebuild_catalog(steps, pause, token) on the catalog queue, waits until the job runs with
#: progress strictly between 0 and 100, then prints one JSON line (the row as ``jobfleet job
#: show --json`` prints it, plus the time ``t``) now and at every change of the row's
#: status, attempt or node, until the row is terminal. Python starts before the enqueue, so
#: a slow start on a busy machine cannot miss the running job.
PROBE = """
import json, sys, time
import jobfleet
from jobfleet.runtime import Runtime
steps, pause, token, limit = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], float(sys.argv[4])
ledger = Runtime.from_path(None).ledger
job_id = jobfleet.enqueue("shop.celery_app:rebuild_catalog", steps, pause, token, queue="catalog")
end, last = time.time() + limit, None
while time.time() < end:
    row = ledger.get(job_id)
    if last is None and not (row.status == "running" and 0 < (row.progress or 0) < 100):
        if row.status in ("completed", "failed", "cancelled"):
            sys.exit(f"job {job_id} ended before it was seen running: {row.public()}")
        time.sleep(0.1)
        continue
    if (row.status, row.attempts, row.worker) != last:
        print(json.dumps({**row.public(), "t": time.time()}), flush=True)
        last = (row.status, row.attempts, row.worker)
    if row.status in ("completed", "failed", "cancelled"):
        sys.exit(0)
    time.sleep(0.2)
sys.exit(f"job {job_id} not terminal after {limit:.0f} s")
"""


class Probe:
    """A PROBE process in the first worker host; ``running()`` is its row once the job runs."""

    def __init__(self, token: str, steps: int, limit: float = 300) -> None:
        argv = ["docker", "exec", WORKERS[0], "runuser", "-u", "jobfleet", "--",
                PYTHON, "-c", PROBE, str(steps), str(PAUSE), token, str(limit)]  # fmt: skip
        self.token = token
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.killer = threading.Timer(limit + 60, self.proc.kill)
        self.killer.start()
        self.first: dict[str, Any] = {}

    def running(self) -> dict[str, Any]:
        """The job's row once it runs with some progress (the probe's first line)."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.fail("no running job")
        self.first = json.loads(line)
        return self.first

    def changes(self) -> list[dict[str, Any]]:
        """Every row the probe printed, the first one included, once the job is terminal."""
        out, _ = self.proc.communicate()
        self.killer.cancel()
        if self.proc.returncode != 0:
            self.fail("no terminal state")
        return [self.first, *map(json.loads, out.splitlines())]

    def fail(self, what: str) -> None:
        self.proc.kill()
        self.killer.cancel()
        out, err = self.proc.communicate()
        logs = "".join(journal(connect(name), UNIT) for name in WORKERS)
        pytest.fail(f"probe {self.token}: {what}: {out}{err}\n{logs}")


def sh(host_name: str, script: str, timeout: float = 120) -> str:
    """Run a shell script in a host's container (docker exec); its stdout, failing on rc != 0."""
    argv = ["docker", "exec", host_name, "sh", "-c", script]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{host_name}: {script}\n{done.stdout}{done.stderr}"
    return done.stdout


def cli(host_name: str, *args: str) -> dict[str, Any]:
    """``jobfleet ARGS --json`` as the service user on a host."""
    argv = ["docker", "exec", host_name, "runuser", "-u", "jobfleet", "--",
            f"{APP_DIR}/current/venv/bin/jobfleet", *args, "--json"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"jobfleet {' '.join(args)}: {done.stdout}{done.stderr}"
    data = json.loads(done.stdout)
    assert isinstance(data, dict), done.stdout
    return data


def unit_state(host_name: str) -> dict[str, str]:
    shown = sh(host_name, f"systemctl show -p ActiveState -p MainPID -p NRestarts {UNIT}")
    return dict(line.split("=", 1) for line in shown.split())


def host_of(node: str) -> str:
    """The inventory host of a Celery node name catalog-1@HOST."""
    name, _, host_name = node.partition("@")
    assert name == "catalog-1" and host_name in WORKERS, f"unexpected node {node!r}"
    return host_name


def completions(token: str) -> list[str]:
    """Hosts whose side-effect log holds ``token``: one entry per completed run."""
    hosts = []
    for name in WORKERS:
        text = sh(name, f"cat {SIDE_EFFECTS} 2>/dev/null || true")
        hosts += [line.split()[0] for line in text.splitlines() if line.split()[1:] == [token]]
    return hosts


def events(job_id: str) -> list[str]:
    """The job's JSON event names in the journals of both Celery nodes, in no set order."""
    found = []
    for name in WORKERS:
        text = sh(name, f"journalctl --no-pager -o cat -u {UNIT} | grep -F {job_id} || true")
        for line in text.splitlines():
            if line.startswith("{"):  # event lines, and startup-cleanup's summary
                found += [str(json.loads(line).get("event"))]
    return found


#: Prints the ids of the ledger rows whose arguments hold the token argv[1].
ROWS_WITH_TOKEN = """
import json, sys
from sqlalchemy import select
from jobfleet.runtime import Runtime
from jobfleet.schema import jobs
ledger = Runtime.from_path(None).ledger
query = select(jobs.c.id).where(jobs.c.args.contains(json.dumps(sys.argv[1])))
with ledger.engine.connect() as conn:
    print(json.dumps([found for (found,) in conn.execute(query)]))
"""


def ledger_rows(token: str) -> list[str]:
    """The ids of the ledger rows of the job enqueued with ``token`` (one, or a duplicate)."""
    argv = ["docker", "exec", WORKERS[0], "runuser", "-u", "jobfleet", "--",
            PYTHON, "-c", ROWS_WITH_TOKEN, token]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"ledger rows of {token}: {done.stdout}{done.stderr}"
    found = json.loads(done.stdout)
    assert isinstance(found, list), done.stdout
    return [str(job_id) for job_id in found]


def assert_completed_once(job_id: str, token: str, row: dict[str, Any]) -> None:
    """Completed, one ledger row, one side effect, one JOB_SUCCESS, one JOB_START per
    attempt."""
    assert row["status"] == "completed", row
    assert row["progress"] == 100.0, row
    time.sleep(3)  # a duplicate delivery would show up here
    assert ledger_rows(token) == [job_id], f"ledger rows of {token}"
    assert completions(token) == [host_of(row["worker"])], f"side effects of {token}"
    seen = events(job_id)
    assert seen.count("JOB_SUCCESS") == 1, seen
    assert seen.count("JOB_START") == row["attempts"], seen


def assert_catalog_idle() -> None:
    """No catalog job is left pending or running."""
    counts = cli(WORKERS[0], "status")["queues"]["catalog"]
    assert counts["pending"] == counts["running"] == 0, counts


def first(changes: list[dict[str, Any]], check: Any, what: str) -> float:
    for change in changes:
        if check(change):
            return float(change["t"])
    pytest.fail(f"never seen: {what}\n" + "\n".join(map(json.dumps, changes)))


def report(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\n{text}  [loadavg {Path('/proc/loadavg').read_text().strip()}]")


def unix_time(host_name: str, prop: str) -> float:
    """A timestamp property of the unit, as Unix time."""
    shown = sh(host_name, f"systemctl show -p {prop} --value --timestamp=unix {UNIT}")
    return float(shown.strip().lstrip("@"))


def test_a_warm_restart_finishes_its_job_and_leaves_the_other_nodes_job_alone(
    capsys: Any,
) -> None:
    # A long and a short job at once: each node takes one (a busy node holds no second
    # message: concurrency 1, prefetch 1, late acks). Restarting the short job's node lets
    # that job finish (warm shutdown) while the long job runs on untouched.
    long_job = Probe(f"long-{uuid.uuid4().hex[:8]}", steps=4 * STEPS)
    short_job = Probe(f"warm-{uuid.uuid4().hex[:8]}", steps=STEPS)
    long_row, short_row = long_job.running(), short_job.running()
    victim, bystander = host_of(short_row["worker"]), host_of(long_row["worker"])
    assert victim != bystander, f"both jobs on {victim}: the other node took no work"
    before = unit_state(victim)
    since = sh(victim, "date '+%Y-%m-%d %H:%M:%S'").strip()
    started = time.time()
    sh(victim, f"systemctl restart {UNIT}", timeout=STEPS * PAUSE + 120)
    restarted = time.time()
    after = unit_state(victim)
    assert after["ActiveState"] == "active" and after["MainPID"] != before["MainPID"], after

    # The restarted node finished its own job (attempt 1, same node) before it stopped ...
    short = short_job.changes()
    assert [(c["status"], c["attempts"], c["worker"]) for c in short] == [
        ("running", 1, short_row["worker"]),
        ("completed", 1, short_row["worker"]),
    ], short
    assert started < short[-1]["t"] < restarted, "the short job did not end during the restart"
    assert short[-1]["first_started_at"] == short_row["first_started_at"], short
    assert_completed_once(short_row["id"], short_job.token, short[-1])
    # ... and its startup cleanup, for its own node only, released nothing.
    logs = f"journalctl --no-pager -o cat -u {UNIT} --since '{since}'"
    cleanup = sh(victim, f"{logs} | grep -F requeued").splitlines()[-1]
    assert json.loads(cleanup) == {
        "failed": [],
        "requeued": [],
        "worker": short_row["worker"],
    }, cleanup

    # The other node's job went from running to completed under its node, nothing between.
    long = long_job.changes()
    assert [(c["status"], c["attempts"], c["worker"]) for c in long] == [
        ("running", 1, long_row["worker"]),
        ("completed", 1, long_row["worker"]),
    ], long
    assert long[-1]["t"] > restarted, "the long job ended before the restart was over"
    assert long[-1]["first_started_at"] == long_row["first_started_at"], long
    assert_completed_once(long_row["id"], long_job.token, long[-1])
    assert_catalog_idle()
    report(
        capsys,
        f"celery warm restart of {short_row['worker']} at {short_row['progress']:.0f}%: "
        f"systemctl restart returned after {restarted - started:.1f} s, its job completed "
        f"once (attempt 1) {short[-1]['t'] - started:.1f} s after the restart began; the job "
        f"on {long_row['worker']} ran on and completed once (attempt 1)",
    )


def test_kill_9_of_the_node_requeues_the_job_which_completes_once(capsys: Any) -> None:
    job = Probe(f"kill-{uuid.uuid4().hex[:8]}", steps=STEPS)
    row = job.running()
    victim = host_of(row["worker"])
    before = unit_state(victim)
    killed = time.time()
    sh(victim, f"systemctl kill -s KILL --kill-whom=main {UNIT}")
    changes = job.changes()
    assert changes[-1]["status"] == "completed", changes
    # Requeued (by the restarted node's startup cleanup, or the reaper): pending, or attempt
    # 2 already, when another node claimed it between two polls.
    requeued = first(changes, lambda c: c["attempts"] == 2 or c["status"] == "pending", "requeue")
    rerun = first(changes, lambda c: (c["status"], c["attempts"]) == ("running", 2), "attempt 2")
    finished = changes[-1]["t"]
    after = unit_state(victim)
    assert after["ActiveState"] == "active" and after["MainPID"] != before["MainPID"], after
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1, after
    back = unix_time(victim, "ActiveEnterTimestamp")
    done = changes[-1]
    assert done["attempts"] == 2, changes
    assert done["first_started_at"] == row["first_started_at"], changes
    assert_completed_once(row["id"], job.token, done)
    assert_catalog_idle()
    report(
        capsys,
        f"celery kill -9 of {row['worker']} at {row['progress']:.0f}% (probe saw it at "
        f"{row['t'] - killed:+.1f} s): requeued after {requeued - killed:.1f} s, unit active "
        f"after {back - killed:.1f} s, running again (attempt 2 on {done['worker']}) after "
        f"{rerun - killed:.1f} s, completed after {finished - killed:.1f} s "
        f"(the job takes {STEPS * PAUSE:.0f} s)",
    )


def test_kill_9_of_the_pool_process_is_recorded_at_once_and_the_job_completes_once(
    capsys: Any,
) -> None:
    # The OOM killer's usual choice: the pool process running the task, not the node.
    job = Probe(f"pool-{uuid.uuid4().hex[:8]}", steps=STEPS)
    row = job.running()
    victim = host_of(row["worker"])
    before = unit_state(victim)
    main = before["MainPID"]
    children = sh(victim, f"cat /proc/{main}/task/{main}/children").split()
    assert len(children) == 1, f"pool processes of {main}: {children} (concurrency 1)"
    killed = time.time()
    sh(victim, f"kill -9 {children[0]}")
    changes = job.changes()
    rerun = first(changes, lambda c: (c["status"], c["attempts"]) == ("running", 2), "attempt 2")
    done = changes[-1]
    assert done["status"] == "completed" and done["attempts"] == 2, changes
    assert done["first_started_at"] == row["first_started_at"], changes
    # The node lived on: same main process, no restart; it requeued the row itself.
    after = unit_state(victim)
    assert (after["MainPID"], after["NRestarts"]) == (main, before["NRestarts"]), after
    # The node's own JOB_REQUEUED (the reaper logs to its own unit), and sooner than the
    # reaper could: Celery notices a lost pool process at once or at its 5 s pool check.
    assert "JOB_REQUEUED" in events(row["id"])
    assert rerun - killed < 15, f"running again only {rerun - killed:.1f} s after the kill"
    assert_completed_once(row["id"], job.token, done)
    assert_catalog_idle()
    report(
        capsys,
        f"celery kill -9 of the pool process of {row['worker']} at {row['progress']:.0f}%: "
        f"running again (attempt 2 on {done['worker']}) after {rerun - killed:.1f} s, "
        f"completed after {done['t'] - killed:.1f} s (the job takes {STEPS * PAUSE:.0f} s)",
    )
