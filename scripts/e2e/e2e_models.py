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

import inspect
import math
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

    def feed(self, cache, tokens: List[int], start: int) -> int:
        """Feeds tokens and returns the greedy next token (synchronises with the device)."""
        return int(torch.argmax(self.logits(cache, tokens, start)).item())

    def param_count(self) -> int:
        return sum(p.numel() for p in self.module().parameters())

    def module(self) -> nn.Module:
        raise NotImplementedError

    def is_oom(self, exc: BaseException) -> bool:
        return is_oom(exc)

    def describe(self) -> dict:
        return {"backend": self.name, "note": self.note, "params": self.param_count()}


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
        except (TypeError, ValueError) as e:
            errors.append(f"{list(extra)[0]}: {e}")
            continue
        rp = getattr(config, "rope_parameters", None)
        seen = [getattr(config, "rope_theta", None), rp.get("rope_theta") if isinstance(rp, dict) else None]
        seen = [float(x) for x in seen if x is not None]
        if not seen or any(x != theta for x in seen):
            errors.append(f"{list(extra)[0]}: RoPE theta came out as {seen or 'unset'}")
            continue
        return config
    raise RuntimeError("LlamaConfig refused the RoPE settings: " + "; ".join(errors))


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
        params = inspect.signature(self.model.forward).parameters
        self._cache_position = "cache_position" in params
        self._keep_arg = next((a for a in ("logits_to_keep", "num_logits_to_keep") if a in params), None)
        self.cache_kind = cache_kind
        self.note += (f"transformers {transformers.__version__}, {cache_kind} cache, "
                      f"attention {getattr(self.model.config, '_attn_implementation', '?')}")

    def _build(self, cls) -> nn.Module:
        # Built directly on the device in the target dtype: an 8B model built in
        # float32 and then converted would need twice its size in between.
        prev = torch.get_default_dtype()
        try:
            torch.set_default_dtype(self.dtype)
            with torch.device(self.device):
                model = cls(self.config)
        except (TypeError, RuntimeError, AttributeError) as e:
            # Older torch: no half default dtype or no device context. Build in
            # float32 on the CPU and move (slower, and twice the host memory).
            torch.set_default_dtype(prev)
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

    def new_cache(self, max_len: int):
        tf = self.transformers
        if self.cache_kind == "dynamic":
            return tf.DynamicCache()
        attempts = (dict(config=self.config, max_cache_len=max_len),
                    dict(config=self.config, max_batch_size=1, max_cache_len=max_len, device=self.device,
                         dtype=self.dtype),
                    dict(config=self.config, batch_size=1, max_cache_len=max_len, device=self.device,
                         dtype=self.dtype))
        last: Optional[Exception] = None
        for kw in attempts:
            try:
                cache = tf.StaticCache(**kw)
                break
            except TypeError as e:
                last = e
        else:
            raise RuntimeError(f"transformers.StaticCache: no known constructor fits ({last})")
        if hasattr(cache, "early_initialization"):
            # Allocate now, when the server admits the session, not at its first token.
            cache.early_initialization(batch_size=1, num_heads=self.spec.kv_heads, head_dim=self.spec.head_dim,
                                       dtype=self.dtype, device=self.device)
        return cache

    @torch.no_grad()
    def logits(self, cache, tokens: List[int], start: int) -> torch.Tensor:
        ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
        pos = torch.arange(start, start + len(tokens), device=self.device)
        kw = dict(input_ids=ids, position_ids=pos[None, :], past_key_values=cache, use_cache=True)
        if self._cache_position:
            kw["cache_position"] = pos
        if self._keep_arg:
            kw[self._keep_arg] = 1
        out = self.model(**kw)
        return out.logits[0, -1].float()


# --------------------------------------------------------------------------- choice


def make_backend(kind: str, spec: ModelSpec, device: str, dtype: str, seed: int, hf_cache: str = "static",
                 max_positions: int = 131072) -> Backend:
    """kind: auto (transformers when importable, else native), transformers, native."""
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
    return TransformersBackend(spec, device, dtype, seed, hf_cache, max_positions)


def crosscheck(spec: ModelSpec, device: str, dtype: str, seed: int, hf_cache: str = "static") -> dict:
    """Native decoder vs transformers on the same weights: logits and greedy tokens.

    Prefill in two chunks, then greedy decoding, each backend with its own cache;
    proves that the native path computes a Llama and that the transformers
    adapter (cache, positions, last-token logits) drives the model correctly.
    """
    hf = TransformersBackend(spec, device, dtype, seed, hf_cache)
    native = NativeBackend(spec, device, dtype, seed)
    missing, unexpected = native.model.load_state_dict(hf.model.state_dict(), strict=False)
    missing = [m for m in missing if not m.endswith("inv_freq")]
    unexpected = [u for u in unexpected if not u.endswith("inv_freq")]
    if missing or unexpected:
        raise RuntimeError(f"parameter names differ: missing {missing}, unexpected {unexpected}")
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
