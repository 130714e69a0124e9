"""The LiteLLM SDK as a client (``anthropic/`` provider, streaming): it stops reading an Anthropic
stream at the ``message_delta`` that carries ``stop_reason`` and usage, without waiting for
``message_stop``. Through the gateway to an Anthropic upstream whose ``message_stop`` comes late
(40 ms) or never (``tailhang``: the stream ends only when the client or the gateway gives up), the
request is completed and billed once."""

from __future__ import annotations

import os
import sqlite3

import openai
import pytest

from tests.e2e.conftest import Gateway
from tests.e2e.test_answered import USAGE, cost

pytestmark = [
    pytest.mark.e2e,
    # LiteLLM's own import-time noise (its pydantic models), not the gateway's:
    pytest.mark.filterwarnings("ignore:.*ReadOnly.*:UserWarning"),
]

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network at import
try:
    import litellm
except ImportError:
    # LiteLLM needs openai 2+: the previous-SDK run (openai 1.x) has no LiteLLM; every other run must.
    if not openai.__version__.startswith("1."):
        raise
    pytest.skip("LiteLLM is not installed beside the openai 1.x SDK", allow_module_level=True)


@pytest.mark.parametrize("scenario", ["tail40", "tailhang"])
def test_litellm_anthropic_stream_with_a_late_message_stop_is_billed_once(gateway: Gateway, scenario: str) -> None:
    model, seq = f"an-{scenario}", gateway.last_seq()
    stream = litellm.completion(
        model=f"anthropic/{model}",
        messages=[{"role": "user", "content": "Hello"}],
        stream=True,
        max_tokens=256,
        api_base=gateway.base_url,
        api_key=gateway.key,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert text == "Hello! 👋 How can I help you today?"
    rec = gateway.record_after(seq, model)
    assert (rec["outcome"], rec["billed"], rec["cost_microusd"]) == ("completed", 1, cost("an")), rec
    assert (rec["input_tokens"], rec["output_tokens"]) == (USAGE["an"][0], USAGE["an"][2])
    with sqlite3.connect(gateway.db) as db:
        rows = db.execute("SELECT COUNT(*) FROM usage WHERE seq > ? AND model = ?", (seq, model)).fetchone()[0]
        charges = db.execute(
            "SELECT COUNT(*) FROM ledger WHERE kind = 'charge' AND request_id = ?", (rec["request_id"],)
        ).fetchone()[0]
    assert (rows, charges) == (1, 1)
