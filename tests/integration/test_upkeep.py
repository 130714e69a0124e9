"""The store's background work (``Store.maintain``: PostgreSQL's hold lease) runs in the app's
TaskGroup: a failure there ends the app visibly instead of dying unseen in a free task."""

from __future__ import annotations

from pathlib import Path

import pytest

from relayproxy import app
from relayproxy.config.settings import load_config
from relayproxy.store import schema
from relayproxy.store.facade import Store


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Broken(Store):
    closed = False

    async def maintain(self) -> None:
        raise RuntimeError("the lease task broke")

    async def close(self) -> None:
        _Broken.closed = True
        await super().close()


@pytest.mark.anyio
async def test_a_failing_store_upkeep_ends_the_app_with_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_path = tmp_path / "config.toml"
    config_path.write_text('[server]\nlisten = "127.0.0.1:0"\ndatabase = "relay.db"\n')
    config = load_config(config_path)

    async def broken_store(_config: object) -> Store:
        return _Broken(*await schema.connect(tmp_path / "relay.db"))

    monkeypatch.setattr(app, "open_store_for", broken_store)
    with pytest.raises(ExceptionGroup) as raised:
        await app.run_gateway(config, host="127.0.0.1", port=0, ready=lambda _addresses: None)
    assert raised.group_contains(RuntimeError, match="the lease task broke")
    assert _Broken.closed  # and the store was still closed
