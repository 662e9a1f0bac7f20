"""One application tree on disk, for ``jobfleet affected``: listings, file contents, diffs.

A :class:`Tree` lists each directory at most once (lazily, or all at once while diffing
two trees), so resolving thousands of imports costs set lookups, not ``stat`` calls.
Paths inside a tree are POSIX-style and relative to its root (``""`` is the root).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

#: Directories that never hold application code and whose contents churn between builds.
SKIPPED_DIRS = frozenset({"__pycache__", ".git", ".hg", ".svn"})
#: Files that are build products, not sources.
SKIPPED_SUFFIXES = (".pyc", ".pyo")


def join(directory: str, name: str) -> str:
    """Join a tree-relative directory and a name (``""`` is the tree root)."""
    return f"{directory}/{name}" if directory else name


def parent_dir(path: str) -> str:
    """The tree-relative directory holding ``path`` (``""`` for a top-level file)."""
    head, _, _ = path.rpartition("/")
    return head


def content_hash(data: bytes) -> str:
    """The key of the parse cache: a digest of the file's bytes."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass
class Listing:
    """The entries of one directory: regular files and subdirectories, by name."""

    files: frozenset[str]
    dirs: frozenset[str]


_EMPTY = Listing(frozenset(), frozenset())


@dataclass
class Tree:
    """An application tree: a root directory plus memoised listings and file contents."""

    root: str
    label: str
    _listings: dict[str, Listing] = field(default_factory=dict)
    _data: dict[str, bytes | None] = field(default_factory=dict)
    _hashes: dict[str, str | None] = field(default_factory=dict)

    def listdir(self, rel: str) -> Listing:
        """The listing of a tree-relative directory; empty when it does not exist."""
        cached = self._listings.get(rel)
        if cached is not None:
            return cached
        listing = _scan(os.path.join(self.root, rel) if rel else self.root)
        self._listings[rel] = listing
        return listing

    def is_dir(self, rel: str) -> bool:
        if not rel:
            return os.path.isdir(self.root)
        parent, _, name = rel.rpartition("/")
        return name in self.listdir(parent).dirs

    def is_file(self, rel: str) -> bool:
        parent, _, name = rel.rpartition("/")
        return name in self.listdir(parent).files

    def read(self, rel: str) -> bytes | None:
        """A file's bytes (memoised), or None when it cannot be read."""
        if rel in self._data:
            return self._data[rel]
        data = _read(os.path.join(self.root, rel))
        self._data[rel] = data
        return data

    def digest(self, rel: str) -> str | None:
        """The content hash of a file (memoised), or None when it cannot be read."""
        if rel in self._hashes:
            return self._hashes[rel]
        data = self.read(rel)
        value = None if data is None else content_hash(data)
        self._hashes[rel] = value
        return value

    def remember(self, rel: str, data: bytes, digest: str | None = None) -> None:
        """Record contents already read elsewhere (while diffing), so they are not reread."""
        self._data[rel] = data
        if digest is not None:
            self._hashes[rel] = digest

    def walk(self) -> dict[str, os.stat_result]:
        """Every file in the tree (tree-relative path -> stat), filling the listings.

        Symlinked directories are followed once each (a link loop is walked only once).
        """
        found: dict[str, os.stat_result] = {}
        seen: set[tuple[int, int]] = set()
        pending = [""]
        while pending:
            rel = pending.pop()
            path = os.path.join(self.root, rel) if rel else self.root
            try:
                info = os.stat(path)
                entries = list(os.scandir(path))
            except OSError:
                self._listings[rel] = _EMPTY
                continue
            if (info.st_dev, info.st_ino) in seen:
                self._listings[rel] = _EMPTY
                continue
            seen.add((info.st_dev, info.st_ino))
            files: list[str] = []
            dirs: list[str] = []
            for entry in entries:
                kind = _kind(entry)
                if kind == "dir" and entry.name not in SKIPPED_DIRS:
                    dirs.append(entry.name)
                    pending.append(join(rel, entry.name))
                elif kind == "file" and not entry.name.endswith(SKIPPED_SUFFIXES):
                    files.append(entry.name)
                    found[join(rel, entry.name)] = entry.stat()
            self._listings[rel] = Listing(frozenset(files), frozenset(dirs))
        return found


def _kind(entry: os.DirEntry[str]) -> str:
    try:
        if entry.is_dir():
            return "dir"
        if entry.is_file():
            return "file"
    except OSError:
        pass
    return "other"


def _scan(path: str) -> Listing:
    try:
        entries = list(os.scandir(path))
    except OSError:
        return _EMPTY
    files = []
    dirs = []
    for entry in entries:
        kind = _kind(entry)
        if kind == "dir":
            dirs.append(entry.name)
        elif kind == "file":
            files.append(entry.name)
    return Listing(frozenset(files), frozenset(dirs))


def diff_trees(old: Tree, new: Tree) -> list[str]:
    """Files added, deleted or modified between two trees, compared by content (sorted).

    Sizes are compared first and hard links to one inode count as equal, so only files
    of equal size are read, each once; their bytes are kept for the import parser.
    """
    old_files = old.walk()
    new_files = new.walk()
    changed = set(old_files.keys() ^ new_files.keys())
    for rel in old_files.keys() & new_files.keys():
        a, b = old_files[rel], new_files[rel]
        if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
            continue
        if a.st_size != b.st_size:
            changed.add(rel)
            continue
        keep = rel.endswith(".py")
        data_a = old.read(rel) if keep else _read(os.path.join(old.root, rel))
        data_b = new.read(rel) if keep else _read(os.path.join(new.root, rel))
        if data_a is None or data_b is None or data_a != data_b:
            changed.add(rel)
        elif keep:
            digest = content_hash(data_a)
            old.remember(rel, data_a, digest)
            new.remember(rel, data_a, digest)
    return sorted(changed)


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None
