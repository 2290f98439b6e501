#!/usr/bin/env python3
"""The e2e harness's logic without a model: plan arithmetic, the schedule, the
serving loop's pool (LRU drops, recompute, out-of-memory retry) and the checks
that compare token logs. Needs no torch: the server is driven by a stand-in
model whose next token is a function of the whole sequence it was fed, so any
mistake in what the server feeds (order, positions, a lost token on recompute)
changes the tokens."""
import copy
import json
import os
import subprocess
import sys
import tempfile
import unittest

import e2e_testlib  # noqa: F401  (puts scripts/e2e on sys.path)
import e2e_harness as H
import e2e_plan as P
from e2e_server import CapacityError, Server


class SequenceModel:
    """Stand-in backend: a cache is the list of tokens fed so far."""

    def __init__(self, vocab=97, oom_allocs=(), oom_at_first_feed=False):
        self.vocab = vocab
        self.allocs = 0
        # Caches (by allocation number) whose first decode step runs out of
        # memory: the first reply token is then already in the history.
        self.oom_allocs = set(oom_allocs)
        self.oom_at_first_feed = oom_at_first_feed

    def new_cache(self, max_len):
        self.allocs += 1
        return {"tokens": [], "max_len": max_len, "oom": self.allocs in self.oom_allocs}

    def feed(self, cache, tokens, start):
        if start != len(cache["tokens"]):
            raise AssertionError(f"fed at position {start}, the cache holds {len(cache['tokens'])}")
        if cache["oom"] and (self.oom_at_first_feed or (len(tokens) == 1 and start > 0)):
            cache["oom"] = False
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (stand-in)")
        cache["tokens"].extend(tokens)
        if len(cache["tokens"]) > cache["max_len"]:
            raise AssertionError("cache overflow")
        h = 0
        for t in cache["tokens"]:
            h = (h * 31 + t + 1) % 1_000_003
        return h % self.vocab

    def is_oom(self, exc):
        return "out of memory" in str(exc)


class MarginModel(SequenceModel):
    """Says how far from a tie each choice was: the position fed last, as a float."""

    def feed(self, cache, tokens, start):
        tok = super().feed(cache, tokens, start)
        self.last_margin = float(start + len(tokens))
        return tok


def serve(wl, capacity_sessions=None, chunk=7, model=None):
    model = model or SequenceModel()
    cache_bytes = 1000
    srv = Server(model, wl.max_len(), chunk,
                 kv_capacity_bytes=None if capacity_sessions is None else capacity_sessions * cache_bytes,
                 cache_bytes=cache_bytes)
    out = []
    for t in wl.turns():
        r = srv.turn(t.session, wl.tokens(t, model.vocab), wl.reply)
        out.append((t, r, list(srv.resident()), srv.kv_in_use()))
    return out


class PlanTest(unittest.TestCase):
    def test_llama3_8b_shape_matches_the_published_model(self):
        s = P.PRESETS["llama3-8b"]
        self.assertEqual(s.kv_bytes_per_token("bfloat16"), 128 * 1024)  # the issue's 128 KiB per token
        self.assertEqual(s.params(), 8_030_261_248)  # Meta-Llama-3-8B's parameter count

    def test_plan_adds_up_and_default_budget_holds_the_resident_sessions(self):
        wl = P.Workload(1, sessions=8, context=1000, tool_min=10, tool_max=20, reply=4, rr_rounds=2,
                        random_turns=5)
        p = P.make_plan(P.PRESETS["small"], "bfloat16", "cuda", wl, 256, None, 3)
        self.assertEqual(p.footprint_bytes, p.weight_bytes + p.kv_total_bytes + p.workspace_bytes)
        self.assertEqual(p.kv_total_bytes, 8 * p.session_kv_bytes)
        self.assertEqual(p.session_kv_bytes, p.max_len * p.kv_bytes_per_token)
        self.assertEqual(p.resident_sessions, 3)
        self.assertGreaterEqual(p.kv_capacity_bytes, 3 * p.session_kv_bytes)  # room for 3 sessions, not 4
        self.assertLess(p.kv_capacity_bytes, 4 * p.session_kv_bytes)
        self.assertGreaterEqual(p.max_len, max(wl.session_lengths()))

    def test_default_budget_holds_the_resident_sessions_at_the_pagers_high_watermark_too(self):
        # The pager demotes above high_watermark x B: sized as weights + workspace + KV alone, B left the
        # pager 1.93 of 2 sessions on an H200. Sized up, recompute must still hold exactly the same sessions.
        wl = P.Workload(1, sessions=4, context=32000, tool_min=200, tool_max=400, reply=32, rr_rounds=1,
                        random_turns=4)
        p = P.make_plan(P.PRESETS["llama3-8b"], "bfloat16", "cuda", wl, 2048, None, 2)
        need = p.weight_bytes + p.workspace_bytes + 2 * p.session_kv_bytes
        self.assertGreater(p.budget_bytes, need)
        self.assertEqual(p.resident_sessions, 2)
        self.assertEqual(p.pager_resident_sessions, 2)
        self.assertGreaterEqual(int(p.budget_bytes * P.PAGER_HIGH_WATERMARK), need)
        # What the pager is given (whole MiB) still leaves room at the watermark for chunk rounding.
        given = int(P.knob_bytes(p.budget_bytes)[:-1]) * P.MiB
        self.assertEqual(given, p.budget_bytes, "the default budget is whole MiB")
        self.assertGreaterEqual(int(given * P.PAGER_HIGH_WATERMARK) - need, P.PAGER_HEADROOM // 2)
        self.assertEqual(p.to_json()["pager_resident_sessions"], 2)
        # A session smaller than the watermark's slack: the budget stops short of holding one more session
        # for recompute, and the pager then holds fewer than planned (said in the safety line).
        tiny = P.make_plan(P.PRESETS["tiny"], "float32", "cpu", P.Workload(1, 4, 192, 8, 24, 6, 2, 6), 64, None, 2)
        self.assertEqual(tiny.resident_sessions, 2)
        self.assertLess(tiny.budget_bytes,
                        tiny.weight_bytes + tiny.workspace_bytes + 3 * tiny.session_kv_bytes)
        # An explicit --budget is taken as given.
        given = P.make_plan(P.PRESETS["llama3-8b"], "bfloat16", "cuda", wl, 2048, need, 2)
        self.assertEqual(given.budget_bytes, need)
        self.assertEqual(given.pager_resident_sessions, 1)

    def test_budget_below_one_session_is_refused_naming_the_flag(self):
        wl = P.Workload(1, 2, 100, 5, 10, 3, 1, 1)
        spec = P.PRESETS["tiny"]
        with self.assertRaisesRegex(P.PlanError, "--budget"):
            P.make_plan(spec, "float32", "cpu", wl, 32, spec.weight_bytes("float32"), 1)
        with self.assertRaisesRegex(P.PlanError, "--resident-sessions"):
            P.make_plan(spec, "float32", "cpu", wl, 32, None, 3)

    def test_sizes_and_percentiles(self):
        self.assertEqual(P.parse_bytes("8G"), 8 * P.GiB)
        self.assertEqual(P.parse_bytes("1.5M"), 3 * P.MiB // 2)
        self.assertEqual(P.parse_bytes("123"), 123)
        with self.assertRaises(ValueError):
            P.parse_bytes("eight")
        self.assertEqual(P.knob_bytes(3 * P.GiB + 5), "3072M")
        self.assertEqual(P.percentile([5, 1, 3, 2, 4], 50), 3)
        self.assertEqual(P.percentile(list(range(1, 101)), 99), 99)
        self.assertIsNone(P.percentile([], 50))


class ScheduleTest(unittest.TestCase):
    wl = P.Workload(7, sessions=5, context=50, tool_min=3, tool_max=9, reply=4, rr_rounds=2, random_turns=12)

    def test_first_prefills_then_round_robin_then_random(self):
        turns = self.wl.turns()
        self.assertEqual(len(turns), 5 + 2 * 5 + 12)
        self.assertEqual([t.session for t in turns[:5]], list(range(5)))
        self.assertTrue(all(t.kind == "first" and t.new_tokens == 50 for t in turns[:5]))
        self.assertEqual([t.session for t in turns[5:15]], list(range(5)) * 2)
        self.assertTrue(all(t.order == "random" for t in turns[15:]))
        self.assertTrue(all(3 <= t.new_tokens <= 9 for t in turns[5:]))
        self.assertGreater(len({t.session for t in turns[15:]}), 1)

    def test_same_seed_same_turns_and_tokens_other_seed_not(self):
        again = P.Workload(**{**self.wl.__dict__})
        self.assertEqual(self.wl.turns(), again.turns())
        t = self.wl.turns()[7]
        self.assertEqual(self.wl.tokens(t, 1000), again.tokens(t, 1000))
        other = P.Workload(**{**self.wl.__dict__, "seed": 8})
        self.assertNotEqual([x.session for x in self.wl.turns()], [x.session for x in other.turns()])
        self.assertNotEqual(self.wl.tokens(t, 1000), other.tokens(t, 1000))

    def test_session_lengths_count_prompts_and_replies(self):
        lengths = self.wl.session_lengths()
        self.assertEqual(sum(lengths), sum(t.new_tokens + 4 for t in self.wl.turns()))


class ServerTest(unittest.TestCase):
    wl = P.Workload(3, sessions=4, context=30, tool_min=2, tool_max=6, reply=3, rr_rounds=2, random_turns=10)

    def test_each_reply_token_carries_its_margin(self):
        wl = P.Workload(3, 2, 20, 2, 4, 5, 1, 2)
        for t, r, _, _ in serve(wl, model=MarginModel()):
            self.assertEqual(len(r.margins), len(r.tokens))
            # The first reply token comes from the prefill's last position; each next one from one more.
            self.assertEqual(r.margins, [r.margins[0] + k for k in range(len(r.tokens))])
        # A backend that does not say: None per token.
        for _, r, _, _ in serve(wl):
            self.assertEqual(r.margins, [None] * len(r.tokens))

    def test_unbounded_pool_keeps_every_session_and_prefills_only_what_is_new(self):
        for t, r, resident, _ in serve(self.wl):
            self.assertFalse(r.recomputed)
            self.assertEqual(r.dropped, [])
            self.assertEqual(len(r.tokens), 3)
            # Pending reply token + the new prompt, nothing more.
            self.assertEqual(r.prefill_tokens, t.new_tokens + (1 if t.kind == "resumed" else 0))
        self.assertEqual(sorted(resident), [0, 1, 2, 3])

    def test_bounded_pool_drops_least_recently_used_and_rebuilds_from_history(self):
        seen_dropped = set()
        history_len = {}
        for t, r, resident, in_use in serve(self.wl, capacity_sessions=2):
            self.assertLessEqual(in_use, 2 * 1000)  # never above the pool
            self.assertIn(t.session, resident)
            self.assertEqual(r.recomputed, t.session in seen_dropped)
            if r.recomputed:
                # The whole history (prompts and replies so far) plus the new prompt.
                self.assertEqual(r.prefill_tokens, history_len[t.session] + t.new_tokens)
                seen_dropped.discard(t.session)
            seen_dropped.update(r.dropped)
            history_len[t.session] = history_len.get(t.session, 0) + t.new_tokens + 3
        recomputed = [r for _, r, _, _ in serve(self.wl, capacity_sessions=2) if r.recomputed]
        self.assertGreater(len(recomputed), 0)

    def test_recompute_changes_no_token_when_the_model_is_exact(self):
        # The stand-in is exact arithmetic: a rebuilt cache must give the same
        # reply as a kept one, so any token lost or repeated by the server shows.
        kept = [r.tokens for _, r, _, _ in serve(self.wl)]
        dropped = [r.tokens for _, r, _, _ in serve(self.wl, capacity_sessions=1, chunk=4)]
        self.assertEqual(kept, dropped)

    def test_out_of_memory_drops_another_session_and_serves_the_turn_again(self):
        kept = serve(self.wl)
        # Pool of 3 for 4 sessions: allocation 5 is session 0's rebuild in the
        # first round-robin turn (admitting it drops session 1). Its first decode
        # step runs out of memory, after the first reply token was recorded.
        hit = serve(self.wl, capacity_sessions=3, model=SequenceModel(oom_allocs={5}))
        retried = [(t, r) for t, r, _, _ in hit if r.oom_retries]
        self.assertEqual(len(retried), 1)
        t, r = retried[0]
        self.assertEqual((t.index, t.session), (4, 0))
        self.assertTrue(r.recomputed)
        self.assertEqual(r.dropped, [1, 2])  # admitted by dropping 1; the out-of-memory retry dropped 2
        # Served again from a clean history: every reply as without the failure.
        self.assertEqual([r.tokens for _, r, _, _ in kept], [r.tokens for _, r, _, _ in hit])

    def test_out_of_memory_with_nothing_left_to_drop_is_raised(self):
        srv = Server(SequenceModel(oom_allocs={1}, oom_at_first_feed=True), 100, 8)
        with self.assertRaisesRegex(RuntimeError, "out of memory"):
            srv.turn(0, [1, 2, 3], 2)

    def test_other_errors_are_not_swallowed(self):
        class Broken(SequenceModel):
            def feed(self, cache, tokens, start):
                raise ValueError("model bug")
        with self.assertRaisesRegex(ValueError, "model bug"):
            Server(Broken(), 100, 8).turn(0, [1], 1)

    def test_pool_smaller_than_a_session_is_refused(self):
        with self.assertRaises(CapacityError):
            Server(SequenceModel(), 100, 8, kv_capacity_bytes=10, cache_bytes=11)


def fake_report(tokens_by_mode, sessions=2, resident=1, recomputed=None):
    schedule = [{"index": i, "session": i % sessions} for i in range(len(tokens_by_mode["hbm"]))]
    modes, runs = {}, {}
    for m, toks in tokens_by_mode.items():
        turns = [{"index": i, "session": i % sessions, "kind": "first" if i < sessions else "resumed",
                  "recomputed": bool(recomputed and m == "recompute" and i in recomputed), "ttft_s": 0.01,
                  "decode_s": 0.01, "tokens": t, "oom_retries": 0, "prefill_tokens": 1}
                 for i, t in enumerate(toks)]
        modes[m] = [{"mode": m, "device": "cpu", "backend": {}, "preload": {"loaded": False}, "plan": {},
                     "memory": {}, "turns": turns, "pager": None, "metrics": H.summarize(turns, sessions)}]
        runs[m] = {"rc": 0}
    ratios, correctness = H.analyze(modes)
    return {"plan": {"workload": {"sessions": sessions}, "resident_sessions": resident, "device": "cpu"},
            "schedule": schedule,
            "modes_requested": list(tokens_by_mode), "runs": runs, "modes": modes, "correctness": correctness,
            "ratios": ratios, "safety": {"ok": True}}


class CheckTest(unittest.TestCase):
    ref = [[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 1, 1]]

    def test_identical_logs_pass(self):
        r = fake_report({"hbm": self.ref, "kvpager": copy.deepcopy(self.ref),
                         "recompute": copy.deepcopy(self.ref)}, recomputed={2, 3})
        self.assertEqual(H.check(r), [])
        self.assertTrue(r["correctness"]["kvpager"]["identical"])
        self.assertEqual(r["correctness"]["recompute"]["matching_share"], 1.0)

    def test_one_token_off_under_kvpager_fails_the_check(self):
        bad = copy.deepcopy(self.ref)
        bad[2][1] = 99
        r = fake_report({"hbm": self.ref, "kvpager": bad, "recompute": copy.deepcopy(self.ref)}, recomputed={2})
        c = r["correctness"]["kvpager"]
        self.assertFalse(c["identical"])
        self.assertEqual(c["first_mismatch"]["turn"], 2)
        self.assertEqual(c["first_mismatch"]["position"], 1)
        self.assertEqual(c["matching_tokens"], 11)
        self.assertTrue(any("kvpager: tokens differ" in f for f in H.check(r)))

    def test_first_mismatch_says_how_close_to_a_tie_each_choice_was(self):
        # The first H200 run's two all-in-HBM runs parted at one token: a near-tie among random-weight
        # logits is what a last-bit difference flips. The report shows each run's lead there.
        bad = copy.deepcopy(self.ref)
        bad[1][2] = 42
        r = fake_report({"hbm": self.ref, "kvpager": bad})
        r["modes"]["hbm"][0]["turns"][1]["margins"] = [1.5, 0.25, 0.0009765625]
        r["modes"]["kvpager"][0]["turns"][1]["margins"] = [1.5, 0.25, 0.001953125]
        c = H.compare_tokens(r["modes"]["hbm"][0]["turns"], r["modes"]["kvpager"][0]["turns"])
        m = c["first_mismatch"]
        self.assertEqual((m["turn"], m["position"], m["expected_margin"], m["got_margin"]),
                         (1, 2, 0.0009765625, 0.001953125))
        self.assertEqual(H.mismatch_text(m), "first differing token: turn 1 (session 1), reply token 2; lead of the "
                                             "greedy choice over the runner-up there: reference 0.0009766, this "
                                             "run 0.001953")
        # Logs without margins (older runs) still say where.
        self.assertEqual(H.mismatch_text({"turn": 3, "session": 0, "position": 0}),
                         "first differing token: turn 3 (session 0), reply token 0")

    def test_recompute_may_differ_and_reports_its_share(self):
        near = copy.deepcopy(self.ref)
        near[3] = [1, 1, 2]
        r = fake_report({"hbm": self.ref, "kvpager": copy.deepcopy(self.ref), "recompute": near}, recomputed={3})
        self.assertEqual(H.check(r), [])
        self.assertAlmostEqual(r["correctness"]["recompute"]["matching_share"], 11 / 12)

    def test_recompute_that_never_recomputed_under_a_small_budget_fails(self):
        r = fake_report({"hbm": self.ref, "kvpager": copy.deepcopy(self.ref), "recompute": copy.deepcopy(self.ref)})
        self.assertTrue(any("nothing was recomputed" in f for f in H.check(r)))

    def test_a_kept_mode_that_recomputed_fails(self):
        r = fake_report({"hbm": self.ref, "kvpager": copy.deepcopy(self.ref)})
        r["modes"]["kvpager"][0]["metrics"]["resumed_recomputed"] = 1
        self.assertTrue(any("mode kvpager" in f for f in H.check(r)))

    def test_a_skipped_mode_fails_on_a_gpu_only(self):
        r = fake_report({"hbm": self.ref})
        r["modes_requested"].append("kvpager")
        r["runs"]["kvpager"] = {"skipped": "libkvpager.so not found"}
        self.assertEqual(H.check(r), [])  # CPU: the preload modes may be skipped
        r["plan"]["device"] = "cuda"
        self.assertTrue(any("kvpager skipped: libkvpager.so not found" in f for f in H.check(r)))

    def test_a_gpu_kvpager_mode_must_show_that_it_paged(self):
        # Equal tokens alone prove nothing: a run whose KV never left HBM (PyTorch mapping memory with
        # cuMemCreate, which kvpager passes through) is all-in-HBM under another name.
        r = fake_report({"hbm": self.ref, "kvpager": copy.deepcopy(self.ref)}, sessions=2, resident=2)
        r["plan"].update(device="cuda", budget_bytes=100)
        run = r["modes"]["kvpager"][0]
        run.update(device="cuda", preload={"loaded": True})

        run["pager"] = {"available": False, "why": "kvpager status exit 1"}
        self.assertTrue(any("cannot tell whether the pager paged" in f for f in H.check(r)), H.check(r))
        run["pager"] = {"available": True, "end": {"hbm_resident_bytes": 60, "host_resident_bytes": 30},
                        "delta": {"move_bytes": {"demote": 0}}}
        self.assertTrue(any("nothing was oversubscribed" in f for f in H.check(r)), H.check(r))
        run["pager"]["end"]["host_resident_bytes"] = 300
        self.assertTrue(any("moved no bytes" in f for f in H.check(r)), H.check(r))
        run["pager"]["delta"]["move_bytes"] = {"demote": 4096, "promote": 4096}
        self.assertEqual([f for f in H.check(r) if "mode kvpager" in f], [])

    def test_a_preload_mode_whose_pager_did_not_start_fails(self):
        # hbm-preload on an H200 ran with the pager off (its budget refused): the library was loaded, every
        # CUDA call passed through, and the "overhead" measured nothing.
        r = fake_report({"hbm": self.ref, "hbm-preload": copy.deepcopy(self.ref)})
        r["plan"]["device"] = "cuda"
        run = r["modes"]["hbm-preload"][0]
        run.update(device="cuda", preload={"loaded": True})
        run["pager"] = {"available": False, "why": "kvpager status exit 1: no pager with pid 1783"}
        self.assertTrue(any("hbm-preload: the pager did not run" in f for f in H.check(r)), H.check(r))
        run["pager"] = {"available": True, "end": {}, "delta": {"move_bytes": {}}}
        self.assertEqual([f for f in H.check(r) if "hbm-preload" in f], [])

    def test_kv_digests_must_agree_even_where_the_tokens_do(self):
        r = fake_report({"hbm": self.ref, "kvpager": copy.deepcopy(self.ref)}, sessions=2, resident=2)
        for m in ("hbm", "kvpager"):
            for t in r["modes"][m][0]["turns"]:
                t["kv_digest"] = f"d{t['index']}"
        r["modes"]["kvpager"][0]["turns"][1]["kv_digest"] = "other"
        _, r["correctness"] = H.analyze(r["modes"])
        c = r["correctness"]["kvpager"]
        self.assertTrue(c["identical"])
        self.assertEqual((c["kv_turns_compared"], c["kv_identical_turns"]), (4, 3))
        self.assertEqual(c["kv_first_mismatch"], {"turn": 1, "session": 1, "tokens_identical_so_far": True})
        self.assertTrue(any("the KV cache differs from all-in-HBM's after turn 1" in f for f in H.check(r)))

    def test_an_unreproducible_reference_is_named_as_such(self):
        # Two all-in-HBM runs of the same 8B workload on an H200 disagreed after a dozen tokens: the check
        # must say that the reference itself moved, not only that kvpager differs.
        r = fake_report({"hbm": self.ref, "kvpager": copy.deepcopy(self.ref)}, sessions=2, resident=2)
        again = copy.deepcopy(r["modes"]["hbm"][0])
        again["turns"][0]["tokens"] = [1, 2, 4]
        r["modes"]["hbm"].append(again)
        _, r["correctness"] = H.analyze(r["modes"])
        bad = H.check(r)
        self.assertTrue(any("all-in-HBM is not reproducible" in f for f in bad), bad)
        r["modes"]["hbm"][1]["turns"][0]["tokens"] = [1, 2, 3]
        _, r["correctness"] = H.analyze(r["modes"])
        self.assertEqual(H.check(r), [])

    def test_a_gpu_check_runs_the_reference_twice(self):
        import argparse
        a = argparse.Namespace(check=True, reference_runs=None)
        self.assertEqual(H.reference_runs(a, "cuda", ["hbm", "kvpager", "recompute"]), 2)
        self.assertEqual(H.reference_runs(a, "cpu", ["hbm", "kvpager"]), 1)
        self.assertEqual(H.reference_runs(a, "cuda", ["kvpager"]), 0)
        self.assertEqual(H.reference_runs(argparse.Namespace(check=False, reference_runs=None), "cuda",
                                          ["hbm", "kvpager"]), 1)
        self.assertEqual(H.reference_runs(argparse.Namespace(check=False, reference_runs=3), "cuda", ["hbm"]), 3)

    def test_gpu_workers_run_the_caching_allocator_without_expandable_segments(self):
        env = H.allocator_env({"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True, max_split_size_mb:512"})
        self.assertEqual(env["PYTORCH_CUDA_ALLOC_CONF"], "max_split_size_mb:512,expandable_segments:False")
        self.assertEqual(env["PYTORCH_ALLOC_CONF"], "expandable_segments:False")
        self.assertEqual(H.allocator_env({})["PYTORCH_CUDA_ALLOC_CONF"], "expandable_segments:False")

    def test_different_schedules_are_not_comparable(self):
        a = [{"index": 0, "session": 0, "tokens": [1]}]
        b = [{"index": 0, "session": 1, "tokens": [1]}]
        self.assertFalse(H.compare_tokens(a, b)["comparable"])

    def test_failed_mode_and_missing_fields_fail(self):
        r = fake_report({"hbm": self.ref, "kvpager": copy.deepcopy(self.ref)})
        r["runs"]["kvpager"]["rc"] = 1
        self.assertTrue(any("mode kvpager failed" in f for f in H.check(r)))
        r = fake_report({"hbm": self.ref, "kvpager": copy.deepcopy(self.ref)})
        del r["modes"]["hbm"][0]["metrics"]["decode_tok_s"]
        self.assertTrue(any("lacks" in f for f in H.check(r)))

    def test_ratios_pair_the_turns_recompute_rebuilt(self):
        r = fake_report({"hbm": self.ref, "kvpager": copy.deepcopy(self.ref), "recompute": copy.deepcopy(self.ref)},
                        recomputed={2, 3})
        for t in r["modes"]["recompute"][0]["turns"]:
            t["ttft_s"] = 1.0 if t["recomputed"] else 0.01
        ratios, _ = H.analyze(r["modes"])
        self.assertEqual(ratios["ttft_speedup_vs_recompute"]["turns"], 2)
        self.assertAlmostEqual(ratios["ttft_speedup_vs_recompute"]["p50"], 100.0)
        self.assertTrue(ratios["goals"]["ttft_speedup_vs_recompute"]["met"])
        cpu, _ = H.analyze(r["modes"], "cpu")  # no pager on a CPU: ratios shown, goals not judged
        self.assertEqual(cpu["goals"], {})
        self.assertIn("no pager is involved", cpu["note"])


class CompareDriverTest(unittest.TestCase):
    """scripts/e2e/compare.py on reports written here: what it says, and that a file
    that is not a report (or lacks what it compares) is bad usage, not a traceback
    or a comparison of nothing that claims everything holds."""
    ref = CheckTest.ref

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    def report(self, tokens_by_mode):
        r = fake_report(tokens_by_mode)
        r["plan"].update(spec={"name": "small"}, dtype="float32", prefill_chunk=64)
        r["device"] = {"name": "cpu"}
        for runs in r["modes"].values():
            for run in runs:
                run["backend"] = {"backend": "native"}
        return r

    def compare(self, *contents):
        paths = []
        for i, c in enumerate(contents):
            paths.append(os.path.join(self.tmp.name, f"r{i}.json"))
            with open(paths[-1], "w") as f:
                f.write(c if isinstance(c, str) else json.dumps(c))
        p = subprocess.run([sys.executable, os.path.join(e2e_testlib.SCRIPTS, "compare.py"), *paths],
                           capture_output=True, text=True, timeout=60)
        self.assertNotIn("Traceback", p.stderr)
        return p

    def test_identical_runs_hold_and_one_changed_token_does_not(self):
        p = self.compare(self.report({"hbm": self.ref, "kvpager": copy.deepcopy(self.ref)}))
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("all required identities hold", p.stdout)
        bad = copy.deepcopy(self.ref)
        bad[1][0] = 99
        p = self.compare(self.report({"hbm": self.ref, "kvpager": bad}))
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("DIFFERENT", p.stdout)

    def test_a_file_that_is_not_a_report_is_bad_usage_naming_what_is_missing(self):
        no_turns = self.report({"hbm": self.ref, "kvpager": self.ref})
        del no_turns["modes"]["kvpager"][0]["turns"]
        no_tokens = self.report({"hbm": self.ref, "kvpager": self.ref})
        del no_tokens["modes"]["hbm"][0]["turns"][2]["tokens"]
        for content, says in (([1, 2], "holds a JSON list, not an object"),
                              ({"modes": {"hbm": [{}]}, "plan": {}}, "no plan.spec.name"),
                              ({"modes": {"hbm": [{}]}}, "no plan.spec.name"),
                              ({"plan": no_turns["plan"], "device": {}}, "no modes"),
                              (no_turns, "modes.kvpager[0]: no turns"),
                              (no_tokens, "modes.hbm[0]: no tokens"),
                              ("{not json", "not JSON")):
            with self.subTest(says=says):
                p = self.compare(content)
                self.assertEqual(p.returncode, 2, p.stdout + p.stderr)
                self.assertIn("r0.json", p.stderr)
                self.assertIn(says, p.stderr)
                self.assertNotIn("hold", p.stdout)
        p = self.compare(self.report({"hbm": self.ref}), [1, 2])
        self.assertEqual(p.returncode, 2, p.stdout + p.stderr)
        self.assertIn("r1.json: not an agents.py report", p.stderr)

    def test_nothing_compared_is_not_everything_holds(self):
        p = self.compare(self.report({"hbm": self.ref}))
        self.assertEqual(p.returncode, 2, p.stdout + p.stderr)
        self.assertIn("nothing compared", p.stderr)
        self.assertNotIn("hold", p.stdout)
        # Only runs that may differ: compared, and it says nothing was required.
        p = self.compare(self.report({"hbm": self.ref, "recompute": self.ref}))
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("nothing required to hold", p.stdout)
        self.assertNotIn("all required identities hold", p.stdout)
        # Runs without a token (no turns) compare nothing either.
        p = self.compare(self.report({"hbm": [], "kvpager": [], "recompute": []}))
        self.assertEqual(p.returncode, 2, p.stdout + p.stderr)
        self.assertIn("nothing compared", p.stderr)

    def test_help_lists_the_exit_statuses(self):
        p = subprocess.run([sys.executable, os.path.join(e2e_testlib.SCRIPTS, "compare.py"), "--help"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0)
        self.assertIn("Exit status: 0 every required identity holds", p.stdout)


class FailedMovesTest(unittest.TestCase):
    def test_failed_moves_are_reported_by_kind_with_what_the_driver_said(self):
        # The first H200 run counted 995 failed moves and could not say which kind or why.
        pg = {"raw_end": {"moves": {"promote": {"failed": 0}, "demote": {"failed": 995}}, "move_failures": 995},
              "interposer_end": {"mover.failed_ranges": 7, "mover.driver_errors": 9, "mover.last_driver_error": 1}}
        self.assertEqual(H.failed_moves_text(pg), "failed moves: demote 995; driver: 7 move ranges refused, "
                                                  "9 errors, last CUresult 1")
        # A pager too old to count by kind still says how many failed.
        old = {"raw_end": {"moves": {"promote": {"count": 1}}, "move_failures": 3}, "interposer_end": {}}
        self.assertEqual(H.failed_moves_text(old), "failed moves: 3 (kinds not reported)")
        self.assertEqual(H.failed_moves_text({"raw_end": {"moves": {"demote": {"failed": 0}}, "move_failures": 0}}), "")
        self.assertEqual(H.failed_moves_text({"available": True}), "")

    def test_mover_speed_is_bytes_over_the_time_batches_were_in_flight(self):
        pg = {"raw_end": {"moves": {"promote": {"bytes": 40 * 10**9}, "demote": {"bytes": 0}}},
              "interposer_end": {"mover.promote_ns": 2 * 10**9, "mover.promote_batches": 300,
                                 "mover.demote_ns": 0, "mover.demote_batches": 0, "mover.issue_ns": 5 * 10**8}}
        self.assertEqual(H.mover_text(pg), "mover: promotes 37.25 GiB in 300 batches, 20.0 GB/s in flight; "
                                           "pager thread in advise/prefetch calls 0.50 s")
        self.assertEqual(H.mover_text({"raw_end": {}, "interposer_end": {}}), "")


class TurnPagerTest(unittest.TestCase):
    """Per-turn pager counters: the difference of the snapshots after two turns."""

    @staticmethod
    def snap(promote, demote, faults, failed_demote, issue_ns, hbm):
        return {"available": True, "move_bytes": {"promote": promote, "demote": demote},
                "move_count": {"promote": promote // 4096, "demote": demote // 4096},
                "faults": faults, "stall_ns": 0, "hbm_resident_bytes": hbm,
                "raw": {"moves": {"promote": {"failed": 0}, "demote": {"failed": failed_demote}}},
                "interposer": {"mover.issue_ns": issue_ns, "mover.batches": 10, "mover.demote_ns": 7}}

    def test_a_turn_gets_what_moved_since_the_turn_before(self):
        a = self.snap(1 * P.GiB, 2 * P.GiB, 10, 0, 1 * 10**9, 20 * P.GiB)
        b = self.snap(5 * P.GiB, 2 * P.GiB, 310, 3, 3 * 10**9, 24 * P.GiB)
        d = H.turn_pager(a, b)
        self.assertEqual(d["move_bytes"], {"promote": 4 * P.GiB})  # nothing demoted: not listed
        self.assertEqual(d["move_count"], {"promote": 4 * P.GiB // 4096})
        self.assertEqual(d["failed"], {"demote": 3})
        self.assertEqual(d["faults"], 300)
        self.assertEqual(d["mover"], {"mover.issue_ns": 2 * 10**9})  # unchanged counters left out
        self.assertEqual(d["hbm_resident_bytes"], 24 * P.GiB)
        self.assertEqual(H.turn_pager_text(d), "pager: promote 4.00 GiB, FAILED demote 3; in driver calls 2.00 s")
        # Nothing moved: no text; a missing snapshot: no record.
        self.assertEqual(H.turn_pager_text(H.turn_pager(b, b)), "")
        self.assertIsNone(H.turn_pager(a, {"available": False, "why": "x"}))
        self.assertIsNone(H.turn_pager(None, b))


class GpuLaunchTest(unittest.TestCase):
    """How the modes would start on a GPU: settings, preload, the safety rule."""

    wl = P.Workload(1234, sessions=8, context=32768, tool_min=200, tool_max=400, reply=32, rr_rounds=2,
                    random_turns=16)
    plan = P.make_plan(P.PRESETS["llama3-8b"], "bfloat16", "cuda", wl, 2048, None, 2)
    probe = {"free_bytes": 79 * P.GiB, "total_bytes": 80 * P.GiB, "name": "H100"}

    def args(self, **kw):
        import argparse
        base = dict(python="/usr/bin/python3", set=None, nvme_host_capacity=None, nvme_spill_idle="1s",
                    nvme_store="/var/tmp/s")
        return argparse.Namespace(**{**base, **kw})

    def launch(self, mode, lib="/b/libkvpager.so", kvbin="/b/kvpager", use_run=False, **kw):
        safe = H.safety(self.plan, self.probe, None)
        return H.plan_launch(mode, self.plan, safe, self.args(**kw), "/t/spec.json", "/t/r.json", lib, kvbin, use_run)

    def test_safety_limit_is_free_memory_less_the_reserve_and_refuses_above_it(self):
        s = H.safety(self.plan, self.probe, None)
        self.assertEqual(s["reserve_bytes"], 4 * P.GiB)  # max(3 GiB, 5 % of 80 GiB)
        self.assertEqual(s["limit_bytes"], 75 * P.GiB)
        self.assertTrue(s["ok"])
        self.assertLess(self.plan.budget_bytes, self.plan.footprint_bytes)
        small_card = dict(self.probe, free_bytes=self.plan.footprint_bytes + 3 * P.GiB)
        self.assertFalse(H.safety(self.plan, small_card, None)["ok"])

    def test_kvpager_mode_gets_budget_ceiling_and_preload(self):
        la = self.launch("kvpager")
        self.assertEqual(la.env_set["KVPAGER_HBM_BUDGET"], P.knob_bytes(self.plan.budget_bytes))
        self.assertEqual(la.env_set["KVPAGER_HIGH_WATERMARK"], str(P.PAGER_HIGH_WATERMARK))
        self.assertEqual(la.env_set["KVPAGER_CUDA_MANAGED_LIMIT"], "76800M")  # 75 GiB, below the free 79
        self.assertEqual(la.env_set["LD_PRELOAD"], "/b/libkvpager.so")
        self.assertIn("--worker-mode", la.argv)
        self.assertEqual(self.launch("kvpager", use_run=True).argv[:3], ["/b/kvpager", "run", "--"])

    def test_overhead_mode_budget_covers_everything_and_nvme_mode_gets_a_small_host_tier(self):
        # No budget: the pager takes what the device offers (90 % of free). The
        # managed ceiling (75 GiB of 79 free) is above that: a pager given it
        # refuses its configuration and runs off (the first H200 run did so).
        env = self.launch("hbm-preload").env_set
        self.assertNotIn("KVPAGER_HBM_BUDGET", env)
        self.assertEqual(env["KVPAGER_CUDA_MANAGED_LIMIT"], "76800M")
        env = self.launch("kvpager-nvme", set=["prefetch_depth=8"]).env_set
        self.assertEqual(env["KVPAGER_HOST_CAPACITY"], P.knob_bytes(self.plan.kv_total_bytes // 4))
        self.assertEqual(env["KVPAGER_SPILL_IDLE"], "1s")
        self.assertEqual(env["KVPAGER_STORE_DIR"], "/var/tmp/s")
        self.assertEqual(env["KVPAGER_PREFETCH_DEPTH"], "8")

    def test_unpaged_modes_get_only_the_allocator_setting_and_a_missing_library_skips(self):
        for m in ("hbm", "recompute"):
            la = self.launch(m)
            self.assertEqual(set(la.env_set), {"PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF",
                                               "CUBLAS_WORKSPACE_CONFIG"})  # no KVPAGER_*
            self.assertIsNone(la.skipped)
        self.assertNotIn("CUBLAS_WORKSPACE_CONFIG", self.launch("hbm", nondeterministic=True).env_set)
        self.assertEqual(self.launch("kvpager").env_set["PYTORCH_ALLOC_CONF"], "expandable_segments:False",
                         "the paged modes run the same allocator as the others")
        self.assertIn("libkvpager.so not found", self.launch("kvpager", lib=None).skipped)

    def test_bad_set_is_a_usage_error(self):
        with self.assertRaisesRegex(H.UsageError, "--set"):
            self.launch("kvpager", set=["prefetch_depth"])


class EnvTest(unittest.TestCase):
    def test_children_never_inherit_the_preload_and_unpaged_ones_no_settings(self):
        import os
        saved = dict(os.environ)
        try:
            os.environ["LD_PRELOAD"] = "/x/libkvpager.so /y/libother.so"
            os.environ["KVPAGER_HBM_BUDGET"] = "8G"
            e = H.clean_env(preload=False)
            self.assertEqual(e["LD_PRELOAD"], "/y/libother.so")
            self.assertNotIn("KVPAGER_HBM_BUDGET", e)
            self.assertEqual(H.clean_env(preload=True)["KVPAGER_HBM_BUDGET"], "8G")
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def test_knob_names_become_kvpager_variables(self):
        self.assertEqual(H.env_name("cuda.managed_limit"), "KVPAGER_CUDA_MANAGED_LIMIT")
        self.assertEqual(H.env_name("hbm_budget"), "KVPAGER_HBM_BUDGET")


if __name__ == "__main__":
    unittest.main(verbosity=2)
