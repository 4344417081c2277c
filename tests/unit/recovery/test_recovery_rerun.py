"""One transparent re-run after a recovered fault, only while nothing has reached the caller (issue 15, item 9).

A non-streaming request hands its chunks over only once it is done, so a fault anywhere in it is re-run;
a stream is re-run only before its first chunk. Once, never twice, and never after the caller got text.
"""

from __future__ import annotations

from typing import Any

import pytest

from ax_llm_provider import Client
from ax_llm_provider.engine.engine import Engine
from ax_llm_provider.runtime.errors import DeviceError
from ax_llm_provider.runtime.simcard import SimCard

from .conftest import POLICY

TOKENS = 24




def body(twin: str, stream: bool) -> dict[str, Any]:
    return {"model": twin, "messages": [{"role": "user", "content": "tell me a story"}], "stream": stream,
            "options": {"num_predict": TOKENS, "temperature": 0}}


def text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["message"]["content"] for c in chunks)


def baseline(engine: Engine, card: SimCard, twin: str) -> tuple[str, int]:
    """The reply at temperature 0, and how many executes the whole request takes."""
    before = card.counters.executes
    reply = text(list(engine.chat(body(twin, stream=True))))
    assert reply
    return reply, card.counters.executes - before


def test_a_non_streaming_request_recovered_mid_generation_returns_the_whole_reply(engine: Engine, card: SimCard,
                                                                                  twin: str) -> None:
    expected, executes = baseline(engine, card, twin)
    card.faults.fail_execute(after=executes * 3 // 4, times=POLICY.step_attempts)  # well into the decode
    reply = Client(engine=engine).chat(**body(twin, stream=False))
    assert reply.message.content == expected and reply.done
    assert engine.health().recoveries["reset"] == 1


def test_a_stream_that_fails_before_its_first_chunk_is_served(engine: Engine, card: SimCard, twin: str) -> None:
    expected, _ = baseline(engine, card, twin)
    card.faults.fail_execute(after=0, times=POLICY.step_attempts)  # in the prefill
    assert text(list(engine.chat(body(twin, stream=True)))) == expected
    assert engine.health().recoveries["reset"] == 1


def test_a_stream_that_fails_after_its_first_chunk_ends_with_its_typed_error(engine: Engine, card: SimCard,
                                                                            twin: str) -> None:
    expected, executes = baseline(engine, card, twin)
    card.faults.fail_execute(after=executes * 3 // 4, times=POLICY.step_attempts)
    received: list[dict[str, Any]] = []
    with pytest.raises(DeviceError) as info:
        for chunk in engine.chat(body(twin, stream=True)):
            received.append(chunk)
    assert received and not any(c.get("done") for c in received)
    assert expected.startswith(text(received)) and len(text(received)) < len(expected)  # no text twice
    assert "not re-run: send it again" in "".join(info.value.__notes__)
    assert text(list(engine.chat(body(twin, stream=True)))) == expected  # the card was recovered


def test_a_second_fault_ends_the_request(engine: Engine, card: SimCard, twin: str) -> None:
    expected, _ = baseline(engine, card, twin)
    card.faults.fail_execute(after=0, times=2 * POLICY.step_attempts)  # the re-run fails as well
    with pytest.raises(DeviceError) as info:
        list(engine.chat(body(twin, stream=False)))
    assert "run again only once" in "".join(info.value.__notes__)
    health = engine.health()
    assert health.recoveries["reset"] == 1 and health.recoveries["reboot"] == 1  # each fault was recovered
    assert Client(engine=engine).chat(**body(twin, stream=False)).message.content == expected
