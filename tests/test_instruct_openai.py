"""Instruction data: the openai backend's HTTP client (retries, the key, client errors, its rate limit) against
a loopback server with scripted answers."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from llava_pl.data.instruct.backend import FatalBackendError, Reply
from llava_pl.data.instruct.openai_backend import OpenAIBackend
from llava_pl.make_instruct import make_instruct
from tests.conftest import formats_file
from tests.instruct_helpers import EXCERPT, compose_make_instruct
from tests.openai_chat_server import HttpAnswer, chat_server

MESSAGES = [{"role": "user", "content": "hi"}]


def scripted(answers: list[HttpAnswer]) -> Callable[[dict[str, Any]], HttpAnswer]:
    queue = list(answers)
    return lambda body: queue.pop(0)


def test_the_openai_backend_retries_server_errors_and_sends_the_key(monkeypatch) -> None:
    monkeypatch.setenv("LLAVA_TEST_KEY", "sk-test")
    answers = [HttpAnswer(status=503), HttpAnswer(status=429, headers={"Retry-After": "0"}),
               HttpAnswer("Question: Q?\nAnswer: A", finish_reason="length")]
    with chat_server(scripted(answers)) as server:
        backend = OpenAIBackend(server.url, "some-model", api_key_env="LLAVA_TEST_KEY", backoff_s=0.01,
                                max_tokens=7, temperature=0.5)
        reply = backend.complete(MESSAGES)
    assert reply == Reply("Question: Q?\nAnswer: A", truncated=True)
    assert len(server.requests) == 3
    assert server.requests[-1] == {"model": "some-model", "temperature": 0.5, "max_tokens": 7, "messages": MESSAGES,
                                   "authorization": "Bearer sk-test"}


def test_the_openai_backend_stops_on_a_client_error_and_gives_up_after_its_retries(monkeypatch) -> None:
    from llava_pl.data.instruct.backend import BackendError

    with chat_server(scripted([HttpAnswer(status=401)])) as server:
        with pytest.raises(FatalBackendError, match=r"HTTP 401 .*\(check base_url, model and the API key\)"):
            OpenAIBackend(server.url, "m", api_key_env=None).complete(MESSAGES)
    with chat_server(scripted([HttpAnswer(status=500)] * 3)) as server:
        with pytest.raises(BackendError, match=r"HTTP 500 .*\(gave up after 3 tries\)"):
            OpenAIBackend(server.url, "m", api_key_env=None, max_retries=2, backoff_s=0.01).complete(MESSAGES)
    monkeypatch.delenv("LLAVA_MISSING_KEY", raising=False)
    missing = r"LLAVA_MISSING_KEY \(instruct_backend.api_key_env\) .* is not set.*api_key_env=null"
    with pytest.raises(FatalBackendError, match=missing):
        OpenAIBackend("http://127.0.0.1:9/v1", "m", api_key_env="LLAVA_MISSING_KEY")


def test_a_wrong_key_or_model_stops_the_run_from_the_config(tmp_path) -> None:
    out = tmp_path / "instruct.json"
    with chat_server(lambda body: HttpAnswer(status=404 if body["model"] == "no-such-model" else 200)) as server:
        cfg = compose_make_instruct(f"in={formats_file(EXCERPT)}", f"out={out}", "limit=2",
                                    f"instruct_backend.base_url={server.url}", "instruct_backend.model=no-such-model",
                                    "instruct_backend.api_key_env=null", "instruct_backend.concurrency=2")
        with pytest.raises(FatalBackendError, match="HTTP 404"):
            make_instruct(cfg)
    assert 1 <= len(server.requests) <= 4  # stopped at the first answer, not after asking for every pair
    assert not out.exists() and (tmp_path / "instruct.json.journal.jsonl").read_text() == ""


def test_the_openai_backend_keeps_to_its_rate_limit_across_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    with chat_server(lambda body: HttpAnswer("ok")) as server:
        backend = OpenAIBackend(server.url, "m", api_key_env=None, requests_per_minute=600, concurrency=4)
        start = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(lambda _: backend.complete(MESSAGES), range(5)))
        elapsed = time.monotonic() - start
    assert [r.text for r in replies] == ["ok"] * 5
    assert elapsed >= 0.4  # 600 per minute: request starts 0.1 s apart
