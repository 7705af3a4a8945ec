// Work planning for the matmuls: which rows share a decoded weight, how the output is cut into
// items for the thread pool, and when a weight tile is dequantized once and reused (prefill).
#include "kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <stdexcept>

#include "fast.h"
#include "thread_pool.h"

namespace openharmony {

namespace {

// Rows of the output (weight rows) per work item when the weights are decoded on the fly: a
// few tens of microseconds of work, so hundreds of items per matmul balance the cores.
constexpr int64_t kChunk = 64;
// With at least this many activation rows on one weight, a tile of weight rows is dequantized
// to float32 once (into a per-thread buffer that stays in L2) and multiplied with every row,
// instead of decoding each block again for each 4 rows.
constexpr int64_t kTileMinRows = 8;
constexpr int kRowsPerCall = 4;
// The tiles of an ISA with panel_dot: 24 weight rows (a multiple of its 6- and 12-row
// kernels; 24 rows of 2880 floats plus one 16-row panel fit the 512 KB L2 of a Zen 3 core,
// 32 rows did not: 57 vs 68 GFLOP/s measured), times up to kPanelsPerItem panels of rows.
constexpr int64_t kPanelTileN = 24;
constexpr int64_t kPanelsPerItem = 4;
// The tiles of an ISA without it: 32 weight rows times up to 64 activation rows, multiplied
// 4 rows at a time by f32_dot.
constexpr int64_t kTileN = 32;
constexpr int64_t kTileRows = 64;

bool cpu_has(const char* feature) {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  if (std::string(feature) == "avx512") return __builtin_cpu_supports("avx512f");
  if (std::string(feature) == "avx512vnni")  // and BF16: the fast AVX-512 table needs both
    return __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni") &&
           __builtin_cpu_supports("avx512bf16");
  if (std::string(feature) == "avx2")
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  (void)feature;
  return false;
}

const IsaKernels* kernels_for(const std::string& name) {
  if (name == "portable") return portable_kernels();
  if (name == "avx2" && cpu_has("avx2")) return avx2_kernels();
  if (name == "avx512" && cpu_has("avx512")) return avx512_kernels();
  return nullptr;
}

// The fast-precision table of an ISA: AVX-512 needs BW, VNNI and BF16 too, else AVX2's runs.
const FastKernels* fast_kernels_for(const std::string& name) {
  if (name == "portable") return fast_portable_kernels();
  if (name == "avx512" && cpu_has("avx512vnni")) return fast_avx512_kernels();
  if ((name == "avx512" || name == "avx2") && cpu_has("avx2")) return fast_avx2_kernels();
  return nullptr;
}

std::vector<float>& tile_buffer() {
  thread_local std::vector<float> buffer;
  return buffer;
}

// Up to kPanelRows rows of one weight's activations, copied k-major (isa.h) once per call.
struct Panel {
  const int64_t* rows;  // indices into x/y
  int count;
};

// One unit of work: output columns [n0, n1) for rows all multiplied with the same weight
// matrix (one expert).
//   kDecode: `count` (<= 4) rows of `rows`, decoded on the fly by the ISA's dot kernel.
//   kTile:   [n0, n1) dequantized once, then `count` rows of `rows` through f32_dot.
//   kPanels: [n0, n1) dequantized once, then panels [panel, panel + count) through panel_dot.
//   kInt8:   [n0, n1) expanded to int8 once, then int8 panels [panel, panel + count) (fast).
//   kBf16:   bf16 panels [panel, panel + count) times bf16 weight rows [n0, n1) as stored (fast).
struct Item {
  enum Kind { kDecode, kTile, kPanels, kInt8, kBf16 } kind;
  int64_t weight;
  const int64_t* rows;
  int64_t panel;
  int64_t count;
  int64_t n0, n1;
};

struct Plan {
  std::vector<Item> items;
  std::vector<Panel> panels;       // float32 panels (kPanels)
  std::vector<Panel> int8_panels;  // quantized panels (kInt8) or bf16 ones (kBf16)
};

// The fast path's tiles: 24 weight rows (twice the AVX-512 kernel's 12) times up to
// kPanelsPerItem panels.
constexpr int64_t kInt8TileN = 24;

// Splits `count` rows into near-equal panels of at most `size` rows, appended to `panels`.
int64_t add_panels(std::vector<Panel>& panels, const int64_t* rows, int64_t count, int size) {
  const int64_t n_panels = (count + size - 1) / size;
  for (int64_t i = 0, begin = 0; i < n_panels; ++i) {
    const int64_t end = count * (i + 1) / n_panels;
    panels.push_back({rows + begin, int(end - begin)});
    begin = end;
  }
  return n_panels;
}

// Cuts the rows on one weight into items: tiles when there are many rows, chunks otherwise.
// Panels get nearly equal sizes (21 rows: 11 + 10, not 16 + 5: the kernel's 16-row form is
// its fast one, and a short last panel would waste most of it).
// `fast`: kInt8 or kBf16 items for many rows (kDecode: none, exact).
void plan(Plan& p, const IsaKernels& isa, int64_t weight, const int64_t* rows, int64_t count,
          int64_t N, Item::Kind fast = Item::kDecode) {
  if (count >= kTileMinRows && fast != Item::kDecode) {
    const int64_t first = int64_t(p.int8_panels.size());
    const int64_t n_panels = add_panels(p.int8_panels, rows, count, kInt8PanelRows);
    for (int64_t q = 0; q < n_panels; q += kPanelsPerItem)
      for (int64_t n = 0; n < N; n += kInt8TileN)
        p.items.push_back({fast, weight, nullptr, first + q,
                           std::min(kPanelsPerItem, n_panels - q), n,
                           std::min(N, n + kInt8TileN)});
  } else if (count >= kTileMinRows && isa.panel_dot) {
    const int64_t first = int64_t(p.panels.size());
    const int64_t n_panels = add_panels(p.panels, rows, count, kPanelRows);
    for (int64_t q = 0; q < n_panels; q += kPanelsPerItem)
      for (int64_t n = 0; n < N; n += kPanelTileN)
        p.items.push_back({Item::kPanels, weight, nullptr, first + q,
                           std::min(kPanelsPerItem, n_panels - q), n,
                           std::min(N, n + kPanelTileN)});
  } else if (count >= kTileMinRows) {
    for (int64_t m = 0; m < count; m += kTileRows)
      for (int64_t n = 0; n < N; n += kTileN)
        p.items.push_back({Item::kTile, weight, rows + m, 0, std::min(kTileRows, count - m), n,
                           std::min(N, n + kTileN)});
  } else {
    for (int64_t m = 0; m < count; m += kRowsPerCall)
      for (int64_t n = 0; n < N; n += kChunk)
        p.items.push_back({Item::kDecode, weight, rows + m, 0,
                           std::min<int64_t>(kRowsPerCall, count - m), n,
                           std::min(N, n + kChunk)});
  }
}

// Rounds half to even, as np.rint, for |v| < 2**22 (the current rounding mode, round to nearest
// by default): adding and subtracting 1.5 * 2**23 leaves no fraction bits.
inline float round_even(float v) {
  return (v + 12582912.0f) - 12582912.0f;
}

// float32 -> bfloat16 bits, rounded to nearest even (NaN stays NaN).
inline uint16_t to_bf16(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return uint16_t((bits >> 16) | 0x40);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return uint16_t(bits >> 16);
}

inline float bf16_float(uint16_t b) {
  const uint32_t bits = uint32_t(b) << 16;
  float v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

// One bf16 panel (fast.h): the rows rounded to bf16, k-major in pairs.
void bf16_panel(const float* x, const Panel& panel, int64_t K, uint16_t* out) {
  const int64_t pairs = (K + 1) / 2;
  std::fill(out, out + pairs * 2 * kInt8PanelRows, uint16_t(0));
  for (int r = 0; r < panel.count; ++r) {
    const float* row = x + panel.rows[r] * K;
    for (int64_t k = 0; k < K; ++k)
      out[((k / 2) * kInt8PanelRows + r) * 2 + k % 2] = to_bf16(row[k]);
  }
}

// One quantized panel (fast.h): per row and 32-block, d = max|x| / 127 and q = round(x / d).
// Each block is quantized into a small buffer (loops the compiler vectorizes), then its 8 quads
// go to their places in the panel.
void quantize_panel(const float* x, const Panel& panel, int64_t K, uint8_t* out, float* scales) {
  const int64_t groups = K / kBlock;
  std::fill(out, out + K * kInt8PanelRows, uint8_t(128));
  std::fill(scales, scales + groups * kInt8PanelRows, 0.0f);
  for (int r = 0; r < panel.count; ++r) {
    const float* row = x + panel.rows[r] * K;
    for (int64_t g = 0; g < groups; ++g) {
      const float* block = row + g * kBlock;
      float amax = 0.0f;
      for (int i = 0; i < kBlock; ++i) {
        const float a = std::fabs(block[i]);
        amax = a > amax ? a : amax;
      }
      const float d = amax / 127.0f, inverse = d > 0.0f ? 1.0f / d : 0.0f;
      scales[g * kInt8PanelRows + r] = d;
      uint8_t q[kBlock];
      for (int i = 0; i < kBlock; ++i) {
        const float v = round_even(block[i] * inverse);
        q[i] = uint8_t(int(v < -127.0f ? -127.0f : v > 127.0f ? 127.0f : v) + 128);
      }
      for (int t = 0; t < kBlock / 4; ++t)
        std::memcpy(out + ((g * (kBlock / 4) + t) * kInt8PanelRows + r) * 4, q + 4 * t, 4);
    }
  }
}

// Runs the plan: `dot` decodes on the fly, `dequantize` fills a float32 tile for f32_dot or
// panel_dot, `to_int8` an int8 tile for the fast table `fast`. `x` holds the activations in the
// weights' k order (block-split for MXFP4).
// `finish` (may be null): the kernels write each item's rows into a scratch block instead of y,
// and finish(row, n0, n1, values) stores them (the fused bias and SwiGLU, run_gather_mxfp4_swiglu).
using Finish = std::function<void(int64_t row, int64_t n0, int64_t n1, const float* values)>;
constexpr int64_t kScratchCols = std::max({kChunk, kTileN, kPanelTileN, kInt8TileN});

template <typename Dot, typename Dequantize, typename ToInt8>
void run(const IsaKernels& isa, const Plan& p, const float* x, float* y, int64_t N, int64_t K,
         Dot dot, Dequantize dequantize, const FastKernels* fast, ToInt8 to_int8,
         const uint16_t* bf16_weights = nullptr, const Finish* finish = nullptr) {
  ThreadPool& pool = ThreadPool::global();
  // The panels, k-major, zero past each panel's last row; built in parallel, once per call.
  std::vector<float> panel_data(p.panels.size() * size_t(K * kPanelRows));
  // The fast panels: int8 ones for MXFP4, or bf16 pairs ((K + 1) / 2 of 4 bytes per row)
  // when the weights are bf16.
  const int64_t groups = K / kBlock;
  const int64_t panel_bytes = bf16_weights ? ((K + 1) / 2) * 4 * kInt8PanelRows
                                           : K * kInt8PanelRows;
  std::vector<uint8_t> int8_data(p.int8_panels.size() * size_t(panel_bytes));
  std::vector<float> int8_scales(bf16_weights ? 0 : p.int8_panels.size() * size_t(groups * kInt8PanelRows));
  pool.parallel_for(int64_t(p.int8_panels.size()), [&](int64_t i) {
    if (bf16_weights) {
      bf16_panel(x, p.int8_panels[i], K,
                 reinterpret_cast<uint16_t*>(int8_data.data() + i * panel_bytes));
    } else {
      quantize_panel(x, p.int8_panels[i], K, int8_data.data() + i * panel_bytes,
                     int8_scales.data() + i * groups * kInt8PanelRows);
    }
  });
  pool.parallel_for(int64_t(p.panels.size()), [&](int64_t i) {
    const Panel& panel = p.panels[i];
    float* out = panel_data.data() + i * K * kPanelRows;
    const float* src[kPanelRows];
    for (int r = 0; r < panel.count; ++r) src[r] = x + panel.rows[r] * K;
    for (int64_t k = 0; k < K; ++k) {
      float* o = out + k * kPanelRows;
      for (int r = 0; r < panel.count; ++r) o[r] = src[r][k];
      for (int r = panel.count; r < kPanelRows; ++r) o[r] = 0.0f;
    }
  });
  pool.parallel_for(int64_t(p.items.size()), [&](int64_t i) {
    const Item& item = p.items[i];
    const float* xr[kRowsPerCall];
    float* yr[kPanelRows];
    thread_local float scratch[kPanelRows * kScratchCols];
    // Points yr at where the kernel writes `count` rows (indices `rows`) of this item ...
    auto aim = [&](const int64_t* rows, int count) {
      for (int r = 0; r < count; ++r)
        yr[r] = finish ? scratch + r * kScratchCols : y + rows[r] * N + item.n0;
    };
    // ... and, with an epilogue, stores them once written.
    auto land = [&](const int64_t* rows, int count) {
      if (finish)
        for (int r = 0; r < count; ++r) (*finish)(rows[r], item.n0, item.n1, yr[r]);
    };
    if (item.kind == Item::kDecode) {
      for (int r = 0; r < item.count; ++r) xr[r] = x + item.rows[r] * K;
      aim(item.rows, int(item.count));
      dot(item, xr, yr);
      land(item.rows, int(item.count));
      return;
    }
    if (item.kind == Item::kBf16) {
      for (int64_t q = item.panel; q < item.panel + item.count; ++q) {
        const Panel& panel = p.int8_panels[q];
        aim(panel.rows, panel.count);
        fast->bf16_panel_dot(reinterpret_cast<const uint16_t*>(int8_data.data() + q * panel_bytes),
                             panel.count, bf16_weights + item.n0 * K, K, item.n1 - item.n0, yr);
        land(panel.rows, panel.count);
      }
      return;
    }
    if (item.kind == Item::kInt8) {
      // One buffer: the int8 values, then the block scales and the corrections.
      thread_local std::vector<int32_t> tile;
      const int64_t cols = item.n1 - item.n0;
      tile.resize(size_t(kInt8TileN * (K / 4 + 2 * groups)));
      int8_t* values = reinterpret_cast<int8_t*>(tile.data());
      float* tile_scales = reinterpret_cast<float*>(tile.data() + kInt8TileN * K / 4);
      int32_t* corrections = tile.data() + kInt8TileN * (K / 4 + groups);
      to_int8(item, values, tile_scales, corrections);
      for (int64_t q = item.panel; q < item.panel + item.count; ++q) {
        const Panel& panel = p.int8_panels[q];
        aim(panel.rows, panel.count);
        fast->panel_dot(int8_data.data() + q * panel_bytes,
                        int8_scales.data() + q * groups * kInt8PanelRows, panel.count, values,
                        tile_scales, corrections, K, cols, yr);
        land(panel.rows, panel.count);
      }
      return;
    }
    std::vector<float>& tile = tile_buffer();
    tile.resize(size_t(std::max(kTileN, kPanelTileN) * K));
    dequantize(item, tile.data());
    if (item.kind == Item::kPanels) {
      for (int64_t q = item.panel; q < item.panel + item.count; ++q) {
        const Panel& panel = p.panels[q];
        aim(panel.rows, panel.count);
        isa.panel_dot(panel_data.data() + q * K * kPanelRows, panel.count, tile.data(), K,
                      item.n1 - item.n0, yr);
        land(panel.rows, panel.count);
      }
      return;
    }
    for (int64_t m = 0; m < item.count; m += kRowsPerCall) {
      const int rows = int(std::min<int64_t>(kRowsPerCall, item.count - m));
      for (int r = 0; r < rows; ++r) xr[r] = x + item.rows[m + r] * K;
      aim(item.rows + m, rows);
      isa.f32_dot(xr, rows, tile.data(), K, item.n1 - item.n0, yr);
      land(item.rows + m, rows);
    }
  });
}

}  // namespace

std::vector<std::string> supported_isas() {
  std::vector<std::string> names;
  for (const char* name : {"avx512", "avx2", "portable"})
    if (kernels_for(name)) names.push_back(name);
  return names;
}

const IsaKernels& select_isa(const std::string& name) {
  const IsaKernels* isa = kernels_for(name == "auto" ? supported_isas().front() : name);
  if (!isa) {
    std::string choices;
    for (const auto& n : supported_isas()) choices += (choices.empty() ? "" : ", ") + n;
    throw std::invalid_argument("isa '" + name + "' is not available on this CPU or build; "
                                "choose auto or one of: " + choices);
  }
  return *isa;
}

const FastKernels& select_fast(const std::string& name) {
  const std::string isa = select_isa(name).name;  // an unknown name fails as in select_isa
  return *fast_kernels_for(isa);
}

int thread_count() { return ThreadPool::global().size(); }

namespace {

// run_gather_mxfp4_matmul, with `finish` storing the results (y then has `y_cols` columns).
void gather_mxfp4(const IsaKernels& isa, const float* x, const uint8_t* w, const uint8_t* scales,
                  const uint32_t* experts, float* y, int64_t R, int64_t E, int64_t N, int64_t K,
                  const FastKernels* fast, int64_t y_cols, const Finish* finish) {
  // Activations in block-split order (isa.h), once per call, 64 rows per work item.
  std::vector<float> split(static_cast<size_t>(R * K));
  ThreadPool::global().parallel_for((R + 63) / 64, [&](int64_t item) {
    for (int64_t r = item * 64; r < std::min(R, item * 64 + 64); ++r)
      for (int64_t g = 0; g < K / kBlock; ++g)
        for (int i = 0; i < kBlock / 2; ++i) {
          const float* src = x + r * K + g * kBlock;
          float* dst = split.data() + r * K + g * kBlock;
          dst[i] = src[2 * i];
          dst[kBlock / 2 + i] = src[2 * i + 1];
        }
  });
  // Rows grouped by expert (a stable counting sort), so each expert's weights are read once.
  std::vector<int64_t> begin(static_cast<size_t>(E + 1), 0), order(static_cast<size_t>(R));
  for (int64_t r = 0; r < R; ++r) {
    if (experts[r] < E) {
      ++begin[experts[r] + 1];
    } else {
      std::fill(y + r * y_cols, y + (r + 1) * y_cols, std::numeric_limits<float>::quiet_NaN());
    }
  }
  for (int64_t e = 0; e < E; ++e) begin[e + 1] += begin[e];
  std::vector<int64_t> next(begin.begin(), begin.end() - 1);
  for (int64_t r = 0; r < R; ++r)
    if (experts[r] < E) order[size_t(next[experts[r]]++)] = r;

  Plan p;
  for (int64_t e = 0; e < E; ++e)
    if (begin[e + 1] > begin[e])
      plan(p, isa, e, order.data() + begin[e], begin[e + 1] - begin[e], N,
           fast ? Item::kInt8 : Item::kDecode);

  const int64_t code_bytes = N * (K / 2), scale_bytes = N * (K / kBlock);
  run(isa, p, split.data(), y, N, K,
      [&](const Item& item, const float* const* xr, float* const* yr) {
        isa.mxfp4_dot(xr, int(item.count), w + item.weight * code_bytes,
                      scales + item.weight * scale_bytes, K, item.n0, item.n1, yr);
      },
      [&](const Item& item, float* tile) {
        isa.mxfp4_dequantize(w + item.weight * code_bytes, scales + item.weight * scale_bytes,
                             K, item.n0, item.n1, tile);
      },
      fast, [&](const Item& item, int8_t* values, float* tile_scales, int32_t* corrections) {
        fast->mxfp4_to_int8(w + item.weight * code_bytes, scales + item.weight * scale_bytes, K,
                            item.n0, item.n1, values, tile_scales, corrections);
      },
      nullptr, finish);
}

}  // namespace

void run_gather_mxfp4_matmul(const IsaKernels& isa, const float* x, const uint8_t* w,
                         const uint8_t* scales, const uint32_t* experts, float* y, int64_t R,
                         int64_t E, int64_t N, int64_t K, const FastKernels* fast) {
  gather_mxfp4(isa, x, w, scales, experts, y, R, E, N, K, fast, N, nullptr);
}

void run_gather_mxfp4_swiglu(const IsaKernels& isa, const float* x, const uint8_t* w,
                             const uint8_t* scales, const float* bias, const uint32_t* experts,
                             float* y, int64_t R, int64_t E, int64_t N, int64_t K, float limit,
                             float alpha, const FastKernels* fast) {
  const int64_t half = N / 2;
  // Items start at even columns and span an even count (chunks of 64, tiles of 24 or 32), so
  // every gate column arrives with its up column.
  const Finish finish = [&](int64_t row, int64_t n0, int64_t n1, const float* values) {
    const float* b = bias + int64_t(experts[row]) * N;
    float* out = y + row * half;
    for (int64_t n = n0; n < n1; n += 2) {
      const float gate = std::min(values[n - n0] + b[n], limit);
      const float up = std::clamp(values[n - n0 + 1] + b[n + 1], -limit, limit);
      out[n / 2] = gate / (1.0f + std::exp(-alpha * gate)) * (up + 1.0f);
    }
  };
  gather_mxfp4(isa, x, w, scales, experts, y, R, E, N, K, fast, half, &finish);
}

void run_bf16_matmul(const IsaKernels& isa, const float* x, const uint16_t* w, float* y, int64_t R,
                 int64_t N, int64_t K, const FastKernels* fast) {
  std::vector<float> rounded;
  if (fast && R >= kTileMinRows && !fast->bf16_panel_dot) {
    // No bf16 dot product here: the same sums from activations rounded to bf16, in float32.
    rounded.resize(size_t(R * K));
    for (int64_t i = 0; i < R * K; ++i) rounded[i] = bf16_float(to_bf16(x[i]));
    x = rounded.data();
    fast = nullptr;
  }
  std::vector<int64_t> rows(static_cast<size_t>(R));
  for (int64_t r = 0; r < R; ++r) rows[r] = r;
  Plan p;
  plan(p, isa, 0, rows.data(), R, N, fast ? Item::kBf16 : Item::kDecode);
  run(isa, p, x, y, N, K,
      [&](const Item& item, const float* const* xr, float* const* yr) {
        isa.bf16_dot(xr, int(item.count), w, K, item.n0, item.n1, yr);
      },
      [&](const Item& item, float* tile) { isa.bf16_widen(w, K, item.n0, item.n1, tile); },
      fast, [](const Item&, int8_t*, float*, int32_t*) {}, fast ? w : nullptr);
}

}  // namespace openharmony
