"""The upgrade-under-load scenario (integration/upgrade_load.py) at test scale: three upgrades back to back
under steady traffic and new logins, with zero refused or reset connects, lost messages, duplicates to
resumed sessions and failed resumes."""

from __future__ import annotations

from pathlib import Path

import pytest

from integration.upgrade_load import run


@pytest.mark.slow
async def test_three_upgrades_under_load_lose_nothing(tmp_path: Path) -> None:
    result = await run(clients=16, rate=20.0, upgrades=3, between=3.0, drain_rate=50.0, directory=tmp_path)

    assert result["upgrade_exit_codes"] == [0, 0, 0]
    assert result["sent"] > 100
    assert result["lost"] == 0, result["lost_ids"]
    assert result["duplicates"] == 0
    assert result["failed_resumes"] == 0
    assert result["resumes"] >= 3 * 12  # every session with stream management moved three times
    assert result["refused_or_reset"] == 0, result["connect_errors"]
    assert result["connects"] > 0
    assert result["newcomer_failures"] == 0
    assert result["newcomers"] > 0
