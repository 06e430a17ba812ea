"""The stand-in AI service: capacity, queueing, overload, streaming, validation, metrics."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from powgate_testbed._standin_capacity import CapacityGate, OverloadedError
from powgate_testbed.standin import MAX_COMPLETION_TOKENS, Standin, StandinSettings, main
from waiting import eventually_async

CHAT = "/v1/chat/completions"


def chat_body(**extra: Any) -> dict[str, Any]:
    return {
        "model": "powgate-standin",
        "messages": [{"role": "user", "content": "hello there"}],
        **extra,
    }


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def metrics(
    session: aiohttp.ClientSession, url: str
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with session.get(url + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def gauge(session: aiohttp.ClientSession, url: str, name: str) -> float:
    return (await metrics(session, url))[(name, ())]


async def until_gauge(session: aiohttp.ClientSession, url: str, name: str, value: float) -> None:
    """Poll until the stand-in reports ``value`` (only observable over HTTP)."""

    async def reached() -> bool:
        return await gauge(session, url, name) == value

    await eventually_async(reached, what=f"{name} = {value}")


# -- the capacity gate on its own -------------------------------------------------


async def test_gate_serves_waiters_first_come_first_served() -> None:
    gate = CapacityGate(concurrency=1, max_queue=3)
    await gate.acquire()
    order: list[int] = []

    async def waiter(index: int) -> None:
        await gate.acquire()
        order.append(index)

    tasks = []
    for index in range(3):
        tasks.append(asyncio.create_task(waiter(index)))
        await asyncio.sleep(0)
    assert (gate.in_flight, gate.queued) == (1, 3)
    for _ in range(3):
        gate.release()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert (gate.in_flight, gate.queued) == (1, 0)


async def test_gate_refuses_beyond_the_queue_and_newcomers_do_not_overtake() -> None:
    gate = CapacityGate(concurrency=1, max_queue=1)
    await gate.acquire()
    queued = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    with pytest.raises(OverloadedError):
        await gate.acquire()
    gate.release()
    # The slot went to the waiter: a newcomer now has to queue.
    newcomer = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    assert queued.done()
    assert not newcomer.done()
    gate.release()
    await newcomer
    assert (gate.in_flight, gate.queued) == (1, 0)


async def test_gate_keeps_its_slots_when_waiters_give_up() -> None:
    gate = CapacityGate(concurrency=1, max_queue=2)
    await gate.acquire()
    leaving = asyncio.create_task(gate.acquire())
    staying = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    leaving.cancel()
    await asyncio.gather(leaving, return_exceptions=True)
    assert gate.queued == 1
    gate.release()
    await staying
    # The slot was handed to a waiter that is cancelled before it runs: passed on, not lost.
    handed = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    gate.release()
    handed.cancel()
    await asyncio.gather(handed, return_exceptions=True)
    assert (gate.in_flight, gate.queued) == (0, 0)
    await gate.acquire()
    assert gate.in_flight == 1


def test_settings_refuse_nonsense() -> None:
    for bad in (
        {"concurrency": 0},
        {"tokens_per_second": 0.0},
        {"tokens_per_second": float("nan")},
        {"max_queue": -1},
        {"overload_status": 500},
        {"model": ""},
    ):
        with pytest.raises(ValueError, match=r"\w"):
            StandinSettings(**bad)


# -- the HTTP API ---------------------------------------------------------------------


async def test_models_and_health(session: aiohttp.ClientSession) -> None:
    async with Standin(StandinSettings(model="m1")) as standin:
        async with session.get(standin.url + "/v1/models") as response:
            assert response.status == 200
            models = await response.json()
        async with session.get(standin.url + "/healthz") as response:
            assert response.status == 200
    assert [model["id"] for model in models["data"]] == ["m1"]


async def test_completion_is_max_tokens_long_and_counted(session: aiohttp.ClientSession) -> None:
    async with Standin(StandinSettings(tokens_per_second=1000)) as standin:
        async with session.post(standin.url + CHAT, json=chat_body(max_tokens=7)) as response:
            assert response.status == 200
            document = await response.json()
        samples = await metrics(session, standin.url)
    choice = document["choices"][0]
    assert document["object"] == "chat.completion"
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"].split()) == 7
    assert choice["finish_reason"] == "length"
    assert document["usage"] == {"prompt_tokens": 2, "completion_tokens": 7, "total_tokens": 9}
    assert samples[("powgate_standin_requests_total", (("status", "200"),))] == 1
    assert samples[("powgate_standin_completion_tokens_total", ())] == 7
    assert samples[("powgate_standin_queue_wait_seconds_count", ())] == 1


async def test_stream_events_arrive_while_the_answer_is_still_generating(
    session: aiohttp.ClientSession,
) -> None:
    async with Standin(StandinSettings(tokens_per_second=20)) as standin:
        body = chat_body(max_tokens=10, stream=True, stream_options={"include_usage": True})
        async with session.post(standin.url + CHAT, json=body) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            first = await response.content.readuntil(b"\n\n")
            token = await response.content.readuntil(b"\n\n")
            # Two events read, and the request still holds its slot: the stand-in
            # has not finished, so the events were sent as they were generated.
            assert await gauge(session, standin.url, "powgate_standin_in_flight_requests") == 1
            rest = await response.content.read()
        await until_gauge(session, standin.url, "powgate_standin_in_flight_requests", 0)
    events = [first, token, *(event + b"\n\n" for event in rest.split(b"\n\n") if event)]
    assert all(event.startswith(b"data: ") for event in events)
    assert events[-1] == b"data: [DONE]\n\n"
    chunks = [json.loads(event[6:]) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    contents = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert len([text for text in contents if text]) == 10
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 10


async def test_openai_sdk_streams_from_the_standin() -> None:
    async with Standin(StandinSettings(tokens_per_second=1000)) as standin:
        client = openai.AsyncOpenAI(base_url=standin.url + "/v1", api_key="unused", max_retries=0)
        async with client:
            stream = await client.chat.completions.create(
                model="powgate-standin",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=5,
                stream=True,
            )
            text = "".join(
                [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
            )
            refused = None
            try:
                await client.chat.completions.create(
                    model="other", messages=[{"role": "user", "content": "hi"}]
                )
            except openai.NotFoundError as exc:
                refused = exc
    assert len(text.split()) == 5
    assert refused is not None
    assert refused.code == "model_not_found"


@pytest.mark.parametrize(("overload", "error_type"), [(429, "requests"), (503, "server_error")])
async def test_full_queue_is_refused_with_retry_after(
    session: aiohttp.ClientSession, overload: int, error_type: str
) -> None:
    settings = StandinSettings(
        concurrency=1, max_queue=1, tokens_per_second=2, overload_status=overload
    )
    async with Standin(settings, drain_timeout=0.1) as standin:
        body = chat_body(max_tokens=60)
        holding = asyncio.create_task(session.post(standin.url + CHAT, json=body))
        await until_gauge(session, standin.url, "powgate_standin_in_flight_requests", 1)
        waiting = asyncio.create_task(session.post(standin.url + CHAT, json=body))
        await until_gauge(session, standin.url, "powgate_standin_queued_requests", 1)
        async with session.post(standin.url + CHAT, json=body) as response:
            status, retry_after, error = (
                response.status,
                response.headers["Retry-After"],
                await response.json(),
            )
        samples = await metrics(session, standin.url)
        for task in (holding, waiting):
            task.cancel()
        await asyncio.gather(holding, waiting, return_exceptions=True)
    assert status == overload
    assert int(retry_after) == 30  # one generation: 60 tokens at 2 per second
    assert error["error"]["type"] == error_type
    assert samples[("powgate_standin_requests_total", (("status", str(overload)),))] == 1
    assert samples[("powgate_standin_concurrency", ())] == 1
    assert samples[("powgate_standin_max_queue", ())] == 1


async def test_abandoned_stream_frees_its_slot_and_is_counted(
    session: aiohttp.ClientSession,
) -> None:
    settings = StandinSettings(concurrency=1, max_queue=0, tokens_per_second=50)
    async with Standin(settings) as standin:
        response = await session.post(
            standin.url + CHAT, json=chat_body(max_tokens=1000, stream=True)
        )
        await response.content.readuntil(b"\n\n")
        response.close()
        await until_gauge(session, standin.url, "powgate_standin_in_flight_requests", 0)
        samples = await metrics(session, standin.url)
        async with session.post(standin.url + CHAT, json=chat_body(max_tokens=1)) as after:
            assert after.status == 200
    assert samples[("powgate_standin_requests_total", (("status", "499"),))] == 1
    assert ("powgate_standin_requests_total", (("status", "200"),)) not in samples


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), 400, "model"),
        (
            json.dumps({"model": "nope", "messages": [{"role": "user", "content": "x"}]}).encode(),
            404,
            "model",
        ),
        (json.dumps(chat_body(messages=[])).encode(), 400, "messages"),
        (json.dumps({"model": "powgate-standin"}).encode(), 400, "messages"),
        (
            json.dumps(chat_body(messages=[{"role": "wizard", "content": "x"}])).encode(),
            400,
            "messages.[0]",
        ),
        (
            json.dumps(chat_body(messages=[{"role": "user", "content": 5}])).encode(),
            400,
            "messages.[0]",
        ),
        (json.dumps(chat_body(max_tokens=MAX_COMPLETION_TOKENS + 1)).encode(), 400, "max_tokens"),
        (json.dumps(chat_body(max_tokens=0)).encode(), 400, "max_tokens"),
        (json.dumps(chat_body(max_tokens=True)).encode(), 400, "max_tokens"),
        (json.dumps(chat_body(max_completion_tokens="9")).encode(), 400, "max_completion_tokens"),
        (json.dumps(chat_body(stream="yes")).encode(), 400, "stream"),
        (
            json.dumps(chat_body(stream_options={"include_usage": True})).encode(),
            400,
            "stream_options",
        ),
        (b"[" * 100_000, 400, None),
    ],
)
async def test_bad_requests_get_openai_errors(
    session: aiohttp.ClientSession, body: bytes, status: int, param: str | None
) -> None:
    async with Standin() as standin:
        async with session.post(standin.url + CHAT, data=body) as response:
            assert response.status == status
            error = (await response.json())["error"]
        samples = await metrics(session, standin.url)
    assert error["param"] == param
    assert error["message"]
    assert samples[("powgate_standin_requests_total", (("status", str(status)),))] == 1
    assert samples[("powgate_standin_queue_wait_seconds_count", ())] == 0


async def test_oversized_body_unknown_route_and_wrong_method(
    session: aiohttp.ClientSession,
) -> None:
    async with Standin() as standin:
        async with session.post(standin.url + CHAT, data=io.BytesIO(b"x" * (2 << 20))) as response:
            too_large = response.status, await response.json()
        async with session.get(standin.url + "/v1/nothing") as response:
            missing = response.status, await response.json()
        async with session.get(standin.url + CHAT) as response:
            wrong = response.status, response.headers.get("Allow"), await response.json()
    assert too_large[0] == 413
    assert too_large[1]["error"]["type"] == "invalid_request_error"
    assert missing[0] == 404
    assert missing[1]["error"]["message"]
    assert wrong[:2] == (405, "POST")


async def test_url_is_only_known_while_running() -> None:
    standin = Standin()
    with pytest.raises(RuntimeError, match="not running"):
        _ = standin.url
    async with standin:
        assert standin.url.startswith("http://127.0.0.1:")
    with pytest.raises(RuntimeError, match="not running"):
        _ = standin.url


def test_command_line_refuses_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["--listen", "8000"],
        ["--concurrency", "0"],
        ["--tokens-per-second", "nan"],
        ["--overload", "500"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    assert "is not HOST:PORT" in capsys.readouterr().err
