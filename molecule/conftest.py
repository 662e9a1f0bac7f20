"""Shared testinfra helpers for the molecule scenarios: the jobfleet CLI on a host, waits.

Every helper talks to real hosts (containers) through testinfra's ``host`` fixture; a
failure message carries the recent journal of the jobfleet units.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import testinfra
import testinfra.utils.ansible_runner

APP_DIR = "/opt/shop"
CLI = f"runuser -u jobfleet -- {APP_DIR}/current/venv/bin/jobfleet"
CONFIG = "/etc/jobfleet/jobfleet.yml"
PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).parents[1]))
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
#: The default callback with JSON results and no colour (tests parse the output).
PLAYBOOK_ENV = {
    "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default",
    "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
    "ANSIBLE_FORCE_COLOR": "0",
    "ANSIBLE_NOCOLOR": "1",
    "ANSIBLE_ROLES_PATH": str(PROJECT / "roles"),
}


def journal(host: Any, units: str = "jobfleet-*", lines: int = 60) -> str:
    """The last lines of the journal of ``units`` (a glob), for failure messages."""
    cmd = f"journalctl --no-pager -n {lines} -u {shlex.quote(units)}"
    return str(host.run(cmd).stdout)


def jobfleet(host: Any, *args: str, expect_rc: tuple[int, ...] = (0,)) -> dict[str, Any]:
    """Run ``jobfleet ARGS --json`` as the service user; the parsed JSON object."""
    cmd = host.run(f"{CLI} {' '.join(map(shlex.quote, args))} --json")
    if cmd.rc not in expect_rc:
        pytest.fail(
            f"jobfleet {' '.join(args)}: exit {cmd.rc}\n{cmd.stderr}\n{journal(host, lines=20)}"
        )
    data = json.loads(cmd.stdout)
    assert isinstance(data, dict), cmd.stdout
    return data


def job(host: Any, job_id: str) -> dict[str, Any]:
    """The ledger row of one job."""
    return jobfleet(host, "job", "show", job_id)


def wait_for(host: Any, job_id: str, want: str, timeout: float = 30.0) -> dict[str, Any]:
    """Poll the ledger until the job has status ``want``; its row then."""
    deadline, row = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        row = job(host, job_id)
        if row["status"] == want:
            return row
        time.sleep(0.5)
    pytest.fail(
        f"job {job_id} is {row.get('status')!r} after {timeout:.0f} s, wanted {want!r}\n"
        f"{json.dumps(row, indent=1)}\n{journal(host)}"
    )


def wait_until(check: Any, timeout: float, what: str, host: Any | None = None) -> Any:
    """Call ``check()`` until it returns a truthy value or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"{what}: not true after {timeout:.0f} s\n{journal(host) if host else ''}")


def unit_property(host: Any, unit: str, name: str) -> str:
    """One property of a systemd unit (``systemctl show -p NAME --value``)."""
    cmd = host.run(f"systemctl show -p {shlex.quote(name)} --value {shlex.quote(unit)}")
    assert cmd.rc == 0, cmd.stderr
    return str(cmd.stdout).strip()


def worker_instances(host: Any) -> list[str]:
    """Every loaded jobfleet worker instance unit on the host, e.g. jobfleet-mail@1.service."""
    cmd = host.run(
        "systemctl list-units --all --plain --no-legend --type=service 'jobfleet-*@*.service'"
    )
    assert cmd.rc == 0, cmd.stderr
    return sorted(line.split()[0] for line in str(cmd.stdout).splitlines() if line.strip())


def inventory() -> str:
    """The inventory molecule wrote for this scenario."""
    return os.environ["MOLECULE_INVENTORY_FILE"]


def group_hosts(group: str) -> list[str]:
    """Inventory names of the hosts in ``group``."""
    return sorted(testinfra.utils.ansible_runner.AnsibleRunner(inventory()).get_hosts(group))


def connect(name: str) -> Any:
    """A testinfra host for one inventory host."""
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={inventory()}")


def lab_secret(name: str) -> str:
    """A generated lab secret (inventory/lab/group_vars: .lab/NAME on the controller)."""
    root = os.environ.get("MOLECULE_PROJECT_DIRECTORY", ".")
    with open(os.path.join(root, ".lab", name), encoding="utf-8") as handle:
        return handle.read().split()[0]


def start_playbook(name: str, *extra: str) -> subprocess.Popen[str]:
    """Start playbooks/NAME against the scenario's hosts, in its own process group (so a
    test can kill the controller with its forks); stdout and stderr in one pipe."""
    argv = [str(PLAYBOOK), "-i", inventory(), str(PROJECT / name), *extra]
    return subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **PLAYBOOK_ENV},
        start_new_session=True,
    )


def run_playbook(
    name: str,
    *extra: str,
    timeout: float = 1200,
    on_line: Callable[[str], None] | None = None,
) -> tuple[int, str]:
    """Run playbooks/NAME, streaming its output to ``on_line``; its exit code (-9 when it
    was killed after ``timeout`` seconds) and output."""
    started = time.monotonic()
    proc = start_playbook(name, *extra)
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line)
        rc = proc.wait()
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(f"{name} {' '.join(extra)}: exit {rc} after {time.monotonic() - started:.0f} s")
    return rc, "".join(lines)


def playbook(
    name: str,
    *extra: str,
    timeout: float = 1200,
    on_line: Callable[[str], None] | None = None,
) -> str:
    """Run playbooks/NAME; its output. The test fails on a non-zero exit or a timeout."""
    rc, out = run_playbook(name, *extra, timeout=timeout, on_line=on_line)
    if rc != 0:
        pytest.fail(f"{name} {' '.join(extra)}: exit {rc} (timeout {timeout:.0f} s)\n{out[-6000:]}")
    return out
