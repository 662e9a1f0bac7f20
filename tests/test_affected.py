"""``jobfleet affected``: every rule of the contract, on small real trees, through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jobfleet.affected_parse import CACHE_NAME, cache_dir
from jobfleet.affected_tree import content_hash
from jobfleet.cli import main

WARNING = "jobfleet affected: warning: "


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv("JOBFLEET_CACHE_DIR", str(directory))
    return directory


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def workers_file(tmp_path: Path, workers: dict[str, Any], name: str = "workers.yml") -> str:
    path = tmp_path / name
    path.write_text(json.dumps({"workers": workers}))  # JSON is YAML
    return str(path)


def trees(tmp_path: Path, old: dict[str, str], changes: dict[str, str | None]) -> tuple[Path, Path]:
    """An old tree and a new tree that differs by ``changes`` (None deletes a file)."""
    write(tmp_path / "old", old)
    new_files = {**old, **{k: v for k, v in changes.items() if v is not None}}
    for rel, text in changes.items():
        if text is None:
            new_files.pop(rel, None)
    write(tmp_path / "new", new_files)
    return tmp_path / "old", tmp_path / "new"


def affected(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code = main(["affected", *args, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    data: dict[str, Any] = json.loads(out)
    assert list(data) == sorted(data)
    assert set(data) == {"changed_files", "affected_workers", "reasons", "unaffected_workers"}
    return data


def compare(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    workers: dict[str, Any],
    old: dict[str, str],
    changes: dict[str, str | None],
    *extra: str,
) -> dict[str, Any]:
    old_dir, new_dir = trees(tmp_path, old, changes)
    spec = workers_file(tmp_path, workers)
    return affected(capsys, "--workers", spec, "--old", str(old_dir), "--new", str(new_dir), *extra)


def test_diff_by_content_lists_added_deleted_modified(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    old = {"w.py": "import a\n", "a.py": "x = 1\n", "gone.py": "", "same.py": "s = 1\n"}
    changes: dict[str, str | None] = {"a.py": "x = 2\n", "gone.py": None, "added.py": "y = 1\n"}
    data = compare(capsys, tmp_path, {"w": {"entry": "w.py"}}, old, changes)
    assert data["changed_files"] == ["a.py", "added.py", "gone.py"]
    assert data["affected_workers"] == ["w"]
    assert data["reasons"] == {"w": ["w.py", "a.py"]}
    assert data["unaffected_workers"] == []


def test_same_size_edit_is_a_change_and_pycache_is_not(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    old = {"w.py": "import a\n", "a.py": "x = 1\n", "__pycache__/a.cpython-311.pyc": "old"}
    changes: dict[str, str | None] = {"a.py": "x = 9\n", "__pycache__/a.cpython-311.pyc": "new"}
    data = compare(capsys, tmp_path, {"w": {"entry": "w.py"}}, old, changes)
    assert data["changed_files"] == ["a.py"]
    assert data["affected_workers"] == ["w"]


def test_entry_itself_changed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    old = {"jobs/w.py": "print(1)\n", "jobs/v.py": "print(2)\n"}
    workers = {"w": {"entry": "jobs/w.py"}, "v": {"entry": "jobs/v.py"}}
    data = compare(capsys, tmp_path, workers, old, {"jobs/w.py": "print(3)\n"})
    assert data["reasons"] == {"w": ["jobs/w.py"]}
    assert data["unaffected_workers"] == ["v"]


def test_import_a_b_loads_the_package_init(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    old = {"w.py": "import pkg.sub\n", "pkg/__init__.py": "", "pkg/sub.py": "", "pkg/other.py": ""}
    data = compare(capsys, tmp_path, {"w": {"entry": "w.py"}}, old, {"pkg/__init__.py": "v = 1\n"})
    assert data["reasons"] == {"w": ["w.py", "pkg/__init__.py"]}
    data = compare(capsys, tmp_path, {"w": {"entry": "w.py"}}, old, {"pkg/other.py": "v = 1\n"})
    assert data["affected_workers"] == []


def test_from_import_submodule_or_name(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    old = {
        "sub_worker.py": "from pkg import sub\n",
        "name_worker.py": "from pkg import helper\n",
        "pkg/__init__.py": "def helper():\n    pass\n",
        "pkg/sub.py": "",
    }
    workers = {"sub": {"entry": "sub_worker.py"}, "name": {"entry": "name_worker.py"}}
    data = compare(capsys, tmp_path, workers, old, {"pkg/sub.py": "x = 1\n"})
    assert data["reasons"] == {"sub": ["sub_worker.py", "pkg/sub.py"]}
    assert data["unaffected_workers"] == ["name"]


def test_relative_imports_from_a_dotted_module_entry(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    old = {
        "app/__init__.py": "",
        "app/models.py": "from .db import session\n",
        "app/db.py": "",
        "app/unused.py": "",
        "app/workers/__init__.py": "",
        "app/workers/backup.py": "from ..models import Order\nfrom . import util\n",
        "app/workers/util.py": "",
    }
    workers = {"backup": {"entry": "app.workers.backup"}}
    data = compare(capsys, tmp_path, workers, old, {"app/db.py": "x = 1\n"})
    assert data["reasons"] == {"backup": ["app/workers/backup.py", "app/models.py", "app/db.py"]}
    data = compare(capsys, tmp_path, workers, old, {"app/workers/util.py": "x = 1\n"})
    assert data["reasons"] == {"backup": ["app/workers/backup.py", "app/workers/util.py"]}
    data = compare(capsys, tmp_path, workers, old, {"app/__init__.py": "x = 1\n"})
    assert data["reasons"] == {"backup": ["app/workers/backup.py", "app/__init__.py"]}
    data = compare(capsys, tmp_path, workers, old, {"app/unused.py": "x = 1\n"})
    assert data["affected_workers"] == []


def test_imports_inside_functions_and_importlib_literals(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    old = {
        "w.py": (
            "import importlib\n"
            "def run():\n"
            "    if True:\n"
            "        import lazy\n"
            "    return importlib.import_module('plugins.csv_export')\n"
            "class K:\n"
            "    def m(self):\n"
            "        return __import__('dunder')\n"
        ),
        "lazy.py": "",
        "plugins/__init__.py": "",
        "plugins/csv_export.py": "",
        "dunder.py": "",
        "dynamic.py": "",
    }
    for changed in ("lazy.py", "plugins/csv_export.py", "dunder.py"):
        data = compare(capsys, tmp_path, {"w": {"entry": "w.py"}}, old, {changed: "# new\n"})
        assert data["reasons"]["w"][-1] == changed
    data = compare(capsys, tmp_path, {"w": {"entry": "w.py"}}, old, {"dynamic.py": "# new\n"})
    assert data["affected_workers"] == []


def test_namespace_package_split_over_source_root_and_tree_root(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    old = {
        "w.py": "import ns.left\nfrom ns import right\n",
        "src/ns/left.py": "",
        "ns/right.py": "",
        "ns/unused.py": "",
    }
    workers = {"w": {"entry": "w.py"}}
    for changed in ("src/ns/left.py", "ns/right.py"):
        data = compare(capsys, tmp_path, workers, old, {changed: "x = 1\n"}, "--source-root", "src")
        assert data["reasons"] == {"w": ["w.py", changed]}
    data = compare(capsys, tmp_path, workers, old, {"ns/unused.py": "x\n"}, "--source-root", "src")
    assert data["affected_workers"] == []


def test_stdlib_and_third_party_are_ignored(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    old = {
        "w.py": "import json, os.path, requests\nfrom redis import Redis\nimport local\n",
        "local.py": "",
        "README.md": "hello\n",
    }
    data = compare(capsys, tmp_path, {"w": {"entry": "w.py"}}, old, {"README.md": "changed\n"})
    assert data == {
        "changed_files": ["README.md"],
        "affected_workers": [],
        "reasons": {},
        "unaffected_workers": ["w"],
    }


@pytest.mark.parametrize(
    "lock",
    [
        "requirements.txt",
        "requirements-dev.txt",
        "requirements/base.txt",
        "requirements.lock",
        "poetry.lock",
        "uv.lock",
        "Pipfile.lock",
        "pyproject.toml",
        "setup.cfg",
        "setup.py",
    ],
)
def test_a_lock_or_requirements_change_affects_every_worker(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, lock: str
) -> None:
    old = {"a.py": "", "b.py": "", lock: "x==1\n", "notes.txt": ""}
    workers = {"a": {"entry": "a.py"}, "b": {"entry": "b.py"}}
    data = compare(capsys, tmp_path, workers, old, {lock: "x==2\n"})
    assert data["affected_workers"] == ["a", "b"]
    assert data["reasons"] == {"a": [lock], "b": [lock]}


def test_unparsable_file_affects_workers_that_reach_it_with_a_warning(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    old = {
        "w.py": "import broken\n",
        "v.py": "import fine\n",
        "broken.py": "def (:\n",
        "fine.py": "",
        "other.py": "",
    }
    old_dir, new_dir = trees(tmp_path, old, {"other.py": "x = 1\n"})
    spec = workers_file(tmp_path, {"w": {"entry": "w.py"}, "v": {"entry": "v.py"}})
    code = main(["affected", "--workers", spec, "--old", str(old_dir), "--new", str(new_dir)])
    out, err = capsys.readouterr()
    assert code == 0
    assert "affected    w: w.py -> broken.py" in out
    assert "unaffected  v" in out
    lines = err.splitlines()
    assert lines and all(line.startswith(WARNING) for line in lines)
    assert "broken.py" in err and "line 1" in err


def test_closure_of_the_old_tree_counts(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    old = {"w.py": "import legacy\n", "legacy.py": "x = 1\n"}
    data = compare(
        capsys, tmp_path, {"w": {"entry": "w.py"}}, old, {"w.py": "pass\n", "legacy.py": None}
    )
    assert data["changed_files"] == ["legacy.py", "w.py"]
    assert data["reasons"] == {"w": ["w.py"]}
    data = compare(capsys, tmp_path, {"w": {"entry": "w.py"}}, old, {"legacy.py": None})
    assert data["reasons"] == {"w": ["w.py", "legacy.py"]}


def test_changed_paths_relative_to_new_or_cwd(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write(tmp_path / "tree", {"w.py": "import a\n", "a.py": "", "b.py": ""})
    spec = workers_file(tmp_path, {"w": {"entry": "w.py"}, "x": {"entry": "b.py"}})
    data = affected(capsys, "--workers", spec, "--new", str(root), "--changed", "./a.py")
    assert data["changed_files"] == ["a.py"]
    assert data["reasons"] == {"w": ["w.py", "a.py"]}
    monkeypatch.chdir(root)
    data = affected(capsys, "--workers", spec, "--changed", str(root / "b.py"), "README")
    assert data["changed_files"] == ["README", "b.py"]
    assert data["reasons"] == {"x": ["b.py"]}
    assert data["unaffected_workers"] == ["w"]


def test_star_import_follows_all(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    old = {
        "w.py": "from pkg import *\n",
        "pkg/__init__.py": "__all__ = ['listed']\n",
        "pkg/listed.py": "",
        "pkg/hidden.py": "",
    }
    data = compare(capsys, tmp_path, {"w": {"entry": "w.py"}}, old, {"pkg/listed.py": "x\n"})
    assert data["reasons"] == {"w": ["w.py", "pkg/listed.py"]}
    data = compare(capsys, tmp_path, {"w": {"entry": "w.py"}}, old, {"pkg/hidden.py": "x\n"})
    assert data["affected_workers"] == []


FIELD_APP = {
    "provisioning/backup_worker.py": (
        "import os, sys\n"
        "sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'webapp'))\n"
        "from models import Order\n"
        "from worker_common import run\n"
    ),
    "provisioning/mail_worker.py": (
        "import sys\nsys.path.insert(0, '/srv/app/webapp')\nfrom mailer import send\n"
    ),
    "provisioning/worker_common.py": "import redis\n",
    "webapp/models.py": "from db import Base\nfrom validators import check\n",
    "webapp/db.py": "import sqlalchemy\n",
    "webapp/validators.py": "",
    "webapp/mailer.py": "import smtplib\n",
    "webapp/views.py": "from models import Order\n",
}
FIELD_WORKERS = {
    "backup": {"entry": "provisioning/backup_worker.py", "queues": ["backup"], "instances": 2},
    "mail": {"entry": ["provisioning/mail_worker.py"], "queues": ["mail"]},
}


@pytest.mark.parametrize(
    ("changed", "reasons"),
    [
        (
            "webapp/validators.py",
            {
                "backup": [
                    "provisioning/backup_worker.py",
                    "webapp/models.py",
                    "webapp/validators.py",
                ]
            },
        ),
        ("webapp/mailer.py", {"mail": ["provisioning/mail_worker.py", "webapp/mailer.py"]}),
        (
            "provisioning/worker_common.py",
            {"backup": ["provisioning/backup_worker.py", "provisioning/worker_common.py"]},
        ),
        ("webapp/views.py", {}),
    ],
)
def test_field_layout_with_sys_path_insert_and_source_root(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, changed: str, reasons: dict[str, Any]
) -> None:
    data = compare(
        capsys, tmp_path, FIELD_WORKERS, FIELD_APP, {changed: "# v2\n"}, "--source-root", "webapp"
    )
    assert data["reasons"] == reasons
    assert data["unaffected_workers"] == sorted(set(FIELD_WORKERS) - set(reasons))


SHOP = {
    "shop/__init__.py": "",
    "shop/models.py": "from shop.money import Money\n",
    "shop/money.py": "",
    "shop/email_utils.py": "import smtplib\n",
    "shop/reports/__init__.py": "",
    "shop/reports/monthly.py": "from shop import models\n",
    "shop/workers/__init__.py": "",
    "shop/workers/backup.py": "from shop.models import Order\n",
    "shop/workers/mail.py": "from shop.email_utils import send\n",
    "shop/workers/reports.py": "from shop.models import Order\nfrom shop.reports import monthly\n",
}
SHOP_WORKERS = {name: {"entry": f"shop.workers.{name}"} for name in ("backup", "mail", "reports")}


def test_shop_email_utils_change_affects_only_mail(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = compare(capsys, tmp_path, SHOP_WORKERS, SHOP, {"shop/email_utils.py": "# v2\n"})
    assert data["affected_workers"] == ["mail"]
    assert data["reasons"]["mail"] == ["shop/workers/mail.py", "shop/email_utils.py"]
    assert data["unaffected_workers"] == ["backup", "reports"]


def test_shop_models_change_affects_backup_and_reports(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = compare(capsys, tmp_path, SHOP_WORKERS, SHOP, {"shop/models.py": "# v2\n"})
    assert data["affected_workers"] == ["backup", "reports"]
    assert data["reasons"]["backup"] == ["shop/workers/backup.py", "shop/models.py"]
    assert data["unaffected_workers"] == ["mail"]
    data = compare(capsys, tmp_path, SHOP_WORKERS, SHOP, {"shop/money.py": "# v2\n"})
    assert data["affected_workers"] == ["backup", "reports"]
    assert data["reasons"]["reports"] == [
        "shop/workers/reports.py",
        "shop/models.py",
        "shop/money.py",
    ]
    assert data["unaffected_workers"] == ["mail"]


def test_text_output_has_one_line_per_worker(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    old_dir, new_dir = trees(tmp_path, SHOP, {"shop/email_utils.py": "# v2\n"})
    spec = workers_file(tmp_path, SHOP_WORKERS)
    code = main(["affected", "--workers", spec, "--old", str(old_dir), "--new", str(new_dir)])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    assert out.splitlines() == [
        "1 changed file",
        "affected    mail: shop/workers/mail.py -> shop/email_utils.py",
        "unaffected  backup",
        "unaffected  reports",
    ]


def test_cache_is_json_and_is_consulted(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, _own_cache: Path
) -> None:
    old = {"w.py": "import a\n", "a.py": "", "planted.py": ""}
    compare(capsys, tmp_path, {"w": {"entry": "w.py"}}, old, {"a.py": "x\n"})
    cache_file = _own_cache / CACHE_NAME
    cached = json.loads(cache_file.read_text())
    key = content_hash(b"import a\n")
    assert cached["entries"][key]["imports"] == [[0, "a", None]]
    # A cached entry is trusted: plant one saying w.py imports planted.py.
    cached["entries"][key]["imports"] = [[0, "planted", None]]
    cache_file.write_text(json.dumps(cached))
    data = compare(capsys, tmp_path, {"w": {"entry": "w.py"}}, old, {"planted.py": "x\n"})
    assert data["reasons"] == {"w": ["w.py", "planted.py"]}


def test_unwritable_cache_is_skipped(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("JOBFLEET_CACHE_DIR", str(blocker / "cache"))
    data = compare(capsys, tmp_path, SHOP_WORKERS, SHOP, {"shop/models.py": "# v2\n"})
    assert data["affected_workers"] == ["backup", "reports"]
    assert capsys.readouterr().err == ""


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JOBFLEET_CACHE_DIR", "/explicit")
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert cache_dir() == "/explicit"
    monkeypatch.delenv("JOBFLEET_CACHE_DIR")
    assert cache_dir() == "/xdg/jobfleet"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == os.path.join(str(tmp_path), ".cache", "jobfleet")


def usage_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = main(["affected", *args])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("jobfleet affected: ")
    return err


def test_bad_input_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    tree = write(tmp_path / "tree", {"w.py": ""})
    good = workers_file(tmp_path, {"w": {"entry": "w.py"}})
    t = str(tree)
    assert "no such directory" in usage_error(
        capsys, "--workers", good, "--old", str(tmp_path / "missing"), "--new", t
    )
    assert "--old needs --new" in usage_error(capsys, "--workers", good, "--old", t)
    assert "--changed" in usage_error(capsys, "--workers", good, "--new", t)
    assert "cannot read workers file" in usage_error(
        capsys, "--workers", str(tmp_path / "nope.yml"), "--changed", "w.py"
    )
    bad_yaml = tmp_path / "bad.yml"
    bad_yaml.write_text("workers: {w: [unclosed\n")
    assert "malformed YAML" in usage_error(capsys, "--workers", str(bad_yaml), "--changed", "w.py")
    unknown = workers_file(
        tmp_path, {"w": {"entry": "w.py"}, "x": {"entry": "nowhere.py"}}, "unknown.yml"
    )
    assert "'nowhere.py' not found" in usage_error(
        capsys, "--workers", unknown, "--new", t, "--changed", "w.py"
    )
    module = workers_file(tmp_path, {"m": {"entry": "no.such.module"}}, "module.yml")
    assert "not found" in usage_error(capsys, "--workers", module, "--new", t, "--changed", "w.py")
    no_entry = workers_file(tmp_path, {"w": {"queues": ["a"]}}, "no_entry.yml")
    assert "no 'entry'" in usage_error(capsys, "--workers", no_entry, "--new", t, "--changed", "w")
    empty = workers_file(tmp_path, {"w": {"entry": []}}, "empty.yml")
    assert "empty 'entry'" in usage_error(capsys, "--workers", empty, "--new", t, "--changed", "w")
    not_mapping = tmp_path / "list.yml"
    not_mapping.write_text("- just\n- a list\n")
    assert "'workers:' mapping" in usage_error(
        capsys, "--workers", str(not_mapping), "--new", t, "--changed", "w"
    )
    assert "inside the tree" in usage_error(
        capsys, "--workers", good, "--new", t, "--changed", "../escape.py"
    )


def test_exit_codes_in_a_subprocess(tmp_path: Path) -> None:
    old_dir, new_dir = trees(tmp_path, SHOP, {"shop/email_utils.py": "# v2\n"})
    spec = workers_file(tmp_path, SHOP_WORKERS)
    command = [sys.executable, "-c", "import sys; from jobfleet.cli import main; sys.exit(main())"]
    env = {**os.environ, "JOBFLEET_CACHE_DIR": str(tmp_path / "cache")}
    ok = subprocess.run(
        [*command, "affected", "--workers", spec, "--old", str(old_dir), "--new", str(new_dir),
         "--json"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["affected_workers"] == ["mail"]
    bad = subprocess.run(
        [*command, "affected", "--workers", spec, "--old", str(old_dir), "--json"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert (
        bad.stderr.strip() == "jobfleet affected: --old needs --new (the tree to compare it with)"
    )


def test_dotted_entry_loads_its_packages_and_entry_lists_are_unions(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    old = {
        "jobs/__init__.py": "",
        "jobs/worker.py": "import os\n",
        "scripts/run.py": "import tool\n",
        "scripts/tool.py": "",
        "tool.py": "",
    }
    workers = {"w": {"entry": ["jobs.worker", "scripts/run.py"]}, "v": {"entry": "jobs.worker"}}
    data = compare(capsys, tmp_path, workers, old, {"jobs/__init__.py": "x = 1\n"})
    assert data["reasons"] == {
        "v": ["jobs/worker.py", "jobs/__init__.py"],
        "w": ["jobs/worker.py", "jobs/__init__.py"],
    }
    # The script's own directory comes first on its search path: scripts/tool.py, not tool.py.
    data = compare(capsys, tmp_path, workers, old, {"scripts/tool.py": "x = 1\n"})
    assert data["reasons"] == {"w": ["scripts/run.py", "scripts/tool.py"]}
    data = compare(capsys, tmp_path, workers, old, {"tool.py": "x = 1\n"})
    assert data["affected_workers"] == []
