// Flash attention on the CPU: the plan (which query rows and key blocks each work item takes),
// the masks from positions, and the sink; the ISA files do the arithmetic on tiles.
//
// The query rows of one (batch, kv head) are its R = H / Hkv query heads times the T queries,
// row = t * R + r, cut into panels of `lanes` rows (attention_isa.h): GQA reads each kv head
// once for all its query heads. A work item is (batch, kv head, a group of panels, a key
// range): it walks its keys in blocks of kKeyBlock, decodes a block once (bf16, quantized) and
// runs every panel of the group over it, so the scratch is O(group x block), never O(T x S).
// Prefill has many groups (items over heads x query blocks); a decode step has one panel per
// kv head, so its keys are split into ranges whose partial softmax states are combined after
// (flash-decoding's split-K) when there are too few items to occupy the threads.
#include "attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

#include "kernels.h"
#include "thread_pool.h"

namespace openharmony {

namespace {

constexpr int64_t kKeyBlock = 64;
constexpr int64_t kPanelsPerGroup = 8;
// Split the keys while there are fewer items than this many per thread.
constexpr int64_t kItemsPerThread = 4;
// A split has at least this many key blocks (a combine costs about one block).
constexpr int64_t kMinBlocksPerSplit = 4;
// The running max before any key: finite, so exp(m - m') never sees inf - inf.
constexpr float kNoMax = -1e30f;

struct Plan {
  int64_t R, rows, lanes, panels, groups, splits;
};

// Which keys the queries t0..t1 see (any of them) and which all of them see: [lo, hi).
struct KeyRange {
  int64_t any_lo, any_hi, all_lo, all_hi;
};

KeyRange visible_keys(const AttentionProblem& p, int64_t t0, int64_t t1) {
  const int64_t last = p.first + t1, first = p.first + t0;  // positions as key indices
  KeyRange k;
  k.any_lo = p.window ? std::max<int64_t>(0, first - p.window + 1) : 0;
  k.any_hi = std::min(p.S, last + 1);
  k.all_lo = p.window ? std::max<int64_t>(0, last - p.window + 1) : 0;
  k.all_hi = std::min(p.S, first + 1);
  return k;
}

// One panel's state while its keys are walked.
struct PanelState {
  std::vector<float> qt, o, m, l;
  int64_t row0, valid;  // rows row0 .. row0 + valid - 1 of the (batch, kv head)
  KeyRange keys;
};

std::vector<float>& scratch(int which) {
  thread_local std::vector<float> buffers[4];
  return buffers[which];
}

void start_panel(const AttentionProblem& p, const Plan& plan, int64_t b, int64_t kvh,
                 int64_t panel, PanelState& st) {
  const int64_t L = plan.lanes, D = p.D;
  st.row0 = panel * L;
  st.valid = std::min(L, plan.rows - st.row0);
  st.keys = visible_keys(p, st.row0 / plan.R, (st.row0 + st.valid - 1) / plan.R);
  st.qt.assign(size_t(D * L), 0.0f);
  st.o.assign(size_t(L * D), 0.0f);
  st.m.assign(size_t(L), kNoMax);
  st.l.assign(size_t(L), 0.0f);
  for (int64_t i = 0; i < st.valid; ++i) {
    const int64_t row = st.row0 + i, t = row / plan.R, h = kvh * plan.R + row % plan.R;
    const float* q = p.q + ((b * p.H + h) * p.T + t) * D;
    for (int64_t d = 0; d < D; ++d) st.qt[size_t(d * L + i)] = q[d] * p.scale;
  }
}

// Scores of keys outside a lane's causal window become -inf (exp gives 0).
void mask_block(const AttentionProblem& p, const Plan& plan, const PanelState& st, int64_t a,
                int64_t n, float* s) {
  const float minus_inf = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < st.valid; ++i) {
    const int64_t position = p.first + (st.row0 + i) / plan.R;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t key = a + j;
      if (key > position || (p.window && key <= position - p.window))
        s[j * plan.lanes + i] = minus_inf;
    }
  }
}

// out rows of a finished panel: o * exp(m - M) / (l * exp(m - M) + exp(sink - M)).
void finish_rows(const AttentionProblem& p, const Plan& plan, int64_t b, int64_t kvh,
                 int64_t row0, int64_t valid, const float* m, const float* l, const float* o) {
  for (int64_t i = 0; i < valid; ++i) {
    const int64_t row = row0 + i, t = row / plan.R, h = kvh * plan.R + row % plan.R;
    const float sink = p.sinks[h], top = std::max(m[i], sink);
    const float a = std::exp(m[i] - top);
    const float denom = l[i] * a + std::exp(sink - top);
    const float factor = denom > 0.0f ? a / denom : 0.0f;
    float* out = p.out + ((b * p.H + h) * p.T + t) * p.D;
    for (int64_t d = 0; d < p.D; ++d) out[d] = o[i * p.D + d] * factor;
  }
}

const float* as_floats(const KvSource& s, int64_t position) {
  return reinterpret_cast<const float*>(s.data + position * s.row_bytes);
}

Plan make_plan(const AttentionKernels& isa, const AttentionProblem& p) {
  Plan plan;
  plan.R = p.H / p.Hkv;
  plan.rows = p.T * plan.R;
  plan.lanes = isa.lanes;
  plan.panels = (plan.rows + plan.lanes - 1) / plan.lanes;
  plan.groups = (plan.panels + kPanelsPerGroup - 1) / kPanelsPerGroup;
  const KeyRange all = visible_keys(p, 0, p.T - 1);
  const int64_t blocks = (std::max<int64_t>(0, all.any_hi - all.any_lo) + kKeyBlock - 1) /
                         kKeyBlock;
  const int64_t items = p.B * p.Hkv * plan.groups;
  if (p.splits > 0) {
    plan.splits = p.splits;
  } else {
    const int64_t wanted = kItemsPerThread * ThreadPool::global().size();
    plan.splits = items >= wanted ? 1 : (wanted + items - 1) / items;
    plan.splits = std::max<int64_t>(1, std::min(plan.splits, blocks / kMinBlocksPerSplit));
  }
  return plan;
}

}  // namespace

KvSource KvLayout::at(int64_t b, int64_t h) const {
  KvSource s = source;
  s.data += b * stride_b + h * stride_h;
  if (s.format == kKvAffine) {
    s.scales += b * scale_stride_b + h * scale_stride_h;
    s.biases += b * scale_stride_b + h * scale_stride_h;
  }
  return s;
}

const AttentionKernels& attention_kernels(const std::string& name) {
  const std::string chosen = select_isa(name).name;  // the matmuls' choice and its checks
  const AttentionKernels* k = chosen == "avx512" ? attention_avx512_kernels()
                              : chosen == "avx2" ? attention_avx2_kernels()
                                                 : attention_portable_kernels();
  return k ? *k : *attention_portable_kernels();
}

void run_attention(const AttentionKernels& isa, const AttentionProblem& p) {
  const Plan plan = make_plan(isa, p);
  const int64_t L = plan.lanes, D = p.D, splits = plan.splits;
  const int64_t items = p.B * p.Hkv * plan.groups * splits;
  // Partial states of split ranges: per (b, kvh, panel, split) m [L], l [L], o [L, D].
  const int64_t state = 2 * L + L * D;
  std::vector<float> partial(splits > 1 ? size_t(p.B * p.Hkv * plan.panels * splits * state)
                                        : 0);
  ThreadPool::global().parallel_for(items, [&](int64_t item) {
    // Later query groups see more keys: they are handed out first.
    const int64_t s = item % splits;
    const int64_t g = plan.groups - 1 - (item / splits) % plan.groups;
    const int64_t bh = item / (splits * plan.groups), b = bh / p.Hkv, kvh = bh % p.Hkv;
    const int64_t p0 = g * kPanelsPerGroup, p1 = std::min(plan.panels, p0 + kPanelsPerGroup);
    thread_local std::vector<PanelState> states;
    if (states.size() < size_t(kPanelsPerGroup)) states.resize(size_t(kPanelsPerGroup));
    for (int64_t q = p0; q < p1; ++q) start_panel(p, plan, b, kvh, q, states[size_t(q - p0)]);
    // This item's keys: the group's visible range, cut into `splits` runs of whole blocks.
    const int64_t lo = states[0].keys.any_lo, hi = states[size_t(p1 - p0 - 1)].keys.any_hi;
    const int64_t blocks = std::max<int64_t>(0, hi - lo + kKeyBlock - 1) / kKeyBlock;
    const int64_t k0 = lo + blocks * s / splits * kKeyBlock;
    const int64_t k1 = std::min(hi, lo + blocks * (s + 1) / splits * kKeyBlock);
    const KvSource keys = p.keys.at(b, kvh), values = p.values.at(b, kvh);
    const bool decoded = keys.format != kKvF32;
    std::vector<float>& kbuf = scratch(0);
    std::vector<float>& vbuf = scratch(1);
    std::vector<float>& sbuf = scratch(2);
    std::vector<float>& alpha = scratch(3);
    kbuf.resize(size_t(kKeyBlock * D));
    vbuf.resize(size_t(kKeyBlock * D));
    sbuf.resize(size_t(kKeyBlock * L));
    alpha.resize(size_t(L));
    for (int64_t j0 = k0; j0 < k1; j0 += kKeyBlock) {
      const int64_t j1 = std::min(k1, j0 + kKeyBlock);
      if (decoded) {
        isa.decode(&keys, j0, int(j1 - j0), int(D), kbuf.data());
        isa.decode(&values, j0, int(j1 - j0), int(D), vbuf.data());
      }
      for (int64_t q = p0; q < p1; ++q) {
        PanelState& st = states[size_t(q - p0)];
        const int64_t a = std::max(j0, st.keys.any_lo), e = std::min(j1, st.keys.any_hi);
        if (a >= e) continue;
        const int n = int(e - a);
        // Decoded blocks are read from the tile; float32 keys and values in place.
        const float* k = decoded ? kbuf.data() + (a - j0) * D : as_floats(keys, a);
        const float* v = decoded ? vbuf.data() + (a - j0) * D : as_floats(values, a);
        const int64_t ldk = decoded ? D : keys.row_bytes / 4;
        const int64_t ldv = decoded ? D : values.row_bytes / 4;
        isa.scores(st.qt.data(), k, ldk, n, int(D), sbuf.data());
        if (a < st.keys.all_lo || e > st.keys.all_hi) mask_block(p, plan, st, a, n, sbuf.data());
        isa.softmax(sbuf.data(), n, st.m.data(), st.l.data(), alpha.data());
        isa.accumulate(sbuf.data(), v, ldv, n, int(D), int(st.valid), alpha.data(), st.o.data());
      }
    }
    for (int64_t q = p0; q < p1; ++q) {
      const PanelState& st = states[size_t(q - p0)];
      if (splits == 1) {
        finish_rows(p, plan, b, kvh, st.row0, st.valid, st.m.data(), st.l.data(), st.o.data());
        continue;
      }
      float* part = partial.data() + ((bh * plan.panels + q) * splits + s) * state;
      std::copy(st.m.begin(), st.m.end(), part);
      std::copy(st.l.begin(), st.l.end(), part + L);
      std::copy(st.o.begin(), st.o.end(), part + 2 * L);
    }
  });
  if (splits == 1) return;
  // The split ranges' states combined per panel: rescaled to their common max and summed.
  ThreadPool::global().parallel_for(p.B * p.Hkv * plan.panels, [&](int64_t index) {
    const int64_t bh = index / plan.panels, q = index % plan.panels;
    std::vector<float> m(size_t(L), kNoMax), l(size_t(L), 0.0f), o(size_t(L * D), 0.0f);
    const float* parts = partial.data() + index * splits * state;
    for (int64_t s = 0; s < splits; ++s)
      for (int64_t i = 0; i < L; ++i) m[i] = std::max(m[i], parts[s * state + i]);
    for (int64_t s = 0; s < splits; ++s) {
      const float* part = parts + s * state;
      for (int64_t i = 0; i < L; ++i) {
        const float a = std::exp(part[i] - m[i]);
        l[i] += part[L + i] * a;
        for (int64_t d = 0; d < D; ++d) o[i * D + d] += part[2 * L + i * D + d] * a;
      }
    }
    const int64_t row0 = q * L;
    finish_rows(p, plan, bh / p.Hkv, bh % p.Hkv, row0, std::min(L, plan.rows - row0),
                m.data(), l.data(), o.data());
  });
}

}  // namespace openharmony
