"""Model presets, byte arithmetic and the seeded workload: pure Python, no torch.

The orchestrator plans a run (footprint, budget, safety check) from this module
alone, before any process touches the GPU; the workers rebuild the same plan
from the same arguments, so every mode serves the same turns with the same
tokens.
"""
from __future__ import annotations

import dataclasses
import math
import random
import re
from typing import Dict, List, Optional

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A Llama-style decoder: RMSNorm, RoPE, GQA attention, SwiGLU MLP."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    rope_theta: float = 500000.0
    rms_eps: float = 1e-5

    def params(self) -> int:
        h, kvd = self.hidden, self.kv_heads * self.head_dim
        qd = self.heads * self.head_dim
        per_layer = (h * qd + 2 * h * kvd + qd * h  # q, k, v, o projections
                     + 3 * h * self.intermediate    # gate, up, down
                     + 2 * h)                       # two RMSNorm weights
        return 2 * self.vocab * h + self.layers * per_layer + h  # embed + untied lm_head + final norm

    def weight_bytes(self, dtype: str) -> int:
        return self.params() * DTYPE_BYTES[dtype]

    def kv_bytes_per_token(self, dtype: str) -> int:
        return self.layers * 2 * self.kv_heads * self.head_dim * DTYPE_BYTES[dtype]


@dataclasses.dataclass(frozen=True)
class WorkloadDefaults:
    context: int          # tokens of each session's first prefill
    sessions: int
    tool_min: int         # a tool result is tool_min..tool_max tokens
    tool_max: int
    reply: int            # tokens generated per turn (greedy)
    rr_rounds: int        # round-robin rounds after the first prefills
    random_turns: int     # then this many turns in a seeded random order
    prefill_chunk: int    # tokens per forward pass when prefilling
    resident: int         # sessions the default budget holds in HBM


PRESETS: Dict[str, ModelSpec] = {
    # Llama-3-8B's shape: 128 KiB of KV per token in bf16.
    "llama3-8b": ModelSpec("llama3-8b", layers=32, hidden=4096, heads=32, kv_heads=8, head_dim=128,
                           intermediate=14336, vocab=128256),
    # A quick GPU run: same head geometry, a quarter of the layers, a small vocabulary.
    "small": ModelSpec("small", layers=8, hidden=2048, heads=16, kv_heads=8, head_dim=128,
                       intermediate=5632, vocab=32000),
    # CPU / CI: runs in seconds.
    "tiny": ModelSpec("tiny", layers=2, hidden=64, heads=4, kv_heads=2, head_dim=16,
                      intermediate=128, vocab=256),
}

WORKLOADS: Dict[str, WorkloadDefaults] = {
    "llama3-8b": WorkloadDefaults(context=32768, sessions=8, tool_min=200, tool_max=400, reply=32,
                                  rr_rounds=2, random_turns=16, prefill_chunk=2048, resident=2),
    "small": WorkloadDefaults(context=16384, sessions=8, tool_min=200, tool_max=400, reply=32,
                              rr_rounds=2, random_turns=16, prefill_chunk=2048, resident=2),
    "tiny": WorkloadDefaults(context=192, sessions=4, tool_min=8, tool_max=24, reply=6,
                             rr_rounds=2, random_turns=6, prefill_chunk=64, resident=2),
}


@dataclasses.dataclass(frozen=True)
class Turn:
    index: int       # position in the schedule
    session: int
    kind: str        # "first" (the long-context prefill) or "resumed"
    order: str       # "first", "rr" (round-robin) or "random"
    new_tokens: int  # prompt tokens this turn adds (context, or a tool result)


@dataclasses.dataclass(frozen=True)
class Workload:
    seed: int
    sessions: int
    context: int
    tool_min: int
    tool_max: int
    reply: int
    rr_rounds: int
    random_turns: int

    def turns(self) -> List[Turn]:
        """First prefills, then round-robin rounds, then a seeded random order."""
        rng = random.Random(f"kvpager-e2e-schedule-{self.seed}")
        out: List[Turn] = []

        def add(session: int, kind: str, order: str, n: int) -> None:
            out.append(Turn(len(out), session, kind, order, n))

        for s in range(self.sessions):
            add(s, "first", "first", self.context)
        for _ in range(self.rr_rounds):
            for s in range(self.sessions):
                add(s, "resumed", "rr", rng.randint(self.tool_min, self.tool_max))
        for _ in range(self.random_turns):
            add(rng.randrange(self.sessions), "resumed", "random", rng.randint(self.tool_min, self.tool_max))
        return out

    def tokens(self, turn: Turn, vocab: int) -> List[int]:
        """The prompt tokens of one turn: a function of the seed and the turn alone."""
        rng = random.Random(f"kvpager-e2e-tokens-{self.seed}-{turn.index}")
        return [rng.randrange(vocab) for _ in range(turn.new_tokens)]

    def session_lengths(self) -> List[int]:
        """Tokens each session holds after its last turn (prompts + replies)."""
        n = [0] * self.sessions
        for t in self.turns():
            n[t.session] += t.new_tokens + self.reply
        return n

    def max_len(self, align: int = 64) -> int:
        """The server's per-session cache length (its max_model_len)."""
        return round_up(max(self.session_lengths()), align)


def round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def workspace_bytes(spec: ModelSpec, dtype: str, chunk: int, max_len: int, device: str) -> int:
    """Transient memory of one forward pass beside weights and KV, with margin.

    Activations of a prefill chunk, the attention mask of a chunk against the
    whole cache (grouped queries: heads/kv_heads rows per token, as a bool and as
    an additive mask), keys/values expanded to every head (what transformers
    does when it cannot use grouped-query sdpa), logits, and a fixed margin for
    cuBLAS workspaces and allocator fragmentation.
    """
    b = DTYPE_BYTES[dtype]
    kvd = spec.kv_heads * spec.head_dim
    act = chunk * (6 * spec.hidden + 2 * kvd + 3 * spec.intermediate) * b
    group = spec.heads // spec.kv_heads
    mask = group * chunk * max_len * (1 + b)
    expanded_kv = 2 * spec.heads * max_len * spec.head_dim * b
    logits = 4 * spec.vocab * 4
    margin = 1 * GiB if device == "cuda" else 16 * MiB
    return act + mask + expanded_kv + logits + margin


@dataclasses.dataclass
class Plan:
    """Everything the safety rule and the modes need, in bytes."""

    spec: ModelSpec
    dtype: str
    device: str
    workload: Workload
    prefill_chunk: int
    max_len: int
    weight_bytes: int
    kv_bytes_per_token: int
    session_kv_bytes: int      # one session's preallocated cache (max_len tokens)
    kv_total_bytes: int        # every session's cache
    workspace_bytes: int
    footprint_bytes: int       # weights + all KV + workspace: what kvpager mode manages
    budget_bytes: int          # B: what the recompute cap and the pager's HBM budget hold
    resident_sessions: int     # sessions whose KV fits in B beside weights and workspace
    kv_capacity_bytes: int     # B - weights - workspace: the recompute server's KV pool

    @property
    def pager_resident_sessions(self) -> int:
        """Sessions whose KV fits beside weights and workspace in what the
        pager works with: its high watermark x B."""
        given = whole_mib(self.budget_bytes) * MiB  # what the pager is given (knob_bytes)
        kv = int(given * PAGER_HIGH_WATERMARK) - self.weight_bytes - self.workspace_bytes
        return max(0, min(self.workload.sessions, kv // self.session_kv_bytes))

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["pager_resident_sessions"] = self.pager_resident_sessions
        d["spec"] = dataclasses.asdict(self.spec)
        d["workload"] = dataclasses.asdict(self.workload)
        d["session_lengths"] = self.workload.session_lengths()
        return d


# The pager starts demoting when HBM passes this fraction of its budget (its
# high_watermark; kvpager modes set it to this value), so it works with
# PAGER_HIGH_WATERMARK x B, not B.
PAGER_HIGH_WATERMARK = 0.95
# Beyond that: the pager counts every region's last chunk whole (2 MiB), and
# the workspace is an estimate.
PAGER_HEADROOM = 256 * MiB


def default_budget(need: int, session_kv: int) -> int:
    """The default B for `need` bytes (weights + workspace + the resident
    sessions' KV): enough that the pager's working level (high watermark x B)
    holds them too, with PAGER_HEADROOM to spare, in whole MiB (what the
    pager is given: knob_bytes); but less than one more session's KV above
    `need`, so the recompute cap still holds exactly those sessions. (Sized
    as `need` alone, the pager held 1.93 of the 2 sessions an H200 run
    planned: some of the active session was read over PCIe on every decode
    step.)"""
    want = -(-math.ceil(need / PAGER_HIGH_WATERMARK) // MiB) * MiB + PAGER_HEADROOM
    return max(need, min(want, need + session_kv - 1))


class PlanError(ValueError):
    """A configuration that cannot run (bad sizes, budget below one session)."""


def make_plan(spec: ModelSpec, dtype: str, device: str, workload: Workload, prefill_chunk: int,
              budget: Optional[int], resident: int) -> Plan:
    if workload.sessions < 1 or workload.context < 1 or workload.reply < 1:
        raise PlanError("--sessions, --context and --reply must be at least 1")
    if not 1 <= workload.tool_min <= workload.tool_max:
        raise PlanError("--tool-tokens: need 1 <= MIN <= MAX")
    if prefill_chunk < 1:
        raise PlanError("--prefill-chunk must be at least 1")
    max_len = workload.max_len()
    wb = spec.weight_bytes(dtype)
    per_tok = spec.kv_bytes_per_token(dtype)
    session_kv = max_len * per_tok
    kv_total = session_kv * workload.sessions
    ws = workspace_bytes(spec, dtype, prefill_chunk, max_len, device)
    footprint = wb + kv_total + ws
    if budget is None:
        if not 1 <= resident <= workload.sessions:
            raise PlanError(f"--resident-sessions {resident}: need 1..{workload.sessions} (--sessions)")
        budget = default_budget(wb + ws + resident * session_kv, session_kv)
    kv_cap = budget - wb - ws
    if kv_cap < session_kv:
        raise PlanError(
            f"--budget {human(budget)} holds weights ({human(wb)}) and workspace ({human(ws)}) but not one "
            f"session's KV ({human(session_kv)}); raise --budget to at least {human(wb + ws + session_kv)}")
    return Plan(spec, dtype, device, workload, prefill_chunk, max_len, wb, per_tok, session_kv, kv_total, ws,
                footprint, budget, min(workload.sessions, kv_cap // session_kv), kv_cap)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*$", re.IGNORECASE)


def parse_bytes(text: str) -> int:
    """'8G', '512M', '1.5G', '123' -> bytes (powers of 1024, as kvpager's knobs)."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"'{text}' is not a byte size (e.g. 8G, 512M, 123456)")
    mult = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": 1024 * GiB, "P": 1024 * 1024 * GiB}[m.group(2).upper()]
    return int(float(m.group(1)) * mult)


def human(b: float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(b) >= size:
            return f"{b / size:.2f} {unit}"
    return f"{int(b)} B"


def whole_mib(b: int) -> int:
    """b in whole MiB, rounded down (at least 1): what a KVPAGER_* size carries."""
    return max(1, b // MiB)


def knob_bytes(b: int) -> str:
    """A size for a KVPAGER_* variable: whole MiB, rounded down (ceilings stay below what was computed)."""
    return f"{whole_mib(b)}M"


def percentile(values: List[float], p: float) -> Optional[float]:
    """Nearest-rank percentile (p in 0..100); None for no values."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(p / 100.0 * len(s)) - 1))
    return s[k]
