"""The imports of one Python source file, and a JSON cache of them keyed by content hash.

Only what the import graph needs is kept: one :class:`ImportRecord` per import (the
``import``/``from`` statements anywhere in the file, including inside functions, plus
``importlib.import_module("literal")`` and ``__import__("literal")`` calls), the
module's literal ``__all__``, and, for a file that does not parse, the error.

The cache is one JSON file (never pickle) in ``$JOBFLEET_CACHE_DIR``, else
``$XDG_CACHE_HOME/jobfleet``, else ``~/.cache/jobfleet``. It is written atomically and
only when a run parsed something new; a cache that cannot be read or written is ignored.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

#: Bump when the shape of the cached data changes; the parser's Python version is part
#: of the key too, since a newer grammar may parse what an older one rejects.
SCHEMA = 1
CACHE_NAME = f"affected-imports-v{SCHEMA}-py{sys.version_info[0]}{sys.version_info[1]}.json"
#: Entries kept in the cache file; the ones used by the latest run are kept first.
MAX_ENTRIES = 50_000


class ImportRecord(NamedTuple):
    """``level`` dots, then ``module``; ``names`` for ``from ... import names``, else None."""

    level: int
    module: str
    names: tuple[str, ...] | None


@dataclass(frozen=True)
class ImportData:
    """What the import graph needs from one file."""

    imports: tuple[ImportRecord, ...]
    all_names: tuple[str, ...] | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "imports": [
                [r.level, r.module, None if r.names is None else list(r.names)]
                for r in self.imports
            ],
            "all": None if self.all_names is None else list(self.all_names),
            "error": self.error,
        }

    @classmethod
    def from_json(cls, raw: Any) -> ImportData:
        """Rebuild cached data; raises ValueError/TypeError/KeyError when it is malformed."""
        records = []
        for level, module, names in raw["imports"]:
            if not isinstance(level, int) or not isinstance(module, str):
                raise ValueError("bad import record")
            records.append(
                ImportRecord(level, module, None if names is None else tuple(map(str, names)))
            )
        all_names = raw["all"]
        error = raw["error"]
        if error is not None and not isinstance(error, str):
            raise ValueError("bad error")
        return cls(
            tuple(records),
            None if all_names is None else tuple(map(str, all_names)),
            error,
        )


_IMPORT_CALLS = ("import_module", "__import__")


def parse_imports(source: bytes, filename: str) -> ImportData:
    """Parse ``source`` and collect its imports; a syntax error becomes ``error``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences and the like
            tree = ast.parse(source, filename)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        line = getattr(exc, "lineno", None)
        message = getattr(exc, "msg", None) or str(exc)
        return ImportData((), None, f"line {line}: {message}" if line else message)
    records: list[ImportRecord] = []
    nested = _statements(tree.body, records, top_level_only=True)
    # Every import statement spells "import". When the top level holds them all, no
    # function or class body can hide another one, and the rest of the tree is skipped.
    if source.count(b"import") > nested:
        records.clear()
        _statements(tree.body, records, top_level_only=False)
    if any(name.encode() in source for name in _IMPORT_CALLS):
        _calls(tree, records)
    return ImportData(tuple(records), _all_names(tree.body))


_BODIES: dict[type[ast.stmt], tuple[str, ...]] = {
    ast.FunctionDef: ("body",),
    ast.AsyncFunctionDef: ("body",),
    ast.ClassDef: ("body",),
    ast.If: ("body", "orelse"),
    ast.For: ("body", "orelse"),
    ast.AsyncFor: ("body", "orelse"),
    ast.While: ("body", "orelse"),
    ast.With: ("body",),
    ast.AsyncWith: ("body",),
    ast.Try: ("body", "orelse", "finalbody"),
    ast.TryStar: ("body", "orelse", "finalbody"),
}


def _statements(body: list[ast.stmt], out: list[ImportRecord], *, top_level_only: bool) -> int:
    """Collect import statements (returns how many), descending into statement bodies only.

    Imports are statements, so expressions (the bulk of a tree) are never visited.
    """
    count = 0
    stack = [body]
    while stack:
        for node in stack.pop():
            if isinstance(node, ast.Import):
                count += 1
                out.extend(ImportRecord(0, alias.name, None) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                count += 1
                names = tuple(alias.name for alias in node.names)
                out.append(ImportRecord(node.level or 0, node.module or "", names))
            elif top_level_only:
                continue
            elif type(node) in _BODIES:
                stack.extend(getattr(node, attr) for attr in _BODIES[type(node)])
                if isinstance(node, ast.Try | ast.TryStar):
                    stack.extend(handler.body for handler in node.handlers)
            elif isinstance(node, ast.Match):
                stack.extend(case.body for case in node.cases)
    return count


def _calls(tree: ast.Module, out: list[ImportRecord]) -> None:
    """``importlib.import_module("a.b")``, ``import_module(".b", "a")``, ``__import__("a")``."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name not in _IMPORT_CALLS:
            continue
        target = _literal(node.args[0])
        if not target:
            continue
        stripped = target.lstrip(".")
        level = len(target) - len(stripped)
        if level and name == "import_module":
            anchor = _literal(node.args[1]) if len(node.args) > 1 else None
            if anchor is None:
                for keyword in node.keywords:
                    if keyword.arg == "package":
                        anchor = _literal(keyword.value)
            if anchor:  # a literal package: make it absolute, as importlib does
                parts = anchor.split(".")
                if level - 1 >= len(parts):
                    continue
                base = ".".join(parts[: len(parts) - (level - 1)])
                stripped, level = (f"{base}.{stripped}" if stripped else base), 0
        elif level:
            continue  # __import__ with dots needs globals(); Python rarely sees it
        out.append(ImportRecord(level, stripped, None))


def _literal(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _all_names(body: list[ast.stmt]) -> tuple[str, ...] | None:
    """A module-level ``__all__ = [...]`` of string literals (for ``from pkg import *``)."""
    for node in body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
            and isinstance(node.value, ast.List | ast.Tuple)
        ):
            names = [_literal(item) for item in node.value.elts]
            return tuple(name for name in names if name)
    return None


def cache_dir() -> str:
    """Where the parse cache lives (see the module docstring)."""
    explicit = os.environ.get("JOBFLEET_CACHE_DIR")
    if explicit:
        return explicit
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = xdg if xdg else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jobfleet")


class ParseCache:
    """Parse results by content hash: in memory for this run, on disk between runs."""

    def __init__(self, directory: str | None) -> None:
        self._path = os.path.join(directory, CACHE_NAME) if directory else None
        self._stored: dict[str, Any] = {}
        self._used: dict[str, ImportData] = {}
        self._new = 0
        self.hits = 0
        self.parsed = 0
        if self._path is not None:
            self._stored = _load(self._path)

    def get(self, digest: str, source: bytes, filename: str) -> ImportData:
        """The imports of ``source`` whose hash is ``digest``: from the cache or parsed now."""
        found = self._used.get(digest)
        if found is not None:
            return found
        raw = self._stored.get(digest)
        if raw is not None:
            try:
                found = ImportData.from_json(raw)
                self.hits += 1
            except (KeyError, TypeError, ValueError):
                found = None
        if found is None:
            found = parse_imports(source, filename)
            self.parsed += 1
            self._new += 1
        self._used[digest] = found
        return found

    def save(self) -> None:
        """Write the cache if this run parsed anything new; any OSError is ignored."""
        if self._path is None or not self._new:
            return
        entries: dict[str, Any] = {key: data.to_json() for key, data in self._used.items()}
        for key, raw in self._stored.items():
            if len(entries) >= MAX_ENTRIES:
                break
            entries.setdefault(key, raw)
        directory = os.path.dirname(self._path)
        try:
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".affected-", suffix=".tmp", dir=directory)
        except OSError:
            return
        try:
            text = json.dumps({"schema": SCHEMA, "entries": entries}, separators=(",", ":"))
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(tmp, self._path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self._new = 0


def _load(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
        return {}
    entries = raw.get("entries")
    return entries if isinstance(entries, dict) else {}
