"""Which workers load a changed file: the engine behind ``jobfleet affected``.

A worker is affected when a changed file is one of its entries or lies in the import
closure of its entries, in the old tree or in the new one. A change to a dependency
lock or requirements file affects every worker; other non-Python files affect none. A
Python file that cannot be parsed hides its imports, so a worker that reaches it counts
as affected whenever a Python file changed (with a warning). Each affected worker gets
one reason: the shortest import chain from its entry to a changed file.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from jobfleet.affected_graph import Module, Resolver, script_module
from jobfleet.affected_parse import ParseCache, cache_dir
from jobfleet.affected_tree import Tree, diff_trees, parent_dir
from jobfleet.errors import UsageError

#: Dependency files whose change affects every worker (matched on the file name; the
#: requirements pattern also matches a tree path such as ``requirements/base.txt``).
#: ``requirements*.lock`` goes beyond the issue's list: examples/shop pins with one.
LOCK_PATTERNS = (
    "requirements*.txt",
    "requirements*.lock",
    "poetry.lock",
    "uv.lock",
    "Pipfile.lock",
    "pyproject.toml",
    "setup.cfg",
    "setup.py",
)


@dataclass(frozen=True)
class Worker:
    """One worker definition: a name and its entries (script paths or dotted modules)."""

    name: str
    entries: tuple[str, ...]


@dataclass(frozen=True)
class Result:
    """The answer: changed files, one import chain per affected worker, the rest."""

    changed_files: tuple[str, ...]
    reasons: dict[str, list[str]]
    unaffected_workers: tuple[str, ...]
    warnings: tuple[str, ...] = ()

    @property
    def affected_workers(self) -> list[str]:
        return sorted(self.reasons)

    def to_json(self) -> dict[str, Any]:
        return {
            "changed_files": list(self.changed_files),
            "affected_workers": self.affected_workers,
            "reasons": {name: list(self.reasons[name]) for name in self.affected_workers},
            "unaffected_workers": list(self.unaffected_workers),
        }


def is_lock_file(path: str) -> bool:
    name = posixpath.basename(path)
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in LOCK_PATTERNS) or (
        fnmatch.fnmatchcase(path, "requirements*.txt")
    )


def load_workers(path: str) -> list[Worker]:
    """Read ``workers: {NAME: {entry: PATH_OR_MODULE or [list], ...}}``; other keys are ignored."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
    except OSError as exc:
        raise UsageError(f"cannot read workers file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"workers file {path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "cannot parse"
        raise UsageError(f"malformed YAML in workers file {path}{where}: {problem}") from None
    if not isinstance(raw, dict) or "workers" not in raw:
        raise UsageError(f"workers file {path} needs a top-level 'workers:' mapping")
    definitions = raw["workers"] or {}
    if isinstance(definitions, list):  # a list of {name: ..., entry: ...} is accepted too
        if not all(isinstance(item, dict) and "name" in item for item in definitions):
            raise UsageError(f"workers file {path}: each listed worker needs a 'name'")
        definitions = {item["name"]: item for item in definitions}
    if not isinstance(definitions, dict):
        raise UsageError(f"workers file {path}: 'workers' must map worker names to definitions")
    workers = []
    for name, spec in definitions.items():
        if not isinstance(name, str) or not name:
            raise UsageError(f"workers file {path}: worker names must be non-empty strings")
        if not isinstance(spec, dict) or "entry" not in spec:
            raise UsageError(f"workers file {path}: worker {name!r} has no 'entry'")
        entry = spec["entry"]
        entries = [entry] if isinstance(entry, str) else entry
        if entries == []:
            raise UsageError(
                f"workers file {path}: worker {name!r} has an empty 'entry'; "
                "list the scripts or modules it loads"
            )
        if (
            not isinstance(entries, list)
            or not entries
            or not all(isinstance(item, str) and item.strip() for item in entries)
        ):
            raise UsageError(
                f"workers file {path}: worker {name!r}: 'entry' must be a path, "
                "a dotted module, or a list of them"
            )
        workers.append(Worker(name, tuple(_check_entry(path, name, e.strip()) for e in entries)))
    return workers


def _is_path(entry: str) -> bool:
    return entry.endswith(".py") or "/" in entry


def _check_entry(path: str, worker: str, entry: str) -> str:
    if _is_path(entry):
        return _tree_path(entry, f"workers file {path}: worker {worker!r}: entry {entry!r}")
    if not all(part.isidentifier() for part in entry.split(".")):
        raise UsageError(
            f"workers file {path}: worker {worker!r}: entry {entry!r} is neither a .py path "
            "nor a dotted module name"
        )
    return entry


def _tree_path(path: str, what: str) -> str:
    """A normalised tree-relative POSIX path; absolute or escaping paths are refused."""
    rel = posixpath.normpath(path.replace(os.sep, "/"))
    if rel.startswith("/") or rel == ".." or rel.startswith("../"):
        raise UsageError(f"{what} must be a path inside the tree")
    return "" if rel == "." else rel


def _tree(path: str, flag: str, label: str) -> Tree:
    if not os.path.isdir(path):
        raise UsageError(f"{flag} {path}: no such directory")
    return Tree(os.path.abspath(path), label)


def _changed_paths(root: str, paths: Sequence[str]) -> list[str]:
    out = set()
    for path in paths:
        rel = path
        if os.path.isabs(path):
            rel = os.path.relpath(os.path.realpath(path), os.path.realpath(root))
        rel = _tree_path(rel, f"--changed {path}")
        if not rel or os.path.isdir(os.path.join(root, rel)):
            raise UsageError(f"--changed {path} is a directory; list the changed files")
        out.add(rel)
    return sorted(out)


def analyze(
    workers: Sequence[Worker],
    *,
    old: str | None = None,
    new: str | None = None,
    changed: Sequence[str] | None = None,
    source_roots: Sequence[str] = (),
    cache_directory: str | None = None,
) -> Result:
    """Name the workers a change affects (see the module docstring for the rules)."""
    if old is not None and new is None:
        raise UsageError("--old needs --new (the tree to compare it with)")
    if changed is None and old is None:
        raise UsageError("give --old DIR --new DIR, or --changed PATH ...")
    new_tree = _tree(new if new is not None else os.getcwd(), "--new", "new")
    old_tree = _tree(old, "--old", "old") if old is not None else None
    trees = [new_tree] if old_tree is None else [old_tree, new_tree]
    roots = [_tree_path(root, f"--source-root {root}") for root in source_roots]
    for root in roots:
        if not any(tree.is_dir(root) for tree in trees):
            raise UsageError(f"--source-root {root}: no such directory in {new_tree.root}")
    if changed is not None:
        changed_files = _changed_paths(new_tree.root, changed)
    else:
        assert old_tree is not None
        changed_files = diff_trees(old_tree, new_tree)

    warnings: dict[str, None] = {}

    def on_error(tree: Tree, file: str, error: str) -> None:
        where = f" in the {tree.label} tree" if len(trees) > 1 else ""
        warnings[
            f"cannot parse {file}{where} ({error}); workers that import it count as affected"
        ] = None

    cache = ParseCache(cache_directory if cache_directory is not None else cache_dir())
    resolvers: dict[tuple[int, tuple[str, ...]], Resolver] = {}
    locks = [file for file in changed_files if is_lock_file(file)]
    changed_py = [file for file in changed_files if file.endswith(".py")]
    reasons: dict[str, list[str]] = {}
    for worker in workers:
        search = _search_path(worker, roots)
        candidates = [[lock] for lock in locks]
        found_entries: set[str] = set()
        for index, tree in enumerate(trees):
            key = (index, search)
            if key not in resolvers:
                resolvers[key] = Resolver(tree, search, cache, on_error)
            resolver = resolvers[key]
            named = _entries(worker, tree, resolver)
            found_entries.update(named)
            entries = list(named.values())
            if not changed_py or not entries:
                continue
            closure = resolver.closure(entries)
            for file in changed_py:
                if file in closure.parents:
                    candidates.append(closure.chain(file))
            candidates.extend(closure.chain(file) for file in closure.unparsable)
        missing = [entry for entry in worker.entries if entry not in found_entries]
        if missing:
            where = " or ".join(tree.root for tree in trees)
            raise UsageError(f"worker {worker.name!r}: entry {missing[0]!r} not found in {where}")
        if candidates:
            reasons[worker.name] = min(candidates, key=lambda chain: (len(chain), chain))
    cache.save()
    unaffected = sorted(worker.name for worker in workers if worker.name not in reasons)
    return Result(tuple(changed_files), reasons, tuple(unaffected), tuple(warnings))


def _search_path(worker: Worker, roots: Sequence[str]) -> tuple[str, ...]:
    """Entry script directories (``sys.path[0]``), then the source roots, then the root."""
    dirs = [parent_dir(entry) for entry in worker.entries if _is_path(entry)]
    return tuple(dict.fromkeys([*dirs, *roots, ""]))


def _entries(worker: Worker, tree: Tree, resolver: Resolver) -> dict[str, Module]:
    """The worker's entries present in ``tree``, by entry string."""
    found = {}
    for entry in worker.entries:
        if _is_path(entry):
            if tree.is_file(entry):
                found[entry] = script_module(entry)
            continue
        module = resolver.find(entry)
        if module is not None and module.file is not None:
            found[entry] = module
    return found
