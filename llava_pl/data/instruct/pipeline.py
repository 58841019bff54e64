"""The generation loop: for every (image, kind) not yet in the journal, ask the backend, parse the reply (with a
few attempts) and journal the record or the reason it was skipped; requests run concurrently."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from llava_pl.data.instruct.backend import BackendError, ChatBackend
from llava_pl.data.instruct.context import ImageContext
from llava_pl.data.instruct.journal import Journal, Key
from llava_pl.data.instruct.parse import ReplyError, parse_reply
from llava_pl.data.instruct.prompts import KindPrompt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    key: Key
    record: dict[str, Any] | None = None
    reason: str = ""
    detail: str = ""
    reply: str | None = None
    attempts: int = 0


@dataclass
class Summary:
    """What one run did: records added per kind, requests skipped per (kind, reason), keys done before."""

    added: Counter[str] = field(default_factory=Counter)
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)
    done_before: int = 0
    requests: int = 0

    def format(self) -> str:
        lines = [f"{self.done_before} (image, kind) pairs were done before this run; {self.requests} requests sent"]
        lines += [f"  {kind:<14} +{count} records" for kind, count in sorted(self.added.items())]
        lines += [f"  {kind:<14} {count} skipped: {reason}" for (kind, reason), count in sorted(self.rejected.items())]
        return "\n".join(lines)


def attempt(
    context: ImageContext,
    kind: str,
    prompt: KindPrompt,
    backend: ChatBackend,
    render: Callable[[ImageContext, bool], str],
    max_attempts: int,
    seed: int,
    salvage_truncated: bool,
) -> Outcome:
    """Asks for one (image, kind) until a reply parses or ``max_attempts`` replies did not."""
    messages = prompt.messages(render(context, prompt.use_boxes))
    key = (context.id, kind)
    error: ReplyError | None = None
    text: str | None = None
    for number in range(1, max_attempts + 1):
        try:
            reply = backend.complete(messages)
        except BackendError as failure:
            return Outcome(key, reason="request_failed", detail=str(failure), attempts=number)
        text = reply.text
        try:
            record = parse_reply(reply.text, prompt, context, seed, reply.truncated, salvage_truncated)
            return Outcome(key, record=record, attempts=number)
        except ReplyError as rejected:
            error = rejected
            log.debug(f"{key}: attempt {number}: {rejected}")
    assert error is not None
    return Outcome(key, reason=error.reason, detail=error.detail, reply=text, attempts=max_attempts)


def _run_concurrently(jobs: Sequence[Callable[[], Outcome]], workers: int) -> Iterator[Outcome]:
    """Yields outcomes as they finish, with at most ``2 * workers`` jobs queued; on an error or an interrupt the
    jobs not started are cancelled (requests in flight finish, their results are dropped)."""
    if workers == 1:
        yield from (job() for job in jobs)
        return
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="make_instruct")
    pending: set[Future[Outcome]] = set()
    queue = iter(jobs)
    try:
        while True:
            for job in queue:
                pending.add(executor.submit(job))
                if len(pending) >= 2 * workers:
                    break
            if not pending:
                return
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                yield future.result()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def generate(
    contexts: Sequence[ImageContext],
    prompts: dict[str, KindPrompt],
    backend: ChatBackend | None,
    journal: Journal,
    render: Callable[[ImageContext, bool], str],
    max_attempts: int = 3,
    seed: int = 0,
    salvage_truncated: bool = True,
    log_every: int = 50,
) -> Summary:
    """Fills the journal with a record (or a reason for skipping) for every (image, kind) it lacks; ``backend``
    may be None when it lacks none."""
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    summary = Summary()
    todo = []
    for context in contexts:
        for kind, prompt in prompts.items():
            if (context.id, kind) in journal.records:
                summary.done_before += 1
            else:
                todo.append((context, kind, prompt))
    log.info(f"{len(todo)} (image, kind) pairs to generate, {summary.done_before} already in {journal.path}")
    if not todo:
        return summary
    if backend is None:
        raise ValueError("generate needs a backend: some (image, kind) pairs are not done")
    jobs = [
        (lambda c=context, k=kind, p=prompt: attempt(c, k, p, backend, render, max_attempts, seed, salvage_truncated))
        for context, kind, prompt in todo
    ]
    start = time.monotonic()
    for done, outcome in enumerate(_run_concurrently(jobs, backend.concurrency), start=1):
        summary.requests += outcome.attempts
        if outcome.record is not None:
            journal.add(outcome.key, outcome.record)
            summary.added[outcome.key[1]] += 1
        else:
            journal.reject(outcome.key, outcome.reason, outcome.detail, outcome.reply)
            summary.rejected[outcome.key[1], outcome.reason] += 1
            log.info(f"skipped {outcome.key}: {outcome.reason}: {outcome.detail}")
        if done % log_every == 0 or done == len(jobs):
            elapsed = time.monotonic() - start
            log.info(f"{done}/{len(jobs)} done ({sum(summary.added.values())} records, "
                     f"{sum(summary.rejected.values())} skipped) in {elapsed:.0f} s")
    return summary
