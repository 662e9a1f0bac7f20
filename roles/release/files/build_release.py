#!/usr/bin/env python3
"""Build (or find in the cache) the wheelhouse of one release, on the controller.

The release id is a hash of the INPUTS: the application's source tree, the runtime's
``pyproject.toml`` and ``src/jobfleet``, and the dependency lock. Wheels are not
byte-reproducible, so hashing them would make every run a new release.

Prints one JSON object: ``{"id": ID, "path": DIR, "changed": bool}``. ``--id-only``
prints the id without building. DIR holds ``src/`` (the app tree), ``wheels/`` and
``wheels/install.txt`` (every wheel as ``name==version``), and ``release.tar`` holding both.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

#: Directory and file names that are build artefacts, never inputs.
SKIP_DIRS = frozenset({"__pycache__", "build", "dist", ".pytest_cache", ".mypy_cache"})
SKIP_SUFFIXES = (".pyc", ".pyo", ".egg-info")
#: One archive per release, shipped in a single transfer: ``src/`` and ``wheels/``.
ARCHIVE = "release.tar"
#: Hex digits of the sha256 kept in a release id.
ID_LENGTH = 16


def tree_files(root: Path) -> list[Path]:
    """Files under root, sorted, without build artefacts."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in SKIP_DIRS and not d.endswith(SKIP_SUFFIXES)
        )
        found.extend(
            Path(dirpath, name) for name in sorted(filenames) if not name.endswith(SKIP_SUFFIXES)
        )
    return found


def release_id(app: Path, runtime: Path, lock: Path) -> str:
    digest = hashlib.sha256()
    inputs = [("app", app, p) for p in tree_files(app)]
    inputs += [("runtime", runtime, runtime / "pyproject.toml")]
    inputs += [("runtime", runtime, p) for p in tree_files(runtime / "src" / "jobfleet")]
    inputs += [("lock", lock.parent, lock)]
    for label, base, path in inputs:
        digest.update(f"{label}:{path.relative_to(base)}\0".encode())
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:ID_LENGTH]


def stage_runtime(runtime: Path, dest: Path) -> None:
    """A clean copy of the runtime project, so the build never writes into the repo."""
    dest.mkdir()
    shutil.copy2(runtime / "pyproject.toml", dest / "pyproject.toml")
    readme = runtime / "README.md"
    if readme.is_file():
        shutil.copy2(readme, dest / "README.md")
    else:
        (dest / "README.md").write_text("jobfleet\n")
    for path in tree_files(runtime / "src" / "jobfleet"):
        target = dest / path.relative_to(runtime)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


def stage_app(app: Path, dest: Path) -> None:
    for path in tree_files(app):
        target = dest / path.relative_to(app)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise SystemExit(f"build_release: {' '.join(args[:2])} failed: {' | '.join(tail)}")


def build(app: Path, runtime: Path, lock: Path, out: Path) -> None:
    wheels = out / "wheels"
    wheels.mkdir(parents=True)
    stage_app(app, out / "src")
    with tempfile.TemporaryDirectory(prefix="jobfleet-runtime-") as tmp:
        stage_runtime(runtime, Path(tmp) / "jobfleet")
        pip("wheel", "--no-deps", "-w", str(wheels), str(Path(tmp) / "jobfleet"))
    pip("wheel", "--no-deps", "-w", str(wheels), str(out / "src"))
    pip("wheel", "--no-deps", "-w", str(wheels), "-r", str(lock))
    for leftover in (out / "src").glob("*.egg-info"):
        shutil.rmtree(leftover)
    shutil.rmtree(out / "src" / "build", ignore_errors=True)
    pins = sorted("{}=={}".format(*whl.name.split("-")[:2]) for whl in wheels.glob("*.whl"))
    (wheels / "install.txt").write_text("".join(f"{pin}\n" for pin in pins))
    with tarfile.open(out / ARCHIVE, "w") as archive:
        for part in ("src", "wheels"):
            archive.add(out / part, arcname=part, filter=_root_owned)


def _root_owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app-src", type=Path, required=True)
    parser.add_argument("--runtime-src", type=Path, required=True)
    parser.add_argument("--lock", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--id-only", action="store_true")
    args = parser.parse_args()
    for need in (args.app_src / "pyproject.toml", args.runtime_src / "pyproject.toml", args.lock):
        if not need.is_file():
            raise SystemExit(f"build_release: missing {need}")
    rid = release_id(args.app_src.resolve(), args.runtime_src.resolve(), args.lock.resolve())
    final = args.cache.resolve() / rid
    changed = False
    if not args.id_only and not (final / ARCHIVE).is_file():
        args.cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{rid}-", dir=args.cache) as tmp:
            build(
                args.app_src.resolve(),
                args.runtime_src.resolve(),
                args.lock.resolve(),
                Path(tmp) / "r",
            )
            shutil.rmtree(final, ignore_errors=True)
            os.rename(Path(tmp) / "r", final)
        changed = True
    print(json.dumps({"id": rid, "path": str(final), "changed": changed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
