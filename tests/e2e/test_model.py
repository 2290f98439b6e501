#!/usr/bin/env python3
"""The self-contained Llama decoder of the e2e harness (CPU, float32).

Proves the cached, chunked forward pass computes the same thing as a plain
full-sequence Llama forward written out independently here (causal attention
with keys/values repeated per head, RoPE applied to whole sequences), that the
grouped-query trick equals repeating keys/values, and that weights are a pure
function of the seed (every mode of a run builds the same model)."""
import math
import unittest

import e2e_testlib

e2e_testlib.require_torch()

import torch  # noqa: E402

import e2e_models as M  # noqa: E402
import e2e_plan as P  # noqa: E402

SPEC = P.ModelSpec("test", layers=2, hidden=48, heads=6, kv_heads=2, head_dim=8, intermediate=96, vocab=101,
                   rope_theta=10000.0)


def reference_logits(model: M.NativeLlama, ids: torch.Tensor) -> torch.Tensor:
    """A plain Llama forward over the whole sequence, no cache: logits of every position."""
    s = model.spec
    t = ids.shape[1]
    x = model.model.embed_tokens(ids)
    pos = torch.arange(t, dtype=torch.float32)
    inv = 1.0 / (s.rope_theta ** (torch.arange(0, s.head_dim, 2).float() / s.head_dim))
    ang = torch.outer(pos, inv)
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)

    def rope(z):
        half = s.head_dim // 2
        return z * cos + torch.cat([-z[..., half:], z[..., :half]], -1) * sin

    causal = torch.ones(t, t).tril().bool()
    for layer in model.model.layers:
        a = layer.self_attn
        h = layer.input_layernorm(x)
        q = rope(a.q_proj(h).view(1, t, s.heads, s.head_dim).transpose(1, 2))
        k = rope(a.k_proj(h).view(1, t, s.kv_heads, s.head_dim).transpose(1, 2))
        v = a.v_proj(h).view(1, t, s.kv_heads, s.head_dim).transpose(1, 2)
        rep = s.heads // s.kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        w = (q @ k.transpose(-1, -2)) / math.sqrt(s.head_dim)
        w = w.masked_fill(~causal, float("-inf")).softmax(-1)
        o = (w @ v).transpose(1, 2).reshape(1, t, s.heads * s.head_dim)
        x = x + a.o_proj(o)
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return model.lm_head(model.model.norm(x))[0]


class NativeDecoderTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.manual_seed(0)
        cls.backend = M.NativeBackend(SPEC, "cpu", "float32", seed=5)
        g = torch.Generator().manual_seed(1)
        cls.ids = torch.randint(0, SPEC.vocab, (1, 45), generator=g)

    def test_cached_chunked_forward_equals_full_sequence_reference(self):
        with torch.no_grad():
            ref = reference_logits(self.backend.model, self.ids)
            toks = self.ids[0].tolist()
            for chunks in ([45], [16, 16, 13], [1] * 45, [30, 1, 1, 13]):
                cache = self.backend.new_cache(64)
                pos = 0
                for n in chunks:
                    got = self.backend.logits(cache, toks[pos:pos + n], pos)
                    pos += n
                    torch.testing.assert_close(got, ref[pos - 1], rtol=1e-4, atol=1e-5,
                                               msg=f"chunks {chunks}, position {pos - 1}")

    def test_grouped_query_attention_equals_repeating_keys_and_values(self):
        g = torch.Generator().manual_seed(2)
        q = torch.randn(1, 6, 5, 8, generator=g)
        k = torch.randn(1, 2, 12, 8, generator=g)
        v = torch.randn(1, 2, 12, 8, generator=g)
        start = 7  # five queries at positions 7..11 over twelve keys
        mask = torch.arange(12)[None, :] <= torch.arange(start, start + 5)[:, None]
        kr, vr = k.repeat_interleave(3, dim=1), v.repeat_interleave(3, dim=1)
        w = (q @ kr.transpose(-1, -2) / math.sqrt(8)).masked_fill(~mask, float("-inf")).softmax(-1)
        torch.testing.assert_close(M.grouped_attention(q, k, v, mask), w @ vr, rtol=1e-5, atol=1e-6)
        q1 = q[:, :, :1]
        w1 = (q1 @ kr.transpose(-1, -2) / math.sqrt(8)).softmax(-1)
        torch.testing.assert_close(M.grouped_attention(q1, k, v, None), w1 @ vr, rtol=1e-5, atol=1e-6)

    def test_greedy_feed_is_the_argmax(self):
        cache = self.backend.new_cache(64)
        toks = self.ids[0].tolist()[:20]
        tok = self.backend.feed(cache, toks, 0)
        ref = reference_logits(self.backend.model, self.ids[:, :20])[-1]
        self.assertEqual(tok, int(ref.argmax()))
        top = torch.topk(ref.float(), 2).values
        self.assertAlmostEqual(self.backend.last_margin, float(top[0] - top[1]), places=4)
        self.assertGreaterEqual(self.backend.last_margin, 0.0)

    def test_weights_are_a_function_of_the_seed(self):
        a = M.NativeBackend(SPEC, "cpu", "float32", seed=5).model.state_dict()
        b = M.NativeBackend(SPEC, "cpu", "float32", seed=5).model.state_dict()
        c = M.NativeBackend(SPEC, "cpu", "float32", seed=6).model.state_dict()
        self.assertTrue(all(torch.equal(a[k], b[k]) for k in a))
        self.assertFalse(torch.equal(a["lm_head.weight"], c["lm_head.weight"]))
        self.assertTrue(torch.equal(a["model.norm.weight"], torch.ones(SPEC.hidden)))

    def test_parameter_count_and_cache_size_match_the_plan(self):
        for spec in (SPEC, P.PRESETS["tiny"]):
            b = M.NativeBackend(spec, "cpu", "float32", seed=1)
            self.assertEqual(b.param_count(), spec.params())
            cache = b.new_cache(32)
            nbytes = sum(t.numel() * t.element_size() for t in cache.k + cache.v)
            self.assertEqual(nbytes, 32 * spec.kv_bytes_per_token("float32"))

    def test_transformers_parameter_names(self):
        # crosscheck() loads transformers' state dict into this model by name.
        names = set(self.backend.model.state_dict())
        for n in ("model.embed_tokens.weight", "model.layers.1.self_attn.k_proj.weight",
                  "model.layers.0.mlp.down_proj.weight", "model.layers.0.post_attention_layernorm.weight",
                  "model.norm.weight", "lm_head.weight"):
            self.assertIn(n, names)
        self.assertNotIn("inv_freq", names)

    def test_overlong_session_is_refused(self):
        cache = self.backend.new_cache(16)
        with self.assertRaisesRegex(ValueError, "exceeds"):
            self.backend.feed(cache, list(range(17)), 0)

    def test_out_of_memory_is_recognised(self):
        self.assertTrue(M.is_oom(RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB")))
        self.assertFalse(M.is_oom(RuntimeError("shape mismatch")))
        self.assertFalse(M.is_oom(ValueError("out of memory")))


class LlamaConfigSpellingTest(unittest.TestCase):
    """llama_config() against the two ways transformers has taken RoPE's theta."""

    class Strict5:  # transformers 5: rope_parameters only, unknown names refused
        def __init__(self, hidden_size=1, rope_parameters=None):
            self.rope_parameters = rope_parameters or {"rope_type": "default", "rope_theta": 10000.0}

    class Lenient4:  # transformers 4: rope_theta, anything else kept as an attribute
        def __init__(self, hidden_size=1, rope_theta=10000.0, **kwargs):
            self.rope_theta = rope_theta
            for k, v in kwargs.items():
                setattr(self, k, v)

    class Deaf:  # takes no theta at all
        def __init__(self, hidden_size=1, **kwargs):
            self.rope_theta = 10000.0

    def test_each_spelling_gets_the_theta(self):
        self.assertEqual(M.llama_config(self.Strict5, {"hidden_size": 4}, 5e5).rope_parameters["rope_theta"], 5e5)
        self.assertEqual(M.llama_config(self.Lenient4, {"hidden_size": 4}, 5e5).rope_theta, 5e5)

    def test_a_config_that_ignores_theta_is_an_error(self):
        with self.assertRaisesRegex(RuntimeError, r"theta came out as \[10000.0\]"):
            M.llama_config(self.Deaf, {"hidden_size": 4}, 5e5)

    def test_a_lenient_config_keeping_rope_parameters_unused_is_not_fooled(self):
        class Lenient4Listing(self.Lenient4):  # lists rope_parameters, yet reads rope_theta
            __dataclass_fields__ = {"rope_parameters": None}
        c = M.llama_config(Lenient4Listing, {"hidden_size": 4}, 5e5)
        self.assertEqual(c.rope_theta, 5e5)


class BackendChoiceTest(unittest.TestCase):
    def test_auto_falls_back_to_native_and_says_so(self):
        b = M.make_backend("auto", SPEC, "cpu", "float32", seed=1)
        if M.transformers_version() is None:
            self.assertEqual(b.name, "native")
            self.assertIn("transformers not importable", b.note)
        else:
            self.assertEqual(b.name, "transformers")

    def test_explicit_transformers_without_it_is_an_error(self):
        if M.transformers_version() is not None:
            self.skipTest("transformers is importable here")
        with self.assertRaisesRegex(RuntimeError, "not importable"):
            M.make_backend("transformers", SPEC, "cpu", "float32", seed=1)

    @unittest.skipIf(M.transformers_version() is None, "transformers is not importable here")
    def test_native_equals_transformers_on_the_same_weights(self):
        r = M.crosscheck(P.PRESETS["tiny"], "cpu", "float32", seed=3)
        self.assertTrue(r["tokens_equal"], r)
        self.assertLess(r["max_abs_logit_diff"], 1e-3 * max(1.0, r["max_abs_logit"]))


class KvDigestTest(unittest.TestCase):
    """The per-turn KV fingerprint the harness compares between modes."""

    def setUp(self):
        self.backend = M.NativeBackend(SPEC, "cpu", "float32", seed=5)
        self.cache = self.fed_cache()

    def fed_cache(self):
        cache = self.backend.new_cache(16)
        self.backend.feed(cache, list(range(10)), 0)
        return cache

    def test_equal_caches_agree_and_one_changed_value_or_swapped_positions_do_not(self):
        d = self.backend.kv_digest(self.cache, 10)
        other = self.fed_cache()
        self.assertEqual(d, self.backend.kv_digest(other, 10), "same arithmetic, same bits, same digest")
        other.v[1][0, 1, 7, 3] += 1e-6  # one value, last bits
        self.assertNotEqual(d, self.backend.kv_digest(other, 10))
        other = self.fed_cache()
        other.k[0][:, :, [2, 5]] = other.k[0][:, :, [5, 2]]  # two positions swapped: same plain sum
        self.assertNotEqual(d, self.backend.kv_digest(other, 10))

    def test_only_the_held_positions_count(self):
        d = self.backend.kv_digest(self.cache, 10)
        self.cache.k[0][0, 0, 12, 0] = 42.0  # beyond what the session holds
        self.assertEqual(d, self.backend.kv_digest(self.cache, 10))
        self.assertIsNone(self.backend.kv_digest(None, 10))

    def test_deterministic_mode_can_be_switched_on(self):
        info = M.set_deterministic(True)
        try:
            self.assertTrue(info["on"])
            self.assertTrue(torch.are_deterministic_algorithms_enabled())
        finally:
            torch.use_deterministic_algorithms(False)
        self.assertFalse(M.set_deterministic(False)["on"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
