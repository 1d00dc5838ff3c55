"""Error translation at the SQL repositories' boundary (nitro/storage/sql_base.py `translated`): the driver's
errors become ours, a transaction chosen as a deadlock victim (MariaDB error 1213) is run again at most twice,
and anything else passes through unchanged."""

from __future__ import annotations

import pytest
from sqlalchemy import exc

from nitro.storage.errors import NoSuchAccount, StorageError, StorageUnavailable
from nitro.storage.sql_base import translate_errors, translated


class DriverError(Exception):
    """What a DBAPI driver raises; `args[0]` is MariaDB's error number."""


def operational(code: int) -> exc.OperationalError:
    return exc.OperationalError("UPDATE …", None, DriverError(code, "message"))


class Flaky:
    """A repository method that fails with each of `errors` in turn, then answers."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    @translated
    async def write(self, value: int) -> int:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return value


async def test_a_deadlock_victim_is_run_again_at_most_twice() -> None:
    twice = Flaky(operational(1213), operational(1213))
    assert await twice.write(5) == 5
    assert twice.calls == 3
    thrice = Flaky(operational(1213), operational(1213), operational(1213))
    with pytest.raises(StorageUnavailable, match="DriverError") as caught:
        await thrice.write(5)
    assert thrice.calls == 3
    assert isinstance(caught.value.__cause__, exc.OperationalError)


async def test_other_backend_errors_are_unavailable_at_once_and_request_errors_are_ours() -> None:
    down = Flaky(operational(2013))  # lost connection: not retried here
    with pytest.raises(StorageUnavailable):
        await down.write(1)
    assert down.calls == 1
    timed_out = Flaky(TimeoutError("pool"))
    with pytest.raises(StorageUnavailable, match="TimeoutError"):
        await timed_out.write(1)
    bad = Flaky(exc.IntegrityError("INSERT …", None, DriverError(1062, "duplicate")))
    with pytest.raises(StorageError) as caught:
        await bad.write(1)
    assert not isinstance(caught.value, StorageUnavailable)
    assert bad.calls == 1


async def test_our_own_errors_and_others_pass_through_unchanged() -> None:
    ours = NoSuchAccount("juliet")
    with pytest.raises(NoSuchAccount) as caught:
        await Flaky(ours).write(1)
    assert caught.value is ours
    with pytest.raises(ValueError, match="username"):
        await Flaky(ValueError("a username is 1 to 1023 bytes")).write(1)
    with pytest.raises(StorageUnavailable), translate_errors():
        raise operational(1213)  # the context manager translates without retrying
