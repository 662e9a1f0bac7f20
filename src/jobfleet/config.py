"""The one config file (YAML), its defaults and its validation.

Path: ``--config`` beats ``$JOBFLEET_CONFIG``, which beats :data:`DEFAULT_PATH`.
``$JOBFLEET_REDIS_URL`` and ``$JOBFLEET_DATABASE_URL`` override the file. Every mistake is
a :class:`~jobfleet.errors.ConfigError`: one line naming the problem, exit code 2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from jobfleet.errors import ConfigError

DEFAULT_PATH = "/etc/jobfleet/jobfleet.yml"
"""Where the bundle installs the config (root:jobfleet, 0640)."""

DEFAULT_DATABASE_URL = "sqlite:////var/lib/jobfleet/ledger.db"
"""The embedded SQLite ledger, used when the file names no database."""

MODES = ("rq", "db", "celery")
"""Dispatch modes: ``rq`` sends jobs through Redis, ``db`` leaves them to the poller,
``celery`` sends them to Celery workers (Redis broker; :mod:`jobfleet.celery`)."""

BROKER_MODES = ("rq", "celery")
"""Modes whose jobs travel through Redis (``redis_url`` is then required)."""

_QUEUE_KEYS = {"mode", "max_attempts", "timeout"}


@dataclass(frozen=True)
class QueueConfig:
    """One queue: how its jobs travel, how often they may run, how long each may take."""

    name: str
    mode: str = "rq"
    max_attempts: int = 3
    timeout: int = 600


@dataclass(frozen=True)
class Config:
    """Everything the runtime reads from the config file."""

    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str | None = None
    queues: dict[str, QueueConfig] = field(
        default_factory=lambda: {"default": QueueConfig("default")}
    )
    heartbeat_interval: float = 5.0
    orphan_after: float = 15.0
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    fatal_exceptions: tuple[str, ...] = ()
    poll_interval: float = 1.0
    path: str | None = None

    def queue(self, name: str) -> QueueConfig:
        """The queue called ``name``; an unknown name is a usage error."""
        try:
            return self.queues[name]
        except KeyError:
            known = ", ".join(sorted(self.queues)) or "none"
            raise ConfigError(f"unknown queue {name!r} (configured: {known})") from None

    def require_redis(self) -> str:
        """The Redis URL, or a config error saying that rq mode needs one."""
        if not self.redis_url:
            raise ConfigError("redis_url is not set, but a queue is in rq or celery mode")
        return self.redis_url


_SCALARS = ("heartbeat_interval", "orphan_after", "backoff_base", "backoff_max", "poll_interval")


def config_path(explicit: str | None = None) -> str:
    """The config path to use: the flag, else ``$JOBFLEET_CONFIG``, else the default."""
    return explicit or os.environ.get("JOBFLEET_CONFIG") or DEFAULT_PATH


def load_config(path: str | None = None) -> Config:
    """Read, validate and return the config; apply the environment overrides."""
    resolved = config_path(path)
    try:
        text = Path(resolved).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {resolved} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {resolved}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{resolved}: malformed YAML{where}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{resolved}: expected a mapping at the top level")
    return parse_config(raw, resolved)


def parse_config(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate a mapping (as read from YAML) and build a :class:`Config`."""
    known = set(Config.__dataclass_fields__) - {"path"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}")
    values: dict[str, Any] = {"path": source}
    for key in _SCALARS:
        if key in raw:
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"{source}: {key} must be a non-negative number, got {value!r}")
            values[key] = float(value)
    if "fatal_exceptions" in raw:
        names = raw["fatal_exceptions"]
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise ConfigError(f"{source}: fatal_exceptions must be a list of dotted class names")
        values["fatal_exceptions"] = tuple(names)
    database_url = os.environ.get("JOBFLEET_DATABASE_URL") or raw.get("database_url")
    if database_url is not None:
        values["database_url"] = _check_url(database_url, ("sqlite", "postgresql"), source)
    redis_url = os.environ.get("JOBFLEET_REDIS_URL") or raw.get("redis_url")
    if redis_url is not None:
        values["redis_url"] = _check_url(redis_url, ("redis", "rediss", "unix"), source)
    if "queues" in raw:
        values["queues"] = _parse_queues(raw["queues"], source)
    config = Config(**values)
    if any(q.mode in BROKER_MODES for q in config.queues.values()) and not config.redis_url:
        raise ConfigError(f"{source}: redis_url is required when a queue is in rq or celery mode")
    return config


def _parse_queues(raw: Any, source: str) -> dict[str, QueueConfig]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{source}: queues must be a non-empty mapping of name to settings")
    queues: dict[str, QueueConfig] = {}
    for name, settings in raw.items():
        if not isinstance(name, str) or not name or "," in name:
            raise ConfigError(f"{source}: bad queue name {name!r}")
        settings = settings or {}
        if not isinstance(settings, dict):
            raise ConfigError(f"{source}: queue {name!r} must be a mapping")
        unknown = sorted(set(settings) - _QUEUE_KEYS)
        if unknown:
            raise ConfigError(f"{source}: queue {name!r}: unknown key {unknown[0]!r}")
        mode = settings.get("mode", "rq")
        if mode not in MODES:
            allowed = ", ".join(MODES)
            raise ConfigError(f"{source}: queue {name!r}: mode must be {allowed}; got {mode!r}")
        ints = {}
        for key, default in (("max_attempts", 3), ("timeout", 600)):
            value = settings.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"{source}: queue {name!r}: {key} must be a positive integer, got {value!r}"
                )
            ints[key] = value
        queues[name] = QueueConfig(name, mode, ints["max_attempts"], ints["timeout"])
    return queues


def _check_url(url: Any, schemes: tuple[str, ...], source: str) -> str:
    if not isinstance(url, str) or not url:
        raise ConfigError(f"{source}: a URL must be a non-empty string")
    scheme = urlsplit(url).scheme.split("+", 1)[0]
    if scheme not in schemes:
        from jobfleet.errors import redact

        allowed = ", ".join(f"{s}://" for s in schemes)
        raise ConfigError(f"{source}: bad URL {redact(url)!r} (expected {allowed})")
    return url
