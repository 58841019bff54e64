"""A chat backend over HTTP: any OpenAI-compatible ``/chat/completions`` endpoint (a hosted API, vLLM,
llama.cpp's server, ...), with retries, exponential backoff and a request-rate limit."""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from llava_pl.data.instruct.backend import BackendError, FatalBackendError, Reply

log = logging.getLogger(__name__)

# Worth another try: timeouts, conflicts, rate limiting and server-side failures.
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def _opener(url: str) -> urllib.request.OpenerDirector:
    """The environment's proxies (HTTPS_PROXY, ...) for remote APIs; none for a server on this machine."""
    if urllib.parse.urlsplit(url).hostname in LOOPBACK_HOSTS:
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


class RateLimiter:
    """Spaces request starts at least ``60 / requests_per_minute`` seconds apart, across threads."""

    def __init__(self, requests_per_minute: float | None) -> None:
        if requests_per_minute is not None and requests_per_minute <= 0:
            raise ValueError(f"requests_per_minute must be positive or null, got {requests_per_minute}")
        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        time.sleep(max(0.0, start - now))


class OpenAIBackend:
    """Chat completions from ``{base_url}/chat/completions``.

    Args:
        base_url: the API root, e.g. ``https://api.openai.com/v1`` or ``http://localhost:8000/v1`` (vLLM).
        api_key_env: the environment variable holding the key, sent as a bearer token; null sends none
            (local servers). The key itself never appears in a config.
        concurrency: requests in flight at once (threads).
        max_retries: further tries after a failed request (connection errors, timeouts, 429 and 5xx), waiting
            ``backoff_s * 2**try`` (at most ``max_backoff_s``, with jitter) or the server's ``Retry-After``.
        requests_per_minute: a cap on request starts; null for none.
        extra_body: more fields of the request (e.g. ``{seed: 0}``, ``{response_format: ...}``).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        temperature: float = 0.7,
        top_p: float | None = None,
        max_tokens: int = 1024,
        concurrency: int = 8,
        max_retries: int = 6,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        timeout_s: float = 120.0,
        requests_per_minute: float | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._opener = _opener(self.url)
        self.model = model
        self.api_key: str | None = None
        if api_key_env:
            self.api_key = os.environ.get(api_key_env)
            if not self.api_key:
                raise FatalBackendError(
                    f"the environment variable {api_key_env} (instruct_backend.api_key_env) holding the API key is "
                    f"not set; export it, or set instruct_backend.api_key_env=null for a server without keys"
                )
        self.body = {"model": model, "temperature": temperature, "max_tokens": max_tokens,
                     **({"top_p": top_p} if top_p is not None else {}), **(extra_body or {})}
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self.rate = RateLimiter(requests_per_minute)

    def _request(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        data = json.dumps({**self.body, "messages": messages}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        with self._opener.open(request, timeout=self.timeout_s) as response:
            return json.loads(response.read())

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay = min(self.max_backoff_s, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)
        if retry_after:
            try:
                delay = max(delay, float(retry_after))
            except ValueError:  # an HTTP date; the backoff stands
                pass
        return delay

    def complete(self, messages: list[dict[str, str]]) -> Reply:
        problem = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            self.rate.wait()
            try:
                return _reply(self._request(messages), self.url)
            except urllib.error.HTTPError as error:
                body = error.read()[:300].decode(errors="replace")
                problem = f"HTTP {error.code} from {self.url}: {body}"
                if error.code not in RETRY_STATUSES:
                    raise FatalBackendError(f"{problem} (check base_url, model and the API key)") from error
                retry_after = error.headers.get("Retry-After")
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError, BackendError) as error:
                problem = f"{type(error).__name__} from {self.url}: {error}"
            if attempt < self.max_retries:
                delay = self._delay(attempt, retry_after)
                log.warning(f"{problem}; retrying in {delay:.1f} s ({attempt + 1}/{self.max_retries})")
                time.sleep(delay)
        raise BackendError(f"{problem} (gave up after {self.max_retries + 1} tries)")


def _reply(response: dict[str, Any], url: str) -> Reply:
    try:
        choice = response["choices"][0]
        text = choice["message"]["content"]
    except (KeyError, IndexError, TypeError) as error:
        raise BackendError(f"{url} answered without choices[0].message.content: {str(response)[:200]}") from error
    if not isinstance(text, str):
        raise BackendError(f"{url} answered with a non-text message content: {str(text)[:200]}")
    return Reply(text, truncated=choice.get("finish_reason") == "length")
