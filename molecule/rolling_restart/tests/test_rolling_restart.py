"""Issue 5 on real hosts: a deploy restarts only the workers whose code changed.

converge deployed release 1 (examples/shop). These tests run in file order, each step on
top of the previous one, and drive the real playbooks with ansible-playbook:
  release 2 changes shop/email_utils.py  -> only mail restarts;
  release 3 changes shop/models.py       -> backup, reports and the Celery worker catalog
                                            (shop.celery_app imports shop.models) restart,
                                            mail does not, while 200 jobs on every RQ queue
                                            keep flowing;
  release-rollback.yml back to release 2  -> backup, reports and catalog restart again.
Release 2 and 3 are copies of release 1's deployed tree. Their jobs.py (which no worker
imports, so it affects none) tags each `record` side effect with the release, so a job
reports the code version that the worker that ran it loaded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import APP_DIR, connect, group_hosts, journal, playbook, wait_until

WORKERS = group_hosts("workers")
SIDE_EFFECTS = "/var/lib/jobfleet/shop-side-effects.log"
QUEUES = ["default", "backup", "mail", "reports", "slow"]
#: Which worker serves which queue (inventory/lab/group_vars/all.yml).
QUEUE_WORKER = {"default": "backup", "backup": "backup", "mail": "mail", "reports": "reports"}
UNITS = {name: f"jobfleet-{name}@1.service" for name in ("backup", "catalog", "mail", "reports")}
#: The workers whose import closure holds shop/models.py (the Celery app's too).
MODEL_WORKERS = ("backup", "catalog", "reports")
FLOW_JOBS = 200
#: Distinguishes this run's side-effect tokens from an earlier run's on the same hosts.
RUN = f"run{int(time.time())}"
#: Release 2 changes only email_utils.py; release 3 also models.py (a new field).
MAIL_EDIT = ('return f"To: {to}', 'return f"X-Shop: 2\\nTo: {to}')
ITEMS = "    items: tuple[str, ...] = field(default_factory=tuple)\n"
MODELS_EDIT = (ITEMS, ITEMS + '    note: str = ""\n')
RECORD_LINE = 'line = f"{socket.gethostname()} {token}\\n".encode()'


def pids(host_name: str) -> dict[str, str]:
    """MainPID of each worker instance on a host; every one must be active."""
    out = {}
    for name, unit in UNITS.items():
        shown = sh(host_name, f"systemctl show -p ActiveState -p MainPID {unit}")
        props = dict(line.split("=", 1) for line in shown.split())
        state, pid = props["ActiveState"], props["MainPID"]
        assert state == "active", (
            f"{host_name}: {unit} is {state}\n{journal(connect(host_name), unit)}"
        )
        out[name] = pid
    return out


def fleet_pids() -> dict[str, dict[str, str]]:
    return {name: pids(name) for name in WORKERS}


def current_release() -> str:
    ids = {sh(name, f"cat {APP_DIR}/current/RELEASE").strip() for name in WORKERS}
    assert len(ids) == 1, f"hosts disagree on the current release: {ids}"
    return ids.pop()


def make_release(base: Path, dest: Path, number: int, edits: dict[str, tuple[str, str]]) -> Path:
    """A copy of ``base`` whose record job tags its side effect with ``release-NUMBER``."""
    shutil.copytree(base, dest)
    edits = {
        "shop/jobs.py": (
            RECORD_LINE,
            RECORD_LINE.replace("{token}", f"{{token}} release-{number}"),
        ),
        **edits,
    }
    for rel, (old, new) in edits.items():
        path = dest / rel
        text = path.read_text()
        assert old in text, f"{rel} of release 1 has changed shape: {old!r} not found"
        path.write_text(text.replace(old, new, 1))
    return dest


def sh(host_name: str, script: str, timeout: float = 120) -> str:
    """Run a shell script in a host's container (docker exec: much faster than a testinfra
    round trip, which matters for hundreds of calls); its stdout, failing on rc != 0."""
    argv = ["docker", "exec", host_name, "sh", "-c", script]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{host_name}: {script}\n{done.stdout}{done.stderr}"
    return done.stdout


def side_effects() -> list[list[str]]:
    """Every side-effect line of every worker host, split: host, token[, release-N]."""
    lines = []
    for name in WORKERS:
        text = sh(name, f"cat {SIDE_EFFECTS} 2>/dev/null || true")
        lines += [line.split() for line in text.splitlines() if line.strip()]
    return lines


def enqueue_records(tokens: list[tuple[str, str]]) -> None:
    """Enqueue shop.jobs:record TOKEN on QUEUE for each (queue, token), from worker 1."""
    calls = "".join(
        f"jobfleet.enqueue('shop.jobs:record', {t!r}, queue={q!r})\n" for q, t in tokens
    )
    python = f"{APP_DIR}/current/venv/bin/python"
    argv = ["docker", "exec", WORKERS[0], "runuser", "-u", "jobfleet", "--", python, "-c",
            "import jobfleet\n" + calls]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"enqueue failed: {done.stdout}{done.stderr}"


def wait_for_tokens(tokens: list[str], timeout: float = 120) -> dict[str, list[str]]:
    """Wait until each token has a side effect; token -> its line. A token seen twice fails."""
    deadline, seen = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        seen = {}
        for line in side_effects():
            if len(line) > 1 and line[1] in tokens:
                assert line[1] not in seen, f"token {line[1]} ran twice: {seen[line[1]]}, {line}"
                seen[line[1]] = line
        if len(seen) == len(tokens):
            return seen
        time.sleep(1)
    missing = sorted(set(tokens) - set(seen))
    pytest.fail(
        f"no side effect after {timeout:.0f} s for {missing[:10]}\n{journal(connect(WORKERS[0]))}"
    )


def versions(step: str) -> dict[str, str]:
    """The code version each worker runs, from record jobs on each of its queues (several,
    as each queue has one instance per host and either may take a job)."""
    tokens = [(q, f"{RUN}-{step}-{q}-{n}") for q in ("backup", "mail", "reports") for n in range(4)]
    enqueue_records(tokens)
    lines = wait_for_tokens([token for _, token in tokens])
    seen: dict[str, set[str]] = {}
    for queue, token in tokens:
        line = lines[token]
        seen.setdefault(QUEUE_WORKER[queue], set()).add(line[2] if len(line) > 2 else "release-1")
    assert all(len(v) == 1 for v in seen.values()), f"mixed code versions per worker: {seen}"
    return {worker: v.pop() for worker, v in seen.items()}


#: The flow, as an application enqueues: jobfleet's Python API (one process, so hundreds of
#: jobs do not each pay the CLI's start-up on this 2-core machine). argv: delay, gap, prefix.
FLOW_SCRIPT = """
import sys, time
import jobfleet
delay, gap, prefix = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
queues = sys.argv[4].split(",")
time.sleep(delay)
for i in range(int(sys.argv[5])):
    print("T", time.time(), flush=True)
    try:
        jobfleet.enqueue("shop.jobs:record", f"{prefix}-{i}", queue=queues[i % len(queues)])
    except Exception as exc:
        print("FAILED", i, exc, flush=True)
    time.sleep(gap)
print("T", time.time(), "end", flush=True)
"""


def start_flow(host_name: str, delay: float, gap: float) -> tuple[subprocess.Popen[str], str]:
    """Enqueue FLOW_JOBS record jobs round-robin on every queue from a worker host, after
    ``delay`` seconds, one every ``gap`` seconds; (the process, the token prefix)."""
    prefix = f"flow{int(time.time())}"
    python = f"{APP_DIR}/current/venv/bin/python"
    argv = [
        "docker",
        "exec",
        host_name,
        "runuser",
        "-u",
        "jobfleet",
        "--",
        python,
        "-c",
        FLOW_SCRIPT,
        f"{delay:.1f}",
        f"{gap:.2f}",
        prefix,
        ",".join(QUEUES),
        str(FLOW_JOBS),
    ]
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ), prefix


def finish_flow(flow: tuple[subprocess.Popen[str], str]) -> tuple[str, str]:
    proc, prefix = flow
    try:
        out, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"the job flow did not finish in 600 s:\n{out[-3000:]}")
    return out, prefix


def queue_counts() -> dict[str, dict[str, int]]:
    cli = f"runuser -u jobfleet -- {APP_DIR}/current/venv/bin/jobfleet"
    return dict(json.loads(sh(WORKERS[0], f"{cli} status --json"))["queues"])


def restart_times(workers: list[str]) -> list[float]:
    """Unix times at which the workers' instances last became active, on every host."""
    times = []
    for name in WORKERS:
        for worker in workers:
            unit = UNITS[worker]
            stamp = sh(
                name, f"systemctl show -p ActiveEnterTimestamp --value --timestamp=unix {unit}"
            )
            times.append(float(stamp.strip().lstrip("@")))
    return times


def check_flow(
    flow: tuple[str, str], counts_before: dict[str, dict[str, int]], restarted: list[str]
) -> None:
    """All FLOW_JOBS completed, none failed, each ran exactly once, and the flow overlapped
    the restarts of ``restarted``."""
    out, prefix = flow
    assert "FAILED" not in out, out[-3000:]
    stamps = [float(line.split()[1]) for line in out.splitlines() if line.startswith("T ")]
    assert len(stamps) == FLOW_JOBS + 1, out[-3000:]
    ran: Counter[str] = Counter()

    def all_ran() -> bool:
        ran.clear()
        ran.update(line[1] for line in side_effects() if line[1].startswith(prefix + "-"))
        return len(ran) >= FLOW_JOBS

    wait_until(all_ran, 180, f"side effects of all {FLOW_JOBS} flow jobs", connect(WORKERS[0]))
    twice = {token: n for token, n in ran.items() if n != 1}
    assert not twice, f"jobs that ran more than once: {twice}"
    assert set(ran) == {f"{prefix}-{i}" for i in range(FLOW_JOBS)}
    after = queue_counts()
    per_queue = FLOW_JOBS // len(QUEUES)
    for queue in QUEUES:
        done = after[queue]["completed"] - counts_before.get(queue, {}).get("completed", 0)
        failed = after[queue]["failed"] - counts_before.get(queue, {}).get("failed", 0)
        assert (done, failed) == (per_queue, 0), f"{queue}: {done} completed, {failed} failed"
        assert after[queue]["pending"] == after[queue]["running"] == 0, f"{queue}: {after[queue]}"
    restarts = restart_times(restarted)
    print(f"flow: {FLOW_JOBS} jobs enqueued from {stamps[0]:.1f} to {stamps[-2]:.1f}; "
          f"restarts at {', '.join(f'{t:.1f}' for t in sorted(restarts))}")  # fmt: skip
    assert stamps[0] < min(restarts) and max(restarts) < stamps[-2], (
        "the flow did not span the restarts: enqueued "
        f"{stamps[0]:.1f}..{stamps[-2]:.1f}, restarts {sorted(restarts)}"
    )


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What the steps hand on: release trees and ids, MainPIDs; 'broken' stops later steps."""
    return {"tmp": tmp_path_factory.mktemp("releases")}


def needs(state: dict[str, Any], step: str) -> None:
    """Fail a step at once when its predecessor did not pass: that failure is the one to read."""
    if not state.get(step):
        pytest.fail(f"needs step {step!r}, which did not pass; read that step's failure first")


def test_release_1_runs_everywhere(state: dict[str, Any]) -> None:
    state["r1"] = current_release()
    state["pids"] = fleet_pids()
    tree = state["tmp"] / "r1"
    source = f"{WORKERS[0]}:{APP_DIR}/releases/{state['r1']}/src"
    subprocess.run(["docker", "cp", source, str(tree)], check=True, capture_output=True, timeout=60)
    state["r1_tree"] = tree
    assert versions("r1") == {"backup": "release-1", "mail": "release-1", "reports": "release-1"}
    state["release_1"] = True


@pytest.mark.timeout(1500)
def test_release_2_email_utils_restarts_only_mail(state: dict[str, Any]) -> None:
    needs(state, "release_1")
    tree = make_release(
        state["r1_tree"], state["tmp"] / "r2", 2, {"shop/email_utils.py": MAIL_EDIT}
    )
    before = state["pids"]
    started = time.monotonic()
    out = playbook("playbooks/deploy.yml", "-e", f"release__app_src={tree}")
    print(f"release 2 deploy: {time.monotonic() - started:.0f} s")
    state["r2"] = current_release()
    assert state["r2"] != state["r1"]
    after = fleet_pids()
    for name in WORKERS:
        assert after[name]["mail"] != before[name]["mail"], (
            f"{name}: mail kept its MainPID\n{out[-3000:]}"
        )
        for worker in MODEL_WORKERS:
            assert after[name][worker] == before[name][worker], f"{name}: {worker} restarted"
    assert "shop/workers/mail.py -> shop/email_utils.py" in out
    assert versions("r2") == {"backup": "release-1", "mail": "release-2", "reports": "release-1"}
    state["pids"] = after
    state["release_2"] = True


@pytest.mark.timeout(1500)
def test_release_3_models_restarts_model_workers_while_200_jobs_flow(state: dict[str, Any]) -> None:
    needs(state, "release_2")
    edits = {"shop/email_utils.py": MAIL_EDIT, "shop/models.py": MODELS_EDIT}
    tree = make_release(state["r1_tree"], state["tmp"] / "r3", 3, edits)
    before = state["pids"]
    counts = queue_counts()
    # The hook restarts at the end of the deploy: the flow (about 150 s) starts with the
    # Workers play, once the release switched, so that it spans the restarts.
    flows: list[tuple[subprocess.Popen[str], str]] = []

    def start_on_workers_play(line: str) -> None:
        if not flows and "PLAY [Workers]" in line:
            flows.append(start_flow(WORKERS[0], delay=0, gap=0.75))

    try:
        out = playbook(
            "playbooks/deploy.yml", "-e", f"release__app_src={tree}", on_line=start_on_workers_play
        )
    finally:
        flow_out = finish_flow(flows[0]) if flows else ("", "")
    assert flows, f"the deploy never reached the Workers play\n{out[-3000:]}"
    state["r3"] = current_release()
    after = fleet_pids()
    for name in WORKERS:
        assert after[name]["mail"] == before[name]["mail"], f"{name}: mail restarted\n{out[-3000:]}"
        for worker in MODEL_WORKERS:
            assert after[name][worker] != before[name][worker], f"{name}: {worker} kept its MainPID"
    check_flow(flow_out, counts, restarted=["backup", "reports"])
    assert versions("r3") == {"backup": "release-3", "mail": "release-2", "reports": "release-3"}
    state["pids"] = after
    state["release_3"] = True


@pytest.mark.timeout(900)
def test_rolling_restart_check_mode_lists_the_plan_and_restarts_nothing(
    state: dict[str, Any],
) -> None:
    needs(state, "release_3")
    out = playbook("playbooks/rolling-restart.yml", "--check",
                   "-e", f"jobfleet_restart_old_release={state['r2']}",
                   "-e", f"jobfleet_restart_new_release={state['r3']}")  # fmt: skip
    plan = (
        "restart: jobfleet-backup@1.service, jobfleet-catalog@1.service, jobfleet-reports@1.service"
    )
    assert plan in out, out[-3000:]
    assert "shop/workers/backup.py -> shop/models.py" in out
    assert "shop/celery_app.py -> shop/models.py" in out
    assert fleet_pids() == state["pids"]


@pytest.mark.timeout(1200)
def test_release_rollback_returns_to_release_2(state: dict[str, Any]) -> None:
    needs(state, "release_3")
    before = state["pids"]
    out = playbook("playbooks/release-rollback.yml")
    assert current_release() == state["r2"]
    after = fleet_pids()
    for name in WORKERS:
        assert after[name]["mail"] == before[name]["mail"], f"{name}: mail restarted\n{out[-3000:]}"
        for worker in MODEL_WORKERS:
            assert after[name][worker] != before[name][worker], f"{name}: {worker} kept its MainPID"
        history = sh(name, f"cat {APP_DIR}/release-history").split()
        assert history[-2:] == [state["r1"], state["r2"]], history
    assert versions("rollback") == {
        "backup": "release-2",
        "mail": "release-2",
        "reports": "release-2",
    }
