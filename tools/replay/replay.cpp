#include "replay.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <queue>

#include "kvpager/admission.h"
#include "kvpager/policy.h"
#include "kvpager/prefetch.h"
#include "kvpager/prestage.h"

namespace kvpager::replay {

// ------------------------------------------------------------------ specs

std::string PolicySpec::label() const {
  if (belady) return "belady";
  std::string out(to_string(policy));
  if (!admission.empty() && admission != "none") out += "+" + admission;
  return out;
}

std::optional<PolicySpec> parse_policy_spec(std::string_view s, std::string* why) {
  PolicySpec spec;
  const size_t plus = s.find('+');
  std::string_view pol = s.substr(0, plus);
  std::string_view adm = plus == std::string_view::npos ? std::string_view{} : s.substr(plus + 1);
  if (pol == "belady" || pol == "min") {
    if (!adm.empty()) {
      if (why) *why = "belady decides admission itself: no '+ADMISSION'";
      return std::nullopt;
    }
    spec.belady = true;
    return spec;
  }
  Config probe;
  if (find_knob("eviction_policy")->set(probe, pol)) {
    if (why) *why = fmt::format("unknown policy '{}': allowed {}, belady", pol, find_knob("eviction_policy")->range);
    return std::nullopt;
  }
  spec.policy = probe.eviction_policy;
  if (!adm.empty()) {
    bool known = false;
    make_admission(adm, 1, &known);
    if (!known) {
      std::string names;
      for (std::string_view n : admission_names()) names += (names.empty() ? "" : ", ") + std::string(n);
      if (why) *why = fmt::format("unknown admission policy '{}': allowed {}", adm, names);
      return std::nullopt;
    }
    spec.admission = std::string(adm);
  }
  return spec;
}

std::vector<PolicySpec> all_policy_specs() {
  std::vector<PolicySpec> out;
  for (std::string_view s : {"lru", "clock", "cost", "s3fifo", "prefix", "lru+tail", "lru+tinylfu", "prefix+tail"})
    out.push_back(*parse_policy_spec(s, nullptr));
  return out;
}

// ------------------------------------------------------------------ prepare

Prepared prepare(const Trace& t) {
  Prepared p;
  p.trace = &t;
  p.turns = infer_turns(t);
  p.next_use.assign(t.refs.size(), kNone);
  std::vector<uint32_t> later(t.distinct_blocks, kNone);
  for (size_t i = t.refs.size(); i-- > 0;) {
    p.next_use[i] = later[t.refs[i]];
    later[t.refs[i]] = static_cast<uint32_t>(i);
  }
  return p;
}

namespace {

constexpr uint8_t kFateNever = 0;          // never referenced before
constexpr uint8_t kFateNotAdmitted = 4;    // declined last time
constexpr uint8_t fate_evicted(size_t t) { return static_cast<uint8_t>(1 + t); }
constexpr uint32_t kProgressEvery = 256;

constexpr Tier tier_at(size_t i) { return static_cast<Tier>(i); }

void add_move(LinkBytes& m, Tier from, Tier to, uint64_t bytes) {
  if (from == to || from == Tier::kUnpopulated || to == Tier::kUnpopulated) return;
  if (index(from) < index(to)) {  // down
    if (from == Tier::kHbm) m.hbm_to_host += bytes;
    if (to == Tier::kNvme) m.host_to_nvme += bytes;
  } else {  // up
    if (from == Tier::kNvme) m.nvme_to_host += bytes;
    if (to == Tier::kHbm) m.host_to_hbm += bytes;
  }
}

// Hits, misses and the cost of each request, shared by the engine and Belady.
class Accounting {
 public:
  Accounting(const CostModel& cost, RunResult& r) : cost_(cost), r_(r) {}

  void begin() {
    hit_tokens_.fill(0);
    recompute_tokens_ = 0;
  }
  // A hit served from `from`: its bytes are there. Whether it is loaded or
  // recomputed is decided per tier when the request ends (end()).
  void hit(Tier from, uint32_t tokens) {
    r_.hit_tokens += tokens;
    r_.hit_tokens_from[index(from)] += tokens;
    hit_tokens_[index(from)] += tokens;
  }
  void recompute(uint64_t tokens) {
    recompute_tokens_ += tokens;
    r_.tokens_recomputed += tokens;
  }
  // The hits a request has from one tier are loaded in one transfer (latency
  // once, then bytes / bandwidth) or all recomputed, whichever is cheaper: the
  // cost per token is the same for all of them, so there is nothing between.
  void end() {
    double ns = 0;
    for (size_t t = 0; t < kTiers; ++t) {
      const uint64_t tokens = hit_tokens_[t];
      if (tokens == 0) continue;
      const Tier from = tier_at(t);
      const uint64_t bytes = tokens * cost_.kv_bytes_per_token;
      const double load = from == Tier::kHbm ? 0.0 : cost_.latency_ns(from) + cost_.load_ns(from, bytes);
      if (from == Tier::kHbm || load < cost_.recompute_ns(tokens)) {
        r_.tokens_loaded += tokens;
        add_move(r_.moved, from, Tier::kHbm, bytes);
        ns += load;
      } else {
        recompute(tokens);
      }
    }
    ttft_ns_.push_back(ns + cost_.recompute_ns(recompute_tokens_));
  }
  void finish() {
    r_.prefill_gpu_s = cost_.recompute_ns(r_.tokens_recomputed) / 1e9;
    r_.prefill_gpu_s_no_cache = cost_.recompute_ns(r_.input_tokens) / 1e9;
    if (ttft_ns_.empty()) return;
    double sum = 0;
    for (double v : ttft_ns_) sum += v;
    r_.ttft_mean_s = sum / static_cast<double>(ttft_ns_.size()) / 1e9;
    std::sort(ttft_ns_.begin(), ttft_ns_.end());
    auto pct = [&](double q) {  // nearest rank
      size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(ttft_ns_.size())));
      return ttft_ns_[std::clamp<size_t>(rank, 1, ttft_ns_.size()) - 1] / 1e9;
    };
    r_.ttft_p50_s = pct(0.50);
    r_.ttft_p90_s = pct(0.90);
    r_.ttft_p99_s = pct(0.99);
  }

 private:
  const CostModel& cost_;
  RunResult& r_;
  std::array<uint64_t, kTiers> hit_tokens_{};  // this request's, per tier
  uint64_t recompute_tokens_ = 0;
  std::vector<double> ttft_ns_;
};

void count_miss_reason(RunResult& r, uint8_t fate, uint32_t tokens) {
  if (fate == kFateNever) r.miss_never_seen += tokens;
  else if (fate == kFateNotAdmitted) r.miss_not_admitted += tokens;
  else r.miss_evicted_from[fate - 1u] += tokens;
}

// ------------------------------------------------------------------ engine

// The pager's policies over one Chunk per distinct block. Chunk::region holds
// the block's dense id, Chunk::index its position in the request (its depth
// in the chain), as a chunk's index within its region does in the pager.
class Engine final : private PrefetchSink, private RestoreCost {
 public:
  Engine(const Prepared& p, const RunOptions& o, RunResult& r)
      : p_(p), t_(*p.trace), o_(o), r_(r), acct_(o.cost, r),
        chunks_(std::make_unique<Chunk[]>(t_.distinct_blocks)),
        fate_(t_.distinct_blocks, kFateNever),
        tokens_(t_.distinct_blocks, 0) {
    for (uint32_t b = 0; b < t_.distinct_blocks; ++b) chunks_[b].region = b;
    for (size_t i = 0; i < kTiers; ++i) {
      cap_[i] = o.capacity_blocks[i];
      if (cap_[i] == 0) continue;
      pol_[i] = make_policy(o.policy.policy, o.pager, this);
      if (top_ == kTiers) top_ = i;
    }
    // TinyLFU sizes its sketch (and its aging period, 10x) by the cache it guards.
    uint64_t cached = 0;
    for (uint64_t c : cap_) cached = c == kUnlimited ? t_.distinct_blocks : cached + c;
    bool known = true;
    adm_ = make_admission(o.policy.admission, std::min<uint64_t>(cached, t_.distinct_blocks), &known);
    if (o.prestage == Prestage::kPredict) prefetchers_.push_back(std::make_unique<ResumePrestager>());
    if (o.prestage == Prestage::kHint) prefetchers_.push_back(std::make_unique<HintPrefetcher>());
    for (auto& pf : prefetchers_) r_.prefetchers.push_back(PrefetcherStats{std::string(pf->name())});
    throttles_.resize(prefetchers_.size());
    if (top_ < kTiers) {
      const double budget = o.prestage_share * static_cast<double>(std::min<uint64_t>(cap_[top_], uint64_t{1} << 52));
      stage_budget_ = static_cast<uint64_t>(std::max(0.0, budget));
    }
    ctx_last_.assign(p.turns.contexts, kNone);
  }

  void run() {
    const auto& reqs = t_.requests;
    if (o_.prestage == Prestage::kHint) plan_hints();
    uint32_t pos = 0;
    for (uint32_t i = 0; i < reqs.size(); ++i) {
      const Request& req = reqs[i];
      const ContextId ctx = p_.turns.ctx[i];
      before_request(i, req.arrival_ns);
      if (p_.turns.prev[i] != kNone) {
        ++r_.resumed_turns;
        bool all_top = top_ < kTiers;
        for (uint32_t j = 0; j < p_.turns.shared[i] && all_top; ++j)
          all_top = index(chunks_[t_.refs[req.first + j]].tier) == top_;
        r_.resumed_prefix_in_top += all_top ? 1 : 0;
      }
      dispatch([&](Prefetcher& pf) { pf.on_turn(TurnEvent{ctx, req.arrival_ns, true}, *this); });
      acct_.begin();
      bool in_run = true;
      for (uint32_t j = 0; j < req.nblocks; ++j, ++pos) reference(t_.refs[pos], j, t_.tokens(req, j), in_run);
      acct_.end();
      ctx_last_[ctx] = i;
      dispatch([&](Prefetcher& pf) { pf.on_turn(TurnEvent{ctx, req.arrival_ns, false}, *this); });
      if (o_.progress && (i + 1) % kProgressEvery == 0) o_.progress(i + 1, reqs.size());
    }
    if (o_.progress) o_.progress(reqs.size(), reqs.size());
    acct_.finish();
  }

 private:
  // --- the reference stream ---
  void reference(uint32_t b, uint32_t depth, uint32_t tokens, bool& in_run) {
    Chunk& c = chunks_[b];
    c.index = depth;
    tokens_[b] = tokens;
    ++epoch_;
    if (adm_) adm_->on_access(c);
    const Tier t = c.tier;
    const bool resident = t != Tier::kUnpopulated;
    Tier loaded_from = Tier::kHbm;  // where a copy of its bytes is (computed: only in HBM)
    if (resident && in_run) {
      acct_.hit(t, tokens);
      loaded_from = t;  // loaded or recomputed, its bytes are still there
    } else {
      in_run = false;
      if (resident) r_.miss_after_gap += tokens;
      else count_miss_reason(r_, fate_[b], tokens);
      acct_.recompute(tokens);
    }
    if (resident && index(t) == top_) {
      if (c.prefetcher != 0) prefetch_judged(c, true);
      pol_[top_]->touch(c, epoch_);
      c.last_use = epoch_;
      return;
    }
    if (resident) unlink(c);
    place(c, loaded_from, /*referenced=*/true);
  }

  void unlink(Chunk& c) {
    const size_t t = index(c.tier);
    if (c.prefetcher != 0 && t == top_) prefetch_judged(c, false);
    pol_[t]->erase(c);
    --used_[t];
    c.tier = Tier::kUnpopulated;
  }

  // Puts c into the top tier; each full tier's victim goes one tier down and
  // the bottom's is dropped. A referenced block's bytes are in HBM (and in
  // `origin` if it was loaded from there); a moved one's are in `origin`.
  // Admission may make a block bypass a tier; a prestaged block is placed
  // without asking (the prestager decided).
  void place(Chunk& c, Tier origin, bool referenced, bool ask_admission = true) {
    Chunk* cur = &c;
    for (size_t i = top_; i < kTiers; ++i) {
      if (cap_[i] == 0) continue;
      EvictionPolicy& pol = *pol_[i];
      Chunk* victim = nullptr;
      if (used_[i] >= cap_[i]) {
        victim = pol.victim();
        if (!victim) continue;
        if (ask_admission && adm_ &&
            !adm_->admit(AdmitQuery{cur, victim, tier_at(i), tokens_[cur->region], t_.block_tokens}))
          continue;  // bypasses this tier
        unlink(*victim);
      }
      const Tier here = tier_at(i);
      const Tier from = referenced ? (origin == here ? here : Tier::kHbm) : origin;
      add_move(r_.moved, from, here, bytes_of(*cur));
      pol.insert(*cur);
      cur->tier = here;
      ++used_[i];
      if (referenced) {
        pol.touch(*cur, epoch_);
        cur->last_use = epoch_;
      }
      if (!victim) return;
      cur = victim;
      origin = here;
      referenced = false;
      ask_admission = true;
    }
    // Fell off the bottom. Its Chunk (and Chunk::freq, its access count) stays:
    // a block is named by its hash, and a warehouse can keep a count per hash
    // (or a count-min sketch of them) after the bytes are gone.
    fate_[cur->region] = referenced ? kFateNotAdmitted : fate_evicted(index(origin));
  }

  uint64_t bytes_of(const Chunk& c) const { return uint64_t{tokens_[c.region]} * o_.cost.kv_bytes_per_token; }

  // --- prefetch mechanism ---
  // As the pager's mechanism: a prefetcher whose wasted / (used + wasted)
  // passes prefetch_waste_ceiling (over at least kThrottleMinChunks judged)
  // sits out the next kThrottleMuteEvents events.
  template <typename Fn>
  void dispatch(Fn&& fn) {
    for (size_t k = 0; k < prefetchers_.size(); ++k) {
      if (throttles_[k].muted_events > 0) {
        if (--throttles_[k].muted_events == 0) r_.prefetchers[k].throttled = false;
        continue;
      }
      current_ = static_cast<uint8_t>(k + 1);
      fn(*prefetchers_[k]);
    }
    current_ = 0;
  }

  void before_request(uint32_t i, uint64_t now) {
    if (prefetchers_.empty()) return;
    if (o_.prestage == Prestage::kHint) {
      while (next_hint_ < hints_.size() && hints_[next_hint_].at <= now && hints_[next_hint_].after < i) {
        const HintEvent ev{hints_[next_hint_++].ctx, HintKind::kPrefetch};
        dispatch([&](Prefetcher& pf) { pf.on_hint(ev, *this); });
      }
    }
    dispatch([&](Prefetcher& pf) { pf.on_tick(now, *this); });
  }

  // The oracle's hints: each resumed turn's context, hint_lead_ns before it
  // arrives (but not before its previous turn).
  void plan_hints() {
    for (uint32_t i = 0; i < t_.requests.size(); ++i) {
      const uint32_t prev = p_.turns.prev[i];
      if (prev == kNone) continue;
      const uint64_t at = t_.requests[i].arrival_ns;
      const uint64_t earliest = t_.requests[prev].arrival_ns;
      hints_.push_back({std::max(earliest, at > o_.hint_lead_ns ? at - o_.hint_lead_ns : 0), prev, p_.turns.ctx[i]});
    }
    std::stable_sort(hints_.begin(), hints_.end(), [](const Hint& a, const Hint& b) {
      return a.at != b.at ? a.at < b.at : a.after < b.after;
    });
  }

  uint32_t prefetch(RegionId, uint32_t, uint32_t) override { return 0; }
  uint32_t prefetch_region(RegionId) override { return 0; }
  const Region* region(RegionId) const override { return nullptr; }

  // Stages the blocks of the context's latest turn into the top tier, up to
  // the first block no tier holds (nothing after a gap is usable), within the
  // prestage budget.
  uint32_t prefetch_context(ContextId ctx) override {
    if (current_ == 0 || ctx >= ctx_last_.size() || ctx_last_[ctx] == kNone || top_ >= kTiers) return 0;
    const Request& req = t_.requests[ctx_last_[ctx]];
    PrefetcherStats& st = r_.prefetchers[current_ - 1u];
    uint32_t staged = 0;
    for (uint32_t j = 0; j < req.nblocks; ++j) {
      Chunk& c = chunks_[t_.refs[req.first + j]];
      if (c.tier == Tier::kUnpopulated) break;
      if (index(c.tier) == top_) continue;
      if (staged_unused_ >= stage_budget_) break;
      const Tier from = c.tier;
      unlink(c);
      place(c, from, /*referenced=*/false, /*ask_admission=*/false);
      if (index(c.tier) != top_) continue;
      c.prefetcher = current_;
      ++staged_unused_;
      st.issued_bytes += bytes_of(c);
      ++staged;
    }
    return staged;
  }

  void prefetch_judged(Chunk& c, bool used) {
    const size_t k = c.prefetcher - 1u;
    PrefetcherStats& st = r_.prefetchers[k];
    (used ? st.used_bytes : st.wasted_bytes) += bytes_of(c);
    c.prefetcher = 0;
    --staged_unused_;
    Throttle& t = throttles_[k];
    ++(used ? t.used : t.wasted);
    const uint64_t judged = t.used + t.wasted;
    if (!used && judged >= kThrottleMinChunks &&
        static_cast<double>(t.wasted) > o_.pager.prefetch_waste_ceiling * static_cast<double>(judged)) {
      t = Throttle{0, 0, kThrottleMuteEvents};
      st.throttled = true;
      ++st.throttle_events;
    }
  }

  // --- what the cost-aware policy asks: the cost of getting c back ---
  double restore_ns(const Chunk& c) const override {
    const uint32_t tokens = tokens_[c.region];
    const double recompute = o_.cost.recompute_ns(tokens);
    for (size_t n = index(c.tier) + 1; n < kTiers; ++n) {
      if (cap_[n] == 0) continue;
      const Tier below = tier_at(n);
      return std::min(recompute, o_.cost.latency_ns(below) + o_.cost.load_ns(below, bytes_of(c)));
    }
    return recompute;
  }

  struct Throttle {
    uint64_t used = 0, wasted = 0;  // chunks judged this window
    uint32_t muted_events = 0;
  };
  static constexpr uint64_t kThrottleMinChunks = 16;
  static constexpr uint32_t kThrottleMuteEvents = 256;

  struct Hint {
    uint64_t at;
    uint32_t after;  // the request it may not precede
    ContextId ctx;
  };

  const Prepared& p_;
  const Trace& t_;
  const RunOptions& o_;
  RunResult& r_;
  Accounting acct_;
  // chunks_ outlives the policies that link them (members die in reverse order).
  std::unique_ptr<Chunk[]> chunks_;
  std::vector<uint8_t> fate_;
  std::vector<uint32_t> tokens_;  // per block: the tokens it held at its last reference
  std::array<std::unique_ptr<EvictionPolicy>, kTiers> pol_;
  std::array<uint64_t, kTiers> cap_{}, used_{};
  size_t top_ = kTiers;  // the first tier with a capacity
  std::unique_ptr<AdmissionPolicy> adm_;
  uint64_t epoch_ = 0;
  std::vector<std::unique_ptr<Prefetcher>> prefetchers_;
  std::vector<Throttle> throttles_;
  uint8_t current_ = 0;  // 1-based index of the prefetcher being dispatched
  uint64_t staged_unused_ = 0;
  uint64_t stage_budget_ = 0;
  std::vector<uint32_t> ctx_last_;  // per context: its latest request
  std::vector<Hint> hints_;
  size_t next_hint_ = 0;
};

// ------------------------------------------------------------------ Belady

// Belady's MIN over the total capacity: on a miss with the cache full, the
// resident block whose next reference is farthest is evicted, unless the
// missing block's own next reference is farther still (then it is not
// admitted). Optimal for the number of block hits; with chained ids a block
// is never kept without its prefix (a prefix's next use always comes first),
// so every block hit is a prefix hit. Knowing the future, it also knows when
// to stage: its hits count as served from the top tier.
void run_belady(const Prepared& p, const RunOptions& o, RunResult& r) {
  const Trace& t = *p.trace;
  uint64_t cap = 0;
  size_t top = kTiers, bottom = 0;
  for (size_t i = 0; i < kTiers; ++i) {
    if (o.capacity_blocks[i] == 0) continue;
    if (top == kTiers) top = i;
    bottom = i;
    cap = o.capacity_blocks[i] == kUnlimited || cap == kUnlimited ? kUnlimited : cap + o.capacity_blocks[i];
  }
  Accounting acct(o.cost, r);
  std::vector<uint8_t> resident(t.distinct_blocks, 0), fate(t.distinct_blocks, kFateNever);
  std::vector<uint32_t> key(t.distinct_blocks, kNone);
  std::priority_queue<std::pair<uint32_t, uint32_t>> heap;  // (next use, block): farthest on top; stale entries skipped
  uint64_t size = 0;
  uint32_t pos = 0;
  const Tier served = top < kTiers ? tier_at(top) : Tier::kHbm;
  for (uint32_t i = 0; i < t.requests.size(); ++i) {
    const Request& req = t.requests[i];
    acct.begin();
    bool in_run = true;
    for (uint32_t j = 0; j < req.nblocks; ++j, ++pos) {
      const uint32_t b = t.refs[pos];
      const uint32_t tokens = t.tokens(req, j);
      const uint32_t next = p.next_use[pos];
      if (resident[b] && in_run) {
        acct.hit(served, tokens);
      } else {
        in_run = false;
        if (resident[b]) r.miss_after_gap += tokens;
        else count_miss_reason(r, fate[b], tokens);
        acct.recompute(tokens);
      }
      if (resident[b]) {
        key[b] = next;
        heap.emplace(next, b);
        continue;
      }
      if (top == kTiers || next == kNone) {  // never used again: not worth a slot
        fate[b] = kFateNotAdmitted;
        continue;
      }
      if (size >= cap) {
        while (!resident[heap.top().second] || key[heap.top().second] != heap.top().first) heap.pop();
        const auto [far, victim] = heap.top();
        if (far <= next) {
          fate[b] = kFateNotAdmitted;
          continue;
        }
        heap.pop();
        resident[victim] = 0;
        fate[victim] = fate_evicted(bottom);
        --size;
      }
      resident[b] = 1;
      key[b] = next;
      heap.emplace(next, b);
      ++size;
    }
    acct.end();
    if (o.progress && (i + 1) % kProgressEvery == 0) o.progress(i + 1, t.requests.size());
  }
  if (o.progress) o.progress(t.requests.size(), t.requests.size());
  acct.finish();
}

}  // namespace

RunResult run(const Prepared& p, const RunOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  const Trace& t = *p.trace;
  RunResult r;
  r.label = opt.policy.label();
  r.capacity_blocks = opt.capacity_blocks;
  r.requests = t.requests.size();
  r.input_tokens = t.input_tokens;
  r.block_refs = t.refs.size();
  if (opt.policy.belady) {
    run_belady(p, opt, r);
  } else {
    Engine e(p, opt, r);
    e.run();
  }
  r.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace kvpager::replay
