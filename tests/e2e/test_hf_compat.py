#!/usr/bin/env python3
"""The transformers adapter's version dispatch, proven here without transformers.

The GPU run meets whichever transformers its machine has. Each fake class below
mimics one real signature and behaviour of transformers, read from the library's
source (the version line is named on each); the tests show that the adapter
picks a spelling that allocates the session's cache (shape, dtype, device) on
every line, refuses a cache it cannot verify, passes the forward arguments each
line takes, holds fed positions to the cache's own count, and that --backend
auto says so when it falls back to the native decoder."""
import inspect
import unittest

import e2e_testlib

e2e_testlib.require_torch()

import torch  # noqa: E402

import e2e_models as M  # noqa: E402
import e2e_plan as P  # noqa: E402

SPEC = P.ModelSpec("t", layers=3, hidden=32, heads=4, kv_heads=2, head_dim=8, intermediate=64, vocab=50)
CPU = torch.device("cpu")
MAX = 40


class Config:
    num_hidden_layers = SPEC.layers
    num_attention_heads = SPEC.heads
    num_key_value_heads = SPEC.kv_heads
    head_dim = SPEC.head_dim
    hidden_size = SPEC.hidden
    max_position_embeddings = 4096


def _zeros(batch, max_len, device, dtype):
    return torch.zeros((batch, SPEC.kv_heads, max_len, SPEC.head_dim), device=device, dtype=dtype)


class Static444:
    """<= 4.44: (config, max_batch_size, max_cache_len, device, dtype=None); key_cache lists, allocated at once."""

    def __init__(self, config, max_batch_size, max_cache_len, device, dtype=None):
        dtype = dtype if dtype is not None else torch.float32
        self.key_cache = [_zeros(max_batch_size, max_cache_len, device, dtype) for _ in range(config.num_hidden_layers)]
        self.value_cache = [_zeros(max_batch_size, max_cache_len, device, dtype)
                            for _ in range(config.num_hidden_layers)]

    def get_seq_length(self, layer_idx=0):
        return self.key_cache[layer_idx][0, 0].any(dim=-1).sum()


class Static447:
    """4.45 - 4.48: (config, batch_size=None, max_cache_len=None, device=None, dtype=float32,
    max_batch_size=None, layer_device_map=None); "meta" without a device; the batch size is
    batch_size or max_batch_size, torch.zeros refuses None (TypeError)."""

    def __init__(self, config, batch_size=None, max_cache_len=None, device=None, dtype=torch.float32,
                 max_batch_size=None, layer_device_map=None):
        b = batch_size or max_batch_size
        device = torch.device(device) if device is not None else torch.device("meta")
        max_cache_len = config.max_position_embeddings if max_cache_len is None else max_cache_len
        self.key_cache = [torch.zeros((b, SPEC.kv_heads, max_cache_len, SPEC.head_dim), dtype=dtype, device=device)
                          for _ in range(config.num_hidden_layers)]
        self.value_cache = [torch.zeros_like(k) for k in self.key_cache]

    get_seq_length = Static444.get_seq_length


class Static452(Static447):
    """4.49 - 4.53: (config, max_batch_size, max_cache_len=None, device=None, dtype=float32, layer_device_map=None)."""

    def __init__(self, config, max_batch_size, max_cache_len=None, device=None, dtype=torch.float32,
                 layer_device_map=None):
        super().__init__(config, max_batch_size=max_batch_size, max_cache_len=max_cache_len, device=device,
                         dtype=dtype)


class Layer454:
    """4.54's StaticLayer(max_cache_len, batch_size, num_heads, head_dim, dtype=float32, device="cpu")."""

    def __init__(self, max_cache_len, batch_size, num_heads, head_dim, dtype=torch.float32, device="cpu",
                 sliding_window=None):
        self.keys = torch.zeros((batch_size, num_heads, max_cache_len, head_dim), dtype=dtype, device=device)
        self.values = torch.zeros_like(self.keys)


class Cache454:
    """4.54 Cache(layer_classes, config=None, cache_processor=None, max_batch_size=None, max_cache_len=None,
    device=None, dtype=None, layer_device_map=None, tp_size=None, **kwargs): layers built at once from
    the config, None arguments left out (so a missing batch size is StaticLayer's TypeError)."""

    def __init__(self, layer_classes, config=None, cache_processor=None, max_batch_size=None, max_cache_len=None,
                 device=None, dtype=None, layer_device_map=None, tp_size=None, **kwargs):
        args = {"batch_size": max_batch_size if max_batch_size is not None else kwargs.get("batch_size"),
                "max_cache_len": max_cache_len or config.max_position_embeddings,
                "device": torch.device(device) if device is not None else None, "dtype": dtype,
                "head_dim": config.head_dim, "num_heads": config.num_key_value_heads}
        args = {k: v for k, v in args.items() if v is not None}
        self.layers = [layer_classes(**args) for _ in range(config.num_hidden_layers)]

    def get_seq_length(self, layer_idx=0):
        return self.layers[layer_idx].keys[0, 0].any(dim=-1).sum()


class Static454(Cache454):
    """4.54 - 4.55: StaticCache(*args, **kwargs) -> Cache(layer_classes=StaticLayer, ...)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, layer_classes=Layer454, **kwargs)


class LazyLayer:
    """4.56+: StaticLayer(max_cache_len); lazy_initialization(key_states) allocates (5.x: (keys, values)),
    update() writes at cache_position (4.56/4.57) or at its own cumulative length (5.x)."""

    def __init__(self, max_cache_len, **kwargs):
        self.max_cache_len = max_cache_len
        self.keys = self.values = None
        self.is_initialized = False
        self.cumulative_length = torch.tensor(0)

    def lazy_initialization(self, key_states, value_states=None):
        b, h, _, d = key_states.shape
        self.keys = torch.zeros((b, h, self.max_cache_len, d), dtype=key_states.dtype, device=key_states.device)
        self.values = torch.zeros_like(self.keys)
        self.is_initialized = True


class Cache457:
    """4.56 - 5.x Cache(layers=None, layer_class_to_replicate=None, offloading=False,
    offload_only_non_sliding=True) with early_initialization(batch_size, num_heads, head_dim, dtype, device)."""

    def __init__(self, layers=None, layer_class_to_replicate=None, offloading=False, offload_only_non_sliding=True):
        self.layers = layers

    def early_initialization(self, batch_size, num_heads, head_dim, dtype, device):
        fake = torch.zeros((batch_size, num_heads, 0, head_dim), dtype=dtype, device=device)
        for layer in self.layers:
            layer.lazy_initialization(fake, fake)

    def get_seq_length(self, layer_idx=0):  # 5.x: the layer's cumulative_length tensor
        return self.layers[layer_idx].cumulative_length if self.layers[layer_idx].is_initialized else 0


class Static457(Cache457):
    """4.56 - 5.x: StaticCache(config, max_cache_len, offloading=False, offload_only_non_sliding=True, **kwargs);
    extra keywords (max_batch_size, device, dtype) are accepted and ignored "for BC"."""

    def __init__(self, config, max_cache_len, offloading=False, offload_only_non_sliding=True, **kwargs):
        super().__init__(layers=[LazyLayer(max_cache_len) for _ in range(config.num_hidden_layers)])


class Static457NoEarlyInit(Static457):
    early_initialization = None  # a lazy cache that cannot be allocated ahead


class StaticIgnoresEverything:
    """A cache that swallows every keyword and allocates in float32 on its own: must be refused."""

    def __init__(self, config, **kwargs):
        self.key_cache = [_zeros(1, MAX, "cpu", torch.float32) for _ in range(config.num_hidden_layers)]
        self.value_cache = list(self.key_cache)


class StaticCacheDispatchTest(unittest.TestCase):
    def build(self, cls, dtype=torch.float64):
        return M.build_static_cache(cls, Config(), SPEC, MAX, CPU, dtype)

    def assert_session_layout(self, cache, dtype=torch.float64):
        kv = M.cache_tensors(cache)
        self.assertEqual(len(kv), SPEC.layers)
        for k, v in kv:
            for t in (k, v):
                self.assertEqual(tuple(t.shape), (1, SPEC.kv_heads, MAX, SPEC.head_dim))
                self.assertEqual(t.dtype, dtype)
                self.assertEqual(t.device.type, "cpu")

    def test_every_line_gets_the_session_layout_allocated_now(self):
        # float64 so that no library default (float32) can pass by accident
        expect = {Static444: M.STATIC_EAGER_MAX_BATCH, Static447: M.STATIC_EAGER_MAX_BATCH,
                  Static452: M.STATIC_EAGER_MAX_BATCH, Static454: M.STATIC_EAGER_MAX_BATCH,
                  Static457: M.STATIC_LAZY + ", early_initialization"}
        for cls, how in expect.items():
            with self.subTest(cls=cls.__name__):
                cache, got = self.build(cls)
                self.assertEqual(got, how)
                self.assert_session_layout(cache)
                self.assertEqual(M.cache_seq_len(cache), 0)

    def test_keywords_are_followed_up_through_star_args(self):
        self.assertIn("max_batch_size", M.init_keywords(Static454))  # only Cache454.__init__ names it
        self.assertNotIn("max_batch_size", M.init_keywords(Static457))  # **kwargs "for BC", ignored
        self.assertEqual([h for h, _ in M.static_cache_attempts(Static457, Config(), MAX, CPU, torch.float64)][0],
                         M.STATIC_LAZY)

    def test_the_lazy_spelling_never_takes_eager_keywords_it_would_ignore(self):
        _, kw = M.static_cache_attempts(Static457, Config(), MAX, CPU, torch.float64)[0]
        self.assertEqual(set(kw), {"config", "max_cache_len"})

    def test_a_lazy_cache_without_early_initialization_says_so(self):
        cache, how = self.build(Static457NoEarlyInit)
        self.assertEqual(how, M.STATIC_LAZY + ", allocated at the first forward")
        self.assertIsNone(M.cache_tensors(cache)[0][0])

    def test_a_cache_with_the_wrong_layout_is_refused(self):
        with self.assertRaisesRegex(RuntimeError, r"no constructor spelling.*torch.float32.*wanted"):
            self.build(StaticIgnoresEverything)

    def test_the_meta_device_default_is_never_accepted(self):
        # Static447 without a device would sit on "meta": check_cache_layout must say so.
        cache = Static447(Config(), max_batch_size=1, max_cache_len=MAX, dtype=torch.float64)
        self.assertRegex(M.check_cache_layout(cache, SPEC, MAX, CPU, torch.float64), "meta")

    def test_seq_len_reads_ints_and_tensors(self):
        cache, _ = self.build(Static457)
        cache.layers[0].cumulative_length += 7
        self.assertEqual(M.cache_seq_len(cache), 7)
        self.assertIsNone(M.cache_seq_len(object()))


class ForwardOptionsTest(unittest.TestCase):
    """LlamaForCausalLM.forward's arguments, line by line."""

    def test_each_line(self):
        def f444(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                 inputs_embeds=None, labels=None, use_cache=None, output_attentions=None,
                 output_hidden_states=None, return_dict=None, cache_position=None):
            pass

        def f446(self, input_ids=None, position_ids=None, past_key_values=None, use_cache=None,
                 cache_position=None, num_logits_to_keep=0, **loss_kwargs):
            pass

        def f457(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                 inputs_embeds=None, labels=None, use_cache=None, cache_position=None, logits_to_keep=0, **kwargs):
            pass

        def f5late(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                   inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0, **kwargs):
            pass

        self.assertEqual(M.forward_options(f444), (True, None))
        self.assertEqual(M.forward_options(f446), (True, "num_logits_to_keep"))
        self.assertEqual(M.forward_options(f457), (True, "logits_to_keep"))
        self.assertEqual(M.forward_options(f5late), (False, "logits_to_keep"))


class FakeModel(torch.nn.Module):
    """Stands in for LlamaForCausalLM in logits(): records its keyword arguments, grows a 5.x-style cache."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.calls = []

    def forward(self, input_ids=None, position_ids=None, past_key_values=None, use_cache=None, logits_to_keep=0,
                **kwargs):
        self.calls.append(dict(kwargs, input_ids=input_ids, position_ids=position_ids, logits_to_keep=logits_to_keep))
        past_key_values.layers[0].cumulative_length += input_ids.shape[1]

        class Out:
            logits = torch.zeros(1, 1, SPEC.vocab)
        return Out()


class PositionGuardTest(unittest.TestCase):
    def backend(self):
        b = M.TransformersBackend.__new__(M.TransformersBackend)  # no transformers here: the adapter alone
        M.Backend.__init__(b, SPEC, "cpu", "float32")
        b.model = FakeModel()
        b._cache_position, b._keep_arg = M.forward_options(b.model.forward)
        return b

    def test_positions_follow_the_cache_and_arguments_fit_the_signature(self):
        b = self.backend()
        cache, _ = M.build_static_cache(Static457, Config(), SPEC, MAX, CPU, torch.float32)
        b.logits(cache, [1, 2, 3], 0)
        b.logits(cache, [4], 3)
        call = b.model.calls[-1]
        self.assertEqual(call["position_ids"].tolist(), [[3]])
        self.assertEqual(call["logits_to_keep"], 1)
        self.assertNotIn("cache_position", call)  # this forward does not name it
        with self.assertRaisesRegex(RuntimeError, "holds 4 tokens, but tokens are fed at position 7"):
            b.logits(cache, [5], 7)


class AutoFallbackTest(unittest.TestCase):
    def test_auto_falls_back_to_native_saying_why_and_explicit_transformers_raises(self):
        saved = M.transformers_version, M._transformers_backend

        def broken(*a, **k):
            raise TypeError("StaticCache.__init__() got an unexpected keyword argument 'config'")
        try:
            M.transformers_version = lambda: "9.9.9"
            M._transformers_backend = broken
            b = M.make_backend("auto", SPEC, "cpu", "float32", seed=1)
            self.assertEqual(b.name, "native")
            self.assertIn("transformers 9.9.9 failed (TypeError: StaticCache.__init__()", b.note)
            with self.assertRaisesRegex(TypeError, "unexpected keyword"):
                M.make_backend("transformers", SPEC, "cpu", "float32", seed=1)

            def oom(*a, **k):
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            M._transformers_backend = oom
            with self.assertRaisesRegex(RuntimeError, "out of memory"):  # never hidden by a fallback
                M.make_backend("auto", SPEC, "cpu", "float32", seed=1)
        finally:
            M.transformers_version, M._transformers_backend = saved


def fake_transformers():
    """A stand-in transformers module, 5.x-shaped: a dataclass LlamaConfig taking rope_parameters, a lazy
    StaticCache (Static457) and a LlamaForCausalLM whose forward takes no cache_position. Its arithmetic is
    the native decoder's, so this proves the adapter's plumbing (build, cache, self-test, crosscheck's
    name and RoPE checks), not transformers' numerics: the GPU run's crosscheck does that."""
    import dataclasses
    import types

    @dataclasses.dataclass
    class LlamaConfig:
        vocab_size: int = 32000
        hidden_size: int = 4096
        intermediate_size: int = 11008
        num_hidden_layers: int = 32
        num_attention_heads: int = 32
        num_key_value_heads: int = 32
        max_position_embeddings: int = 2048
        initializer_range: float = 0.02
        rms_norm_eps: float = 1e-6
        use_cache: bool = True
        tie_word_embeddings: bool = False
        rope_parameters: dict = None
        head_dim: int = None

    class LlamaForCausalLM(M.NativeLlama):
        def __init__(self, config):
            spec = P.ModelSpec("hf", config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
                               config.num_key_value_heads, config.head_dim, config.intermediate_size,
                               config.vocab_size, config.rope_parameters["rope_theta"], config.rms_norm_eps)
            super().__init__(spec, "cpu", torch.get_default_dtype())
            for prm in self.parameters():  # transformers draws from the global generator
                torch.nn.init.normal_(prm, 0.0, config.initializer_range)
            self.config = types.SimpleNamespace(_attn_implementation="sdpa")

        def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                    inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0, **kwargs):
            layers = past_key_values.layers
            if not layers[0].is_initialized:
                k = torch.zeros(1, self.spec.kv_heads, 0, self.spec.head_dim, dtype=self.lm_head.weight.dtype)
                for layer in layers:
                    layer.lazy_initialization(k, k)
            start = int(layers[0].cumulative_length)  # 5.x: writes at its own count, not at position_ids
            view = types.SimpleNamespace(k=[x.keys for x in layers], v=[x.values for x in layers],
                                         max_len=layers[0].max_cache_len)
            logits = M.NativeLlama.forward(self, input_ids, view, start)
            for layer in layers:
                layer.cumulative_length += input_ids.shape[1]
            return types.SimpleNamespace(logits=logits[None, None, :])

    return types.SimpleNamespace(__version__="5.99-fake", LlamaConfig=LlamaConfig,
                                 LlamaForCausalLM=LlamaForCausalLM, StaticCache=Static457, DynamicCache=None)


class AdapterPlumbingTest(unittest.TestCase):
    def setUp(self):
        import sys
        self.saved = sys.modules.get("transformers")
        sys.modules["transformers"] = fake_transformers()

    def tearDown(self):
        import sys
        if self.saved is None:
            del sys.modules["transformers"]
        else:
            sys.modules["transformers"] = self.saved

    def test_backend_builds_self_tests_and_says_how(self):
        b = M.make_backend("auto", P.PRESETS["tiny"], "cpu", "float32", seed=2)
        self.assertEqual(b.name, "transformers", b.note)
        self.assertIn("transformers 5.99-fake, static cache, attention sdpa", b.note)
        self.assertIn("positions from the cache (no cache_position argument)", b.note)
        self.assertIn("StaticCache(" + M.STATIC_LAZY + ", early_initialization)", b.note)
        self.assertEqual(b.param_count(), P.PRESETS["tiny"].params())

    def test_crosscheck_runs_through(self):
        r = M.crosscheck(P.PRESETS["tiny"], "cpu", "float32", seed=3)
        self.assertTrue(r["tokens_equal"], r)
        self.assertEqual(r["max_abs_logit_diff"], 0.0)

    def test_crosscheck_catches_other_rope_frequencies(self):
        import sys
        tf = sys.modules["transformers"]
        orig = tf.LlamaForCausalLM.__init__

        def skewed(model, config):
            orig(model, config)
            model.inv_freq.mul_(1.5)
        tf.LlamaForCausalLM.__init__ = skewed
        try:
            with self.assertRaisesRegex(RuntimeError, "RoPE frequencies differ"):
                M.crosscheck(P.PRESETS["tiny"], "cpu", "float32", seed=3)
        finally:
            tf.LlamaForCausalLM.__init__ = orig

    def test_a_model_of_another_shape_is_refused_and_auto_says_so(self):
        import sys
        tf = sys.modules["transformers"]
        orig = tf.LlamaForCausalLM.__init__

        def tied(model, config):  # as if tie_word_embeddings=False had been ignored
            orig(model, config)
            model.lm_head.weight = model.model.embed_tokens.weight
        tf.LlamaForCausalLM.__init__ = tied
        try:
            b = M.make_backend("auto", P.PRESETS["tiny"], "cpu", "float32", seed=2)
        finally:
            tf.LlamaForCausalLM.__init__ = orig
        self.assertEqual(b.name, "native")
        self.assertRegex(b.note, r"transformers 5.99-fake failed \(RuntimeError: transformers built \d+ parameters")


class HarnessCheckTest(unittest.TestCase):
    def test_modes_on_different_backends_fail_the_check(self):
        import e2e_harness as H
        run = {"backend": {"backend": "transformers"}}
        report = {"plan": {"workload": {"sessions": 1}, "device": "cpu", "resident_sessions": 1},
                  "modes_requested": [], "runs": {}, "correctness": {}, "safety": {"ok": True},
                  "modes": {"hbm": [run], "kvpager": [{"backend": {"backend": "native"}}]}}
        self.assertTrue(any("different model backends" in x for x in H.check(report)))
        report["modes"]["kvpager"] = [run]
        self.assertFalse(any("different model backends" in x for x in H.check(report)))

    def test_modes_with_different_weights_fail_the_check(self):
        import e2e_harness as H
        a = M.NativeBackend(SPEC, "cpu", "float32", seed=1).describe()
        same = M.NativeBackend(SPEC, "cpu", "float32", seed=1).describe()
        other = M.NativeBackend(SPEC, "cpu", "float32", seed=2).describe()
        self.assertEqual(a["weights_digest"], same["weights_digest"])
        report = {"plan": {"workload": {"sessions": 1}, "device": "cpu", "resident_sessions": 1},
                  "modes_requested": [], "runs": {}, "correctness": {}, "safety": {"ok": True},
                  "modes": {"hbm": [{"backend": a}], "kvpager": [{"backend": same}]}}
        self.assertFalse(any("different weights" in x for x in H.check(report)))
        report["modes"]["kvpager"] = [{"backend": other}]
        self.assertTrue(any("different weights" in x for x in H.check(report)))


if __name__ == "__main__":
    # Signatures of the fakes are what the dispatch reads: fail loudly if inspect cannot see them.
    assert "max_batch_size" in inspect.signature(Static452.__init__).parameters
    unittest.main(verbosity=2)
