"""Two model backends behind one small interface, so the serving loop is identical.

- TransformersBackend: transformers' LlamaForCausalLM built from a LlamaConfig
  with random weights; each session's cache object (StaticCache by default,
  DynamicCache on request) stays alive between its turns.
- NativeBackend: a small self-contained Llama-style decoder in pure PyTorch
  (RMSNorm, RoPE, grouped-query attention, SwiGLU MLP) with a per-session cache
  of preallocated tensors. Its parameter names are transformers' own, so the two
  can be checked against each other on the same weights (crosscheck()).

Nothing here knows about kvpager.
"""
from __future__ import annotations

import hashlib
import inspect
import math
import os
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from e2e_plan import ModelSpec

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_HAVE_SDPA = hasattr(F, "scaled_dot_product_attention")


def is_oom(exc: BaseException) -> bool:
    oom_type = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class Backend:
    """What the server needs from a model: caches, a forward pass, greedy choice."""

    name = "?"

    def __init__(self, spec: ModelSpec, device: str, dtype: str):
        self.spec = spec
        self.device = torch.device(device)
        self.dtype_name = dtype
        self.dtype = TORCH_DTYPES[dtype]
        self.note = ""

    def new_cache(self, max_len: int):
        raise NotImplementedError

    def logits(self, cache, tokens: List[int], start: int) -> torch.Tensor:
        """Feeds tokens at positions start.. into cache; the last position's logits (float32)."""
        raise NotImplementedError

    # The greedy token's lead over the runner-up (float32 logits) at the last
    # feed: how far from a tie the choice was. With random weights the top
    # logits of a large vocabulary are close, so a last-bit difference in
    # the arithmetic can flip a choice whose lead is tiny; the token check
    # reports the lead where two runs first part.
    last_margin: Optional[float] = None

    def feed(self, cache, tokens: List[int], start: int) -> int:
        """Feeds tokens and returns the greedy next token (synchronises with the device)."""
        logits = self.logits(cache, tokens, start).reshape(-1).float()
        if logits.numel() < 2:
            self.last_margin = None
            return int(torch.argmax(logits).item())
        top = torch.topk(logits, 2).values
        # One copy to the host for both (a vocabulary index is exact in float32).
        tok, margin = torch.stack([torch.argmax(logits).to(logits.dtype), top[0] - top[1]]).tolist()
        self.last_margin = margin
        return int(tok)

    def param_count(self) -> int:
        return sum(p.numel() for p in self.module().parameters())

    def module(self) -> nn.Module:
        raise NotImplementedError

    def is_oom(self, exc: BaseException) -> bool:
        return is_oom(exc)

    def weights_digest(self) -> float:
        """A fingerprint of the weights: the first 4096 values of every parameter, summed in float64 on the
        host (deterministic). Every mode must build the same model for their tokens to be comparable."""
        with torch.no_grad():
            return sum(float(p.detach().reshape(-1)[:4096].cpu().double().sum()) for p in self.module().parameters())

    def describe(self) -> dict:
        return {"backend": self.name, "note": self.note, "params": self.param_count(),
                "weights_digest": self.weights_digest()}

    def kv_tensors(self, cache) -> Optional[List[torch.Tensor]]:
        """Every (batch, kv_heads, positions, head_dim) key and value tensor of a cache, None if unknown."""
        raise NotImplementedError

    def kv_digest(self, cache, length: int) -> Optional[str]:
        """A fingerprint of the first `length` positions of a session's KV, bit for bit.

        Per tensor, the bit patterns (as int16) are summed per position, and those sums
        are added plain and weighted by position, in int64 on the device (exact, so
        deterministic) with one transfer at the end. Two modes with the same
        arithmetic must agree after every turn; the first turn where they do not is
        where a placement error (or rounding) entered, even before a token differs."""
        tensors = self.kv_tensors(cache) if cache is not None else None
        if not tensors:
            return None
        if any(t.dim() != 4 or t.shape[2] < length for t in tensors):
            return None
        parts = []
        with torch.no_grad():
            pos = torch.arange(1, length + 1, device=tensors[0].device, dtype=torch.int64)  # one per digest
            for t in tensors:
                rows = t[:, :, :length, :].view(torch.int16).sum(dim=-1, dtype=torch.int64)
                parts += [rows.sum(), (rows * pos).sum()]
            values = torch.stack(parts).tolist()
        return hashlib.sha256(",".join(map(str, values)).encode()).hexdigest()[:16]


def set_deterministic(on: bool) -> dict:
    """PyTorch's deterministic kernels (the worker calls this before building the
    model; the harness puts cuBLAS's CUBLAS_WORKSPACE_CONFIG in its environment).
    warn_only: an operation without a deterministic kernel warns instead of failing
    the run. Uninitialised memory is not filled: that would add work, not change results."""
    info = {"on": on, "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}
    if not on:
        return info
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        import torch.utils.deterministic as det  # torch >= 2.1
        det.fill_uninitialized_memory = False
    except (ImportError, AttributeError):
        pass
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    return info


# --------------------------------------------------------------------------- native


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, device, dtype):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def _linear(n_in: int, n_out: int, device, dtype) -> nn.Linear:
    # No default initialisation: the model fills every weight itself, seeded.
    return torch.nn.utils.skip_init(nn.Linear, n_in, n_out, bias=False, device=device, dtype=dtype)


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec, device, dtype):
        super().__init__()
        self.spec = spec
        qd, kvd = spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim
        self.q_proj = _linear(spec.hidden, qd, device, dtype)
        self.k_proj = _linear(spec.hidden, kvd, device, dtype)
        self.v_proj = _linear(spec.hidden, kvd, device, dtype)
        self.o_proj = _linear(qd, spec.hidden, device, dtype)


class MLP(nn.Module):
    def __init__(self, spec: ModelSpec, device, dtype):
        super().__init__()
        self.gate_proj = _linear(spec.hidden, spec.intermediate, device, dtype)
        self.up_proj = _linear(spec.hidden, spec.intermediate, device, dtype)
        self.down_proj = _linear(spec.intermediate, spec.hidden, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, spec: ModelSpec, device, dtype):
        super().__init__()
        self.self_attn = Attention(spec, device, dtype)
        self.mlp = MLP(spec, device, dtype)
        self.input_layernorm = RMSNorm(spec.hidden, spec.rms_eps, device, dtype)
        self.post_attention_layernorm = RMSNorm(spec.hidden, spec.rms_eps, device, dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Grouped-query attention without copying keys/values per head.

    q: (1, H, T, D); k, v: (1, KV, S, D); mask: (T, S) bool (True = attend) or None.
    The G = H/KV query heads that share a KV head are stacked along the sequence
    axis, (1, KV, G*T, D), so one plain attention over (1, KV, S, D) serves them.
    """
    _, n_heads, t, d = q.shape
    n_kv = k.shape[1]
    g = n_heads // n_kv
    qg = q.reshape(1, n_kv, g * t, d)
    m = None if mask is None else mask.repeat(g, 1)
    if _HAVE_SDPA:
        out = F.scaled_dot_product_attention(qg, k, v, attn_mask=m)
    else:  # torch < 2.0 (Debian's CPU build): the same arithmetic, spelled out
        scores = torch.matmul(qg, k.transpose(-1, -2)) * (1.0 / math.sqrt(d))
        if m is not None:
            scores = scores.masked_fill(~m, float("-inf"))
        out = torch.matmul(torch.softmax(scores.float(), dim=-1).to(q.dtype), v)
    return out.reshape(1, n_heads, t, d)


class NativeModel(nn.Module):
    def __init__(self, spec: ModelSpec, device, dtype):
        super().__init__()
        self.embed_tokens = torch.nn.utils.skip_init(nn.Embedding, spec.vocab, spec.hidden, device=device, dtype=dtype)
        self.layers = nn.ModuleList(DecoderLayer(spec, device, dtype) for _ in range(spec.layers))
        self.norm = RMSNorm(spec.hidden, spec.rms_eps, device, dtype)


class NativeLlama(nn.Module):
    """Llama-style decoder; parameter names match transformers' LlamaForCausalLM."""

    def __init__(self, spec: ModelSpec, device, dtype):
        super().__init__()
        self.spec = spec
        self.model = NativeModel(spec, device, dtype)
        self.lm_head = _linear(spec.hidden, spec.vocab, device, dtype)
        exponent = torch.arange(0, spec.head_dim, 2, dtype=torch.int64, device=device).float() / spec.head_dim
        self.register_buffer("inv_freq", 1.0 / (spec.rope_theta ** exponent), persistent=False)

    @torch.no_grad()
    def init_weights(self, seed: int, std: float = 0.02) -> None:
        gen = torch.Generator(device=self.inv_freq.device)
        gen.manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, std, generator=gen)

    def rope(self, start: int, t: int, dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(start, start + t, device=self.inv_freq.device, dtype=torch.float32)
        freqs = pos[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, ids: torch.Tensor, cache: "NativeCache", start: int) -> torch.Tensor:
        spec = self.spec
        t = ids.shape[1]
        end = start + t
        if end > cache.max_len:
            raise ValueError(f"session of {end} tokens exceeds the cache's {cache.max_len}")
        x = self.model.embed_tokens(ids)
        cos, sin = self.rope(start, t, x.dtype)
        if t == 1:
            span, mask = end, None  # one query sees every cached key
        else:
            # Keys up to a multiple of 16 (aligned masks for fused kernels); the
            # padding is masked, as is every key after the query's own position.
            span = min(cache.max_len, (end + 15) // 16 * 16)
            q_pos = torch.arange(start, end, device=ids.device)[:, None]
            mask = torch.arange(span, device=ids.device)[None, :] <= q_pos
        for i, layer in enumerate(self.model.layers):
            a = layer.self_attn
            h = layer.input_layernorm(x)
            q = a.q_proj(h).view(1, t, spec.heads, spec.head_dim).transpose(1, 2)
            k = a.k_proj(h).view(1, t, spec.kv_heads, spec.head_dim).transpose(1, 2)
            v = a.v_proj(h).view(1, t, spec.kv_heads, spec.head_dim).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            ck, cv = cache.k[i], cache.v[i]
            ck[:, :, start:end] = k
            cv[:, :, start:end] = v
            o = grouped_attention(q, ck[:, :, :span], cv[:, :, :span], mask)
            x = x + a.o_proj(o.transpose(1, 2).reshape(1, t, spec.heads * spec.head_dim))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        x = self.model.norm(x[:, -1:])
        return self.lm_head(x)[0, -1].float()


class NativeCache:
    """One session's KV: per layer a (1, kv_heads, max_len, head_dim) key and value tensor."""

    def __init__(self, spec: ModelSpec, max_len: int, device, dtype):
        shape = (1, spec.kv_heads, max_len, spec.head_dim)
        self.max_len = max_len
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(spec.layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(spec.layers)]


class NativeBackend(Backend):
    name = "native"

    def __init__(self, spec: ModelSpec, device: str, dtype: str, seed: int):
        super().__init__(spec, device, dtype)
        self.model = NativeLlama(spec, self.device, self.dtype)
        self.model.init_weights(seed)
        self.model.eval()
        self.model.requires_grad_(False)

    def module(self) -> nn.Module:
        return self.model

    def new_cache(self, max_len: int) -> NativeCache:
        return NativeCache(self.spec, max_len, self.device, self.dtype)

    def kv_tensors(self, cache: NativeCache) -> List[torch.Tensor]:
        return [t for pair in zip(cache.k, cache.v) for t in pair]

    @torch.no_grad()
    def logits(self, cache: NativeCache, tokens: List[int], start: int) -> torch.Tensor:
        ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
        return self.model(ids, cache, start)


# --------------------------------------------------------------------------- transformers


def transformers_version() -> Optional[str]:
    try:
        import transformers  # noqa: F401
    except Exception:  # not installed, or broken: the native path takes over
        return None
    return transformers.__version__


def llama_config(cls, cfg: dict, theta: float):
    """cls(**cfg) with RoPE theta set the way this transformers spells it.

    transformers 5 takes rope_parameters, 4.x rope_theta; strict configs refuse
    the other spelling, lenient ones keep it as an unused attribute, so the
    effective theta is read back and checked.
    """
    fields = set(getattr(cls, "__dataclass_fields__", {})) | set(inspect.signature(cls.__init__).parameters)
    spellings = [{"rope_parameters": {"rope_type": "default", "rope_theta": theta}}, {"rope_theta": theta}]
    if "rope_parameters" not in fields:
        spellings.reverse()
    errors = []
    for extra in spellings:
        try:
            config = cls(**cfg, **extra)
        except Exception as e:  # noqa: BLE001 - TypeError, ValueError, strict-dataclass errors: try the other
            errors.append(f"{list(extra)[0]}: {type(e).__name__}: {e}")
            continue
        rp = getattr(config, "rope_parameters", None)
        seen = [getattr(config, "rope_theta", None), rp.get("rope_theta") if isinstance(rp, dict) else None]
        seen = [float(x) for x in seen if x is not None]
        if not seen or any(x != theta for x in seen):
            errors.append(f"{list(extra)[0]}: RoPE theta came out as {seen or 'unset'}")
            continue
        return config
    raise RuntimeError("LlamaConfig refused the RoPE settings: " + "; ".join(errors))


# How transformers' StaticCache has been built (all keyword arguments; checked
# against the library's source of each line):
#   <= 4.44        StaticCache(config, max_batch_size, max_cache_len, device, dtype=None): allocated at once
#   4.45 - 4.48    StaticCache(config, batch_size=None, max_cache_len=None, device=None, dtype=float32,
#                  max_batch_size=None, layer_device_map=None): allocated at once, on "meta" without device
#   4.49 - 4.53    StaticCache(config, max_batch_size, max_cache_len=None, device=None, dtype=float32, ...)
#   4.54 - 4.55    StaticCache(*args, **kwargs) -> Cache(layer_classes, config=None, cache_processor=None,
#                  max_batch_size=None, max_cache_len=None, device=None, dtype=None, ...): allocated at once,
#                  StaticLayer refuses a missing batch size (TypeError)
#   4.56 - 5.x     StaticCache(config, max_cache_len, offloading=False, offload_only_non_sliding=True,
#                  **kwargs): extra keywords silently ignored; layers allocate at their first update, or
#                  at Cache.early_initialization(batch_size, num_heads, head_dim, dtype, device)
STATIC_EAGER_MAX_BATCH = "config, max_batch_size=1, max_cache_len, device, dtype (allocated at once)"
STATIC_EAGER_BATCH = "config, batch_size=1, max_cache_len, device, dtype (allocated at once)"
STATIC_LAZY = "config, max_cache_len (layers allocate lazily)"


def init_keywords(cls) -> set:
    """Keyword names cls(...) takes, following *args/**kwargs up the MRO (4.54's
    StaticCache(*args, **kwargs) hands everything to Cache.__init__)."""
    names: set = set()
    for klass in getattr(cls, "__mro__", (cls,)):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = list(inspect.signature(init).parameters.values())[1:]
        except (TypeError, ValueError):
            break
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params):
            break
    return names


def static_cache_attempts(cls, config, max_len: int, device, dtype) -> List[Tuple[str, dict]]:
    """Constructor spellings for this StaticCache, the one its signature names first.

    The lazy form must come first where the signature has no batch size: 4.56+
    swallows unknown keywords, so an eager spelling would "work" and be ignored."""
    names = init_keywords(cls)
    eager_mb = (STATIC_EAGER_MAX_BATCH, dict(config=config, max_batch_size=1, max_cache_len=max_len,
                                             device=device, dtype=dtype))
    eager_b = (STATIC_EAGER_BATCH, dict(config=config, batch_size=1, max_cache_len=max_len, device=device,
                                        dtype=dtype))
    lazy = (STATIC_LAZY, dict(config=config, max_cache_len=max_len))
    if "max_batch_size" in names:
        return [eager_mb, eager_b, lazy]
    if "batch_size" in names:
        return [eager_b, eager_mb, lazy]
    return [lazy, eager_mb, eager_b]


def cache_tensors(cache) -> Optional[List[Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]]]:
    """Per layer (keys, values) of a transformers cache, None where unknown.

    4.54+: cache.layers[i].keys/.values (None before a lazy layer allocates);
    up to 4.53: cache.key_cache / cache.value_cache lists."""
    layers = getattr(cache, "layers", None)
    if isinstance(layers, (list, tuple)) and layers and all(hasattr(x, "keys") for x in layers):
        return [(getattr(x, "keys", None), getattr(x, "values", None)) for x in layers]
    kc, vc = getattr(cache, "key_cache", None), getattr(cache, "value_cache", None)
    if isinstance(kc, (list, tuple)) and isinstance(vc, (list, tuple)) and len(kc) == len(vc):
        return list(zip(kc, vc))
    return None


def check_cache_layout(cache, spec: ModelSpec, max_len: int, device: torch.device, dtype) -> Optional[str]:
    """None when every allocated layer is (1, kv_heads, max_len, head_dim) in dtype on device
    (or nothing is allocated yet); otherwise what is wrong."""
    kv = cache_tensors(cache)
    if kv is None:
        return None
    if len(kv) != spec.layers and len(kv) != 0:
        return f"{len(kv)} cache layers for a {spec.layers}-layer model"
    want = (1, spec.kv_heads, max_len, spec.head_dim)
    for i, pair in enumerate(kv):
        for what, t in zip(("keys", "values"), pair):
            if not isinstance(t, torch.Tensor):
                continue  # not allocated yet (lazy)
            if tuple(t.shape) != want or t.dtype != dtype or t.device.type != device.type:
                return (f"layer {i} {what} {tuple(t.shape)} {t.dtype} on {t.device}, wanted {want} {dtype} "
                        f"on {device}")
    return None


def cache_allocated(cache) -> Optional[bool]:
    kv = cache_tensors(cache)
    if kv is None:
        return None
    return bool(kv) and all(isinstance(t, torch.Tensor) and t.numel() > 0 for pair in kv for t in pair)


def build_static_cache(cls, config, spec: ModelSpec, max_len: int, device: torch.device, dtype) -> Tuple[object, str]:
    """A StaticCache for one session, allocated now where this transformers allows it.

    Returns the cache and how it was made. Every spelling is checked: the tensors
    it allocated (at once, or by early_initialization) must have the session's
    shape, dtype and device, else the next spelling is tried."""
    errors = []
    for how, kw in static_cache_attempts(cls, config, max_len, device, dtype):
        try:
            cache = cls(**kw)
        except (TypeError, ValueError) as e:
            errors.append(f"[{how}] {type(e).__name__}: {e}")
            continue
        early = ""
        if getattr(cache, "early_initialization", None) is not None and not cache_allocated(cache):
            # Allocate now, when the server admits the session, not at its first token.
            try:
                cache.early_initialization(batch_size=1, num_heads=spec.kv_heads, head_dim=spec.head_dim,
                                           dtype=dtype, device=device)
                early = ", early_initialization"
            except (TypeError, ValueError) as e:
                early = f", early_initialization refused ({type(e).__name__}: {e}): allocated at the first forward"
        bad = check_cache_layout(cache, spec, max_len, device, dtype)
        if bad is not None:
            errors.append(f"[{how}{early}] {bad}")
            continue
        if cache_allocated(cache) is False and not early:
            early = ", allocated at the first forward"
        return cache, how + early
    raise RuntimeError("transformers.StaticCache: no constructor spelling gave a usable cache: " + "; ".join(errors))


def cache_seq_len(cache) -> Optional[int]:
    """Tokens the cache holds by its own count (a tensor on 4.56+ static caches), None if it cannot say."""
    f = getattr(cache, "get_seq_length", None)
    if f is None:
        return None
    n = f()
    return int(n) if n is not None else None


def forward_options(forward) -> Tuple[bool, Optional[str]]:
    """(pass cache_position?, name of the keep-only-the-last-logits argument or None).

    cache_position: 4.38 - 5.x (later 5.x derive it from the cache and dropped it);
    num_logits_to_keep: 4.45 - 4.47; logits_to_keep: 4.48+."""
    params = inspect.signature(forward).parameters
    keep = next((a for a in ("logits_to_keep", "num_logits_to_keep") if a in params), None)
    return "cache_position" in params, keep


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self, spec: ModelSpec, device: str, dtype: str, seed: int, cache_kind: str = "static",
                 max_positions: int = 131072):
        super().__init__(spec, device, dtype)
        import transformers
        from transformers import LlamaConfig, LlamaForCausalLM

        self.transformers = transformers
        cfg = dict(vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
                   num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
                   num_key_value_heads=spec.kv_heads, head_dim=spec.head_dim,
                   max_position_embeddings=max_positions, rms_norm_eps=spec.rms_eps,
                   tie_word_embeddings=False, use_cache=True, initializer_range=0.02)
        self.config = llama_config(LlamaConfig, cfg, spec.rope_theta)
        torch.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)
        self.model = self._build(LlamaForCausalLM)
        if hasattr(self.model, "set_attn_implementation"):
            try:
                self.model.set_attn_implementation("sdpa")
            except Exception as e:  # keep the default, and say so
                self.note += f"sdpa not set ({e}); "
        self.model.eval()
        self.model.requires_grad_(False)
        # The plan's memory and the crosscheck assume exactly the spec's shape:
        # a transformers that ignored head_dim or tied the embeddings would not be it.
        if self.param_count() != spec.params():
            raise RuntimeError(f"transformers built {self.param_count()} parameters, the {spec.name} shape has "
                               f"{spec.params()} (a LlamaConfig setting was ignored)")
        self._cache_position, self._keep_arg = forward_options(self.model.forward)
        self.cache_kind = cache_kind
        self.cache_how = "DynamicCache()" if cache_kind == "dynamic" else ""
        self.note += (f"transformers {transformers.__version__}, {cache_kind} cache, "
                      f"attention {getattr(self.model.config, '_attn_implementation', '?')}")
        if not self._cache_position:
            self.note += ", positions from the cache (no cache_position argument)"
        if self._keep_arg is None:
            self.note += ", full logits per chunk (no logits_to_keep argument)"
        self.self_test()  # also settles how this transformers builds a cache: said in the note
        self.note += f", {self.cache_how}"

    def _build(self, cls) -> nn.Module:
        # Built directly on the device in the target dtype: an 8B model built in
        # float32 and then converted would need twice its size in between.
        prev = torch.get_default_dtype()
        try:
            torch.set_default_dtype(self.dtype)
            with torch.device(self.device):
                model = cls(self.config)
        except (TypeError, RuntimeError, AttributeError) as e:
            torch.set_default_dtype(prev)
            if is_oom(e):
                raise
            # Older torch: no half default dtype or no device context. Build in
            # float32 on the CPU and move (slower, and twice the host memory).
            self.note += f"built on the CPU ({e}); "
            model = cls(self.config)
        finally:
            torch.set_default_dtype(prev)
        model.to(device=self.device)
        for p in model.parameters():  # parameters only: RoPE's inv_freq buffer stays float32
            if p.dtype != self.dtype:
                p.data = p.data.to(self.dtype)
        return model

    def module(self) -> nn.Module:
        return self.model

    def kv_tensors(self, cache) -> Optional[List[torch.Tensor]]:
        kv = cache_tensors(cache)
        if kv is None:
            return None
        return [t for pair in kv for t in pair if isinstance(t, torch.Tensor)]

    def new_cache(self, max_len: int):
        tf = self.transformers
        if self.cache_kind == "dynamic":
            return tf.DynamicCache()  # no arguments: accepted from 4.36 through 5.x
        cache, how = build_static_cache(tf.StaticCache, self.config, self.spec, max_len, self.device, self.dtype)
        self.cache_how = self.cache_how or f"StaticCache({how})"
        return cache

    @torch.no_grad()
    def logits(self, cache, tokens: List[int], start: int) -> torch.Tensor:
        # Static caches of 5.x write at their own count, not at cache_position;
        # the server always feeds a session's tokens in order, and this holds it to that.
        held = cache_seq_len(cache)
        if held is not None and held != start:
            raise RuntimeError(f"transformers cache holds {held} tokens, but tokens are fed at position {start}")
        ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
        pos = torch.arange(start, start + len(tokens), device=self.device)
        kw = dict(input_ids=ids, position_ids=pos[None, :], past_key_values=cache, use_cache=True)
        if self._cache_position:
            kw["cache_position"] = pos
        if self._keep_arg:
            kw[self._keep_arg] = 1
        out = self.model(**kw)
        return out.logits[0, -1].float()

    def self_test(self) -> None:
        """A short session through the whole adapter: cache, chunked prefill, decode, the cache's count."""
        cache = self.new_cache(64)
        toks = [i % self.spec.vocab for i in range(1, 22)]
        a = self.logits(cache, toks[:16], 0)
        b = self.logits(cache, toks[16:], 16)
        c = self.logits(cache, [int(torch.argmax(b))], len(toks))
        held = cache_seq_len(cache)
        if held is not None and held != len(toks) + 1:
            raise RuntimeError(f"transformers cache counts {held} tokens after {len(toks) + 1} were fed")
        for x in (a, b, c):
            if x.shape != (self.spec.vocab,) or not bool(torch.isfinite(x).all()):
                raise RuntimeError(f"transformers gave logits of shape {tuple(x.shape)}, finite "
                                   f"{bool(torch.isfinite(x).all())}")


# --------------------------------------------------------------------------- choice


def _transformers_backend(spec, device, dtype, seed, hf_cache, max_positions) -> Backend:
    return TransformersBackend(spec, device, dtype, seed, hf_cache, max_positions)


def make_backend(kind: str, spec: ModelSpec, device: str, dtype: str, seed: int, hf_cache: str = "static",
                 max_positions: int = 131072) -> Backend:
    """kind: auto (transformers when importable and working, else native), transformers, native."""
    torch.manual_seed(seed)
    if kind == "native":
        return NativeBackend(spec, device, dtype, seed)
    version = transformers_version()
    if version is None:
        if kind == "transformers":
            raise RuntimeError("--backend transformers: transformers is not importable by this Python")
        b = NativeBackend(spec, device, dtype, seed)
        b.note = "transformers not importable: using the self-contained PyTorch Llama decoder"
        return b
    if kind == "transformers":
        return _transformers_backend(spec, device, dtype, seed, hf_cache, max_positions)
    try:
        return _transformers_backend(spec, device, dtype, seed, hf_cache, max_positions)
    except Exception as e:  # noqa: BLE001 - any incompatibility: the native decoder, said
        if is_oom(e):
            raise
        why = f"{type(e).__name__}: {e}"
    # Out of the except block: the failed model is garbage now, not held by a traceback.
    import gc
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    b = NativeBackend(spec, device, dtype, seed)
    b.note = f"transformers {version} failed ({why[:400]}): using the self-contained PyTorch Llama decoder"
    return b


def crosscheck(spec: ModelSpec, device: str, dtype: str, seed: int, hf_cache: str = "static") -> dict:
    """Native decoder vs transformers on the same weights: logits and greedy tokens.

    Prefill in two chunks, then greedy decoding, each backend with its own cache;
    proves that the native path computes a Llama and that the transformers
    adapter (cache, positions, last-token logits) drives the model correctly.
    """
    hf = TransformersBackend(spec, device, dtype, seed, hf_cache)
    native = NativeBackend(spec, device, dtype, seed)
    theirs = hf.model.state_dict()
    missing, unexpected = native.model.load_state_dict(theirs, strict=False)
    # RoPE frequencies are buffers, not weights (non-persistent, so normally absent).
    missing = [m for m in missing if not m.endswith("inv_freq")]
    unexpected = [u for u in unexpected if not u.endswith("inv_freq")]
    if missing or unexpected:
        raise RuntimeError(f"parameter names differ: missing {missing}, unexpected {unexpected}")
    # Both sides must compute RoPE with the same frequencies (theta and head_dim).
    for name, buf in hf.model.named_buffers():
        if name.endswith("inv_freq") and not name.endswith("original_inv_freq"):
            if buf.shape != native.model.inv_freq.shape or not torch.allclose(
                    buf.float().to(native.model.inv_freq.device), native.model.inv_freq, rtol=1e-6, atol=0):
                raise RuntimeError(f"RoPE frequencies differ: transformers {name} is not the native inv_freq "
                                   f"(theta {spec.rope_theta}, head_dim {spec.head_dim})")
    import random
    rng = random.Random(seed)
    prompt = [rng.randrange(spec.vocab) for _ in range(96)]
    max_len = 256
    caches = (hf.new_cache(max_len), native.new_cache(max_len))
    worst, tokens_hf, tokens_native, scale = 0.0, [], [], 0.0
    feeds = [(prompt[:64], 0), (prompt[64:], 64)]
    pos = len(prompt)
    for step in range(len(feeds) + 16):
        if step < len(feeds):
            toks, start = feeds[step]
        else:
            toks, start = [tokens_hf[-1]], pos
            pos += 1
        a = hf.logits(caches[0], toks, start)
        b = native.logits(caches[1], toks, start)
        worst = max(worst, float((a - b).abs().max()))
        scale = max(scale, float(a.abs().max()))
        if step >= len(feeds) - 1:
            tokens_hf.append(int(torch.argmax(a)))
            tokens_native.append(int(torch.argmax(b)))
    return {"max_abs_logit_diff": worst, "max_abs_logit": scale, "tokens_transformers": tokens_hf,
            "tokens_native": tokens_native, "tokens_equal": tokens_hf == tokens_native,
            "transformers_note": hf.note}
