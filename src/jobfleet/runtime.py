"""The process-wide handles: config, ledger, and a Redis connection opened on first use."""

from __future__ import annotations

import sys
from functools import cached_property
from typing import IO, TYPE_CHECKING

from jobfleet.config import Config, load_config

if TYPE_CHECKING:
    from redis import Redis
    from rq import Queue

    from jobfleet.ledger import Ledger
    from jobfleet.worker_ledger import WorkerLedger

REDIS_CONNECT_TIMEOUT = 3.0
"""Seconds to wait for a TCP connection to Redis before calling it unreachable."""

REDIS_SOCKET_TIMEOUT = 10.0
"""Seconds to wait for a Redis reply (CLI and enqueue; the worker sets its own)."""


class Runtime:
    """Config plus the connections built from it; cheap to create, lazy to connect."""

    def __init__(self, config: Config, log_stream: IO[str] | None = None) -> None:
        self.config = config
        self.log_stream = log_stream

    @classmethod
    def from_path(cls, path: str | None = None, log_stream: IO[str] | None = None) -> Runtime:
        return cls(load_config(path), log_stream)

    @property
    def stream(self) -> IO[str]:
        return self.log_stream or sys.stdout

    @cached_property
    def ledger(self) -> Ledger:
        """The SQLAlchemy ledger (CLI, reaper, poller)."""
        from jobfleet.ledger import Ledger

        return Ledger(self.config.database_url)

    @cached_property
    def worker_ledger(self) -> WorkerLedger:
        """The RQ worker's ledger: the same transitions without SQLAlchemy."""
        from jobfleet.worker_ledger import WorkerLedger

        return WorkerLedger(self.config.database_url)

    @cached_property
    def redis(self) -> Redis:
        from redis import Redis

        return Redis.from_url(
            self.config.require_redis(),
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT,
            socket_timeout=REDIS_SOCKET_TIMEOUT,
        )

    def rq_queue(self, name: str) -> Queue:
        from rq import Queue
        from rq.serializers import JSONSerializer

        return Queue(name, connection=self.redis, serializer=JSONSerializer)

    def has_rq_queues(self) -> bool:
        return any(q.mode == "rq" for q in self.config.queues.values())
