"""Module resolution and import closures inside one tree, for ``jobfleet affected``.

:class:`Resolver` mirrors Python's path-based import for one search path (a worker's
``sys.path`` restricted to the tree): a regular package (``a/__init__.py``) or a module
(``a.py``) in the first directory that has one wins; otherwise the ``a/`` directories
of every entry form a namespace package. Names not found in the tree (the standard
library, third-party packages) are ignored. Files are parsed only when a closure
reaches them, so the work is proportional to what the workers import.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from jobfleet.affected_parse import ImportData, ParseCache
from jobfleet.affected_tree import Tree, join

_BUILTIN = frozenset(sys.builtin_module_names)
_STDLIB = frozenset(getattr(sys, "stdlib_module_names", ()))


@dataclass(frozen=True)
class Module:
    """A module as the import system sees it.

    ``file`` is the tree-relative source (None for a namespace package), ``path`` the
    package's search directories (None for a plain module), and ``package`` the anchor
    of its relative imports ("" when it has none, as for a script run by path).
    """

    name: str
    file: str | None
    path: tuple[str, ...] | None
    package: str


def script_module(path: str) -> Module:
    """An entry script run by path: ``__main__``, with no package for relative imports."""
    return Module(f"__main__:{path}", path, None, "")


@dataclass
class Closure:
    """The files a set of entries loads, each with the file that first imports it."""

    parents: dict[str, str | None]
    unparsable: list[str]

    def chain(self, file: str) -> list[str]:
        """The import chain from an entry to ``file`` (tree-relative paths)."""
        chain = [file]
        parent = self.parents[file]
        while parent is not None:
            chain.append(parent)
            parent = self.parents[parent]
        chain.reverse()
        return chain


class Resolver:
    """Resolves module names and import edges for one tree and one search path."""

    def __init__(
        self,
        tree: Tree,
        search: tuple[str, ...],
        cache: ParseCache,
        on_error: Callable[[Tree, str, str], None],
    ) -> None:
        self.tree = tree
        self.search = search
        self._cache = cache
        self._on_error = on_error
        self._found: dict[str, Module | None] = {}
        self._edges: dict[str, tuple[Module, ...]] = {}
        self._data: dict[str, ImportData | None] = {}

    def find(self, name: str) -> Module | None:
        """The module ``name`` resolves to inside the tree, or None."""
        if name in self._found:
            return self._found[name]
        found: Module | None = None
        parent_name, _, last = name.rpartition(".")
        if last.isidentifier():
            if parent_name:
                parent = self.find(parent_name)
                if parent is not None and parent.path is not None:
                    found = self._search(name, parent.path, last)
            elif name not in _BUILTIN:
                found = self._search(name, self.search, last)
                if found is not None and found.file is None and name in _STDLIB:
                    found = None  # a regular stdlib package beats a namespace portion
        self._found[name] = found
        return found

    def _search(self, name: str, dirs: Iterable[str], last: str) -> Module | None:
        portions: list[str] = []
        package = name.rpartition(".")[0]
        for directory in dirs:
            listing = self.tree.listdir(directory)
            if last in listing.dirs:
                pkg_dir = join(directory, last)
                if "__init__.py" in self.tree.listdir(pkg_dir).files:
                    return Module(name, join(pkg_dir, "__init__.py"), (pkg_dir,), name)
                portions.append(pkg_dir)
            if f"{last}.py" in listing.files:
                return Module(name, join(directory, f"{last}.py"), None, package)
        if portions:
            return Module(name, None, tuple(portions), name)
        return None

    def imports(self, file: str) -> ImportData | None:
        """The parsed imports of a tree file (None when unreadable)."""
        if file in self._data:
            return self._data[file]
        data = None
        source = self.tree.read(file)
        digest = self.tree.digest(file)
        if source is not None and digest is not None:
            data = self._cache.get(digest, source, file)
            if data.error is not None:
                self._on_error(self.tree, file, data.error)
        self._data[file] = data
        return data

    def successors(self, module: Module) -> tuple[Module, ...]:
        """Every module loading ``module`` loads: its parent packages, then its imports."""
        cached = self._edges.get(module.name)
        if cached is not None:
            return cached
        out: dict[str, Module] = {}
        if module.file is not None and not module.name.startswith("__main__:"):
            self._load(module.name.rpartition(".")[0], out)
        data = self.imports(module.file) if module.file is not None else None
        for record in data.imports if data is not None else ():
            target = self._absolute(module.package, record.level, record.module)
            if target is None:
                continue
            found = self._load(target, out)
            if found is None or found.path is None or record.names is None:
                continue
            names: Iterable[str] = record.names
            if "*" in record.names:
                star = self.imports(found.file) if found.file is not None else None
                names = (star.all_names or ()) if star is not None else ()
            for attr in names:
                self._load(f"{target}.{attr}", out, prefixes=False)
        out.pop(module.name, None)
        edges = tuple(out.values())
        self._edges[module.name] = edges
        return edges

    @staticmethod
    def _absolute(package: str, level: int, module: str) -> str | None:
        if not level:
            return module or None
        if not package:
            return None  # a relative import outside a package fails in Python too
        parts = package.split(".")
        if level - 1 >= len(parts):
            return None
        base = ".".join(parts[: len(parts) - (level - 1)])
        return f"{base}.{module}" if module else base

    def _load(self, name: str, out: dict[str, Module], prefixes: bool = True) -> Module | None:
        """Add ``name`` (and, as ``import a.b`` does, its parents) to ``out``."""
        if not name:
            return None
        if not prefixes:
            found = self.find(name)
            if found is not None:
                out.setdefault(name, found)
            return found
        parts = name.split(".")
        found = None
        for index in range(1, len(parts) + 1):
            found = self.find(".".join(parts[:index]))
            if found is None:
                return None
            out.setdefault(found.name, found)
        return found

    def closure(self, entries: Iterable[Module]) -> Closure:
        """Breadth-first over the import graph, so each chain is a shortest one."""
        seen: set[str] = set()
        parents: dict[str, str | None] = {}
        unparsable: list[str] = []
        queue: list[tuple[Module, str | None]] = [(entry, None) for entry in entries]
        index = 0
        while index < len(queue):
            module, via = queue[index]
            index += 1
            if module.name in seen:
                continue
            seen.add(module.name)
            here = via
            if module.file is not None:
                if module.file not in parents:
                    parents[module.file] = via
                    data = self.imports(module.file)
                    if data is not None and data.error is not None:
                        unparsable.append(module.file)
                here = module.file
            queue.extend((nxt, here) for nxt in self.successors(module) if nxt.name not in seen)
        return Closure(parents, unparsable)
