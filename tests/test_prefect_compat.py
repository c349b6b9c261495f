"""The one use of Prefect's internals (ops/prefect_compat.py), held to what it relies on.

If a test here fails after Prefect is upgraded, the workaround needs a look: dropped if
Prefect begins its SQLite writes IMMEDIATE itself, mended if its internals moved.
"""

import asyncio
import inspect
from contextlib import asynccontextmanager

from prefect.server.database.configurations import AioSqliteConfiguration

from ops import prefect_compat


def test_prefect_still_begins_sqlite_transactions_deferred_unless_it_is_told_it_will_write():
    method = AioSqliteConfiguration.begin_transaction
    assert list(inspect.signature(method).parameters) == ["self", "session", "with_for_update"]
    assert '"IMMEDIATE" if with_for_update else "DEFERRED"' in inspect.getsource(method)


def test_the_patch_begins_every_transaction_immediate(monkeypatch):
    asked = []

    @asynccontextmanager
    async def begin(self, session, with_for_update=False):
        asked.append(with_for_update)
        yield "transaction"

    monkeypatch.setattr(prefect_compat, "_begin", begin)

    async def one() -> str:
        async with prefect_compat._begin_immediate(None, None) as transaction:
            return transaction

    assert asyncio.run(one()) == "transaction" and asked == [True]
