"""`prefect server start` for `make serve`, with SQLite writers that wait their turn.

The project's one use of Prefect's internals (tests/test_prefect_compat.py holds it to them): drop
this module once Prefect begins its SQLite write transactions IMMEDIATE itself. Begun DEFERRED, a
request reads, then upgrades to a write lock; if another wrote in between, SQLite refuses at once
(SQLITE_BUSY_SNAPSHOT) and Prefect answers 503 (nine of ten runs created at once, here). IMMEDIATE,
as SQLite advises, takes the write lock first: a writer waits (busy_timeout, 60 s) instead of failing.
PostgreSQL needs none of this, and is left as Prefect has it.

    python -m ops.prefect_compat server start --host 127.0.0.1 --port 4200
"""

from __future__ import annotations

import sys
from contextlib import asynccontextmanager

from prefect.server.database.configurations import AioSqliteConfiguration

_begin = AioSqliteConfiguration.begin_transaction


@asynccontextmanager
async def _begin_immediate(self, session, with_for_update: bool = False):
    async with _begin(self, session, with_for_update=True) as transaction:
        yield transaction


def main() -> int:
    AioSqliteConfiguration.begin_transaction = _begin_immediate
    from prefect.cli import app

    return app()


if __name__ == "__main__":
    sys.exit(main())
