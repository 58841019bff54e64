"""A loopback HTTP server that speaks OpenAI's chat-completions protocol, for testing the ``openai`` backend
over real HTTP. ``answer`` produces each reply: a real model (tests wrap the local SmolLM2 backend) or a
script of responses, including failures."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class HttpAnswer:
    """What the server sends back: a completion (``text``, ``finish_reason``) or an error ``status``."""

    text: str = ""
    finish_reason: str = "stop"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class ChatServer:
    url: str  # the API root, ".../v1"
    requests: list[dict[str, Any]]  # every request body received, with its Authorization header


@contextmanager
def chat_server(answer: Callable[[dict[str, Any]], HttpAnswer]) -> Iterator[ChatServer]:
    """Serves ``POST /v1/chat/completions`` on 127.0.0.1 (a free port) for the duration of the block."""
    received: list[dict[str, Any]] = []
    lock = threading.Lock()
    generating = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the name http.server calls)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                received.append({**body, "authorization": self.headers.get("Authorization")})
            if self.path != "/v1/chat/completions":
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            with generating:  # one generation at a time, as a single-model server would
                reply = answer(body)
            if reply.status != 200:
                return self._send(reply.status, {"error": {"message": "scripted failure"}}, reply.headers)
            self._send(200, {
                "id": f"chatcmpl-{len(received)}", "object": "chat.completion", "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                             "finish_reason": reply.finish_reason}],
            })

        def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:  # keep the test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ChatServer(f"http://127.0.0.1:{server.server_address[1]}/v1", received)
    finally:
        server.shutdown()
        server.server_close()
