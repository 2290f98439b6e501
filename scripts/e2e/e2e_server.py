"""The serving loop, written the way a simple server would be.

Sessions keep their token history and a KV cache object between turns. A turn
appends a prompt (a tool result), prefills what the cache lacks, and greedily
generates a short reply. The server has an optional KV pool size: when a new
cache does not fit, it drops the least recently used session's cache, and that
session is re-prefilled from its history on its next turn (what engines do at
the memory wall). Without a pool size every session is kept. If the device runs
out of memory anyway, the server drops another session and serves the turn
again from scratch.

This module knows nothing about kvpager, and imports no torch: the model
backend does the arithmetic.
"""
from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from typing import Callable, List, Optional


@dataclasses.dataclass
class Session:
    id: int
    history: List[int] = dataclasses.field(default_factory=list)  # every token: prompts and replies
    cache: object = None      # the backend's KV cache object, None when dropped / not yet built
    kv_len: int = 0           # how many tokens of history the cache holds
    prefilled: bool = False   # had a cache once (a later cache is a recompute)


@dataclasses.dataclass
class TurnResult:
    session: int
    tokens: List[int]         # the reply, greedy
    ttft_s: float             # turn start -> first reply token on the host
    decode_s: float           # first -> last reply token
    prefill_tokens: int       # tokens this turn's prefill fed to the model
    recomputed: bool          # the session's KV had been dropped and was rebuilt from history
    dropped: List[int]        # sessions whose KV this turn dropped to make room
    oom_retries: int          # times the device ran out of memory during the turn
    # Per reply token, the greedy choice's lead over the runner-up logit
    # (None where the backend does not say).
    margins: List[Optional[float]] = dataclasses.field(default_factory=list)


class CapacityError(RuntimeError):
    pass


class Server:
    def __init__(self, backend, max_len: int, prefill_chunk: int, kv_capacity_bytes: Optional[int] = None,
                 cache_bytes: Optional[int] = None, clock: Callable[[], float] = time.perf_counter):
        """max_len: tokens per session cache (max_model_len). kv_capacity_bytes:
        the KV pool, None = keep every session. cache_bytes: what one cache costs."""
        self.backend = backend
        self.max_len = max_len
        self.chunk = prefill_chunk
        self.capacity = kv_capacity_bytes
        self.cache_bytes = cache_bytes
        if self.capacity is not None and (cache_bytes is None or cache_bytes > self.capacity):
            raise CapacityError("the KV pool must hold at least one session's cache")
        self.clock = clock
        self.sessions: "OrderedDict[int, Session]" = OrderedDict()  # least recently used first

    # -- pool ---------------------------------------------------------------

    def resident(self) -> List[int]:
        return [s.id for s in self.sessions.values() if s.cache is not None]

    def kv_in_use(self) -> int:
        return len(self.resident()) * (self.cache_bytes or 0)

    def _drop(self, s: Session) -> None:
        s.cache = None
        s.kv_len = 0

    def _drop_lru(self, keep: Session) -> Optional[int]:
        for s in self.sessions.values():
            if s is not keep and s.cache is not None:
                self._drop(s)
                return s.id
        return None

    def _admit(self, s: Session, dropped: List[int]) -> None:
        if self.capacity is not None:
            while self.kv_in_use() + self.cache_bytes > self.capacity:
                victim = self._drop_lru(s)
                if victim is None:
                    raise CapacityError("KV pool smaller than one session")
                dropped.append(victim)
        s.cache = self.backend.new_cache(self.max_len)
        s.kv_len = 0

    # -- a turn -------------------------------------------------------------

    def turn(self, session_id: int, prompt: List[int], reply_tokens: int) -> TurnResult:
        s = self.sessions.pop(session_id, None) or Session(session_id)
        self.sessions[session_id] = s  # most recently used
        if len(s.history) + len(prompt) + reply_tokens > self.max_len:
            raise CapacityError(f"session {session_id} would exceed max_len {self.max_len}")
        s.history.extend(prompt)
        base = len(s.history)
        dropped: List[int] = []
        retries = 0
        t0 = self.clock()
        while True:
            try:
                result = self._serve(s, reply_tokens, t0, dropped)
                break
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled
                if not self.backend.is_oom(exc):
                    raise
                # The device is full after all: free another session, and serve
                # this turn again from the history with a fresh cache.
                retries += 1
                del s.history[base:]
                victim = self._drop_lru(s)
                self._drop(s)
                if victim is None:
                    raise
                dropped.append(victim)
        result.oom_retries = retries
        result.recomputed = result.recomputed or retries > 0
        return result

    def _serve(self, s: Session, reply_tokens: int, t0: float, dropped: List[int]) -> TurnResult:
        recomputed = False
        if s.cache is None:
            recomputed = s.prefilled
            self._admit(s, dropped)
            s.prefilled = True
        feed = s.history[s.kv_len:]
        tok = None
        for off in range(0, len(feed), self.chunk):
            piece = feed[off:off + self.chunk]
            tok = self.backend.feed(s.cache, piece, s.kv_len)
            s.kv_len += len(piece)
        reply = [tok]
        margins = [getattr(self.backend, "last_margin", None)]
        s.history.append(tok)
        t1 = self.clock()
        for _ in range(reply_tokens - 1):
            tok = self.backend.feed(s.cache, [s.history[-1]], s.kv_len)
            s.kv_len += 1
            reply.append(tok)
            margins.append(getattr(self.backend, "last_margin", None))
            s.history.append(tok)
        t2 = self.clock()
        return TurnResult(s.id, reply, t1 - t0, t2 - t1, len(feed), recomputed, dropped, 0, margins)
