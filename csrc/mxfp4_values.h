// MXFP4 element and scale values (OCP Microscaling Formats v1.0), shared by every ISA file.
// Everything here is `static`: each translation unit gets its own copy, compiled for its ISA.
#pragma once

#include <cstdint>
#include <cstring>

namespace openharmony {

// The E2M1 value of each 4-bit code: sign in bit 3.
static const float kFp4Values[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                     -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

// The value of each E8M0 scale byte: 2**(s - 127) exactly (byte 0 is the float32 subnormal
// 2**-127), and NaN for byte 255, as openharmony/mxfp4.py decodes it. A table: one load per
// block in the kernels' inner loops instead of bit arithmetic with two branches.
struct ScaleTable {
  float value[256];
  constexpr ScaleTable() : value() {
    float power = 1.0f;  // powers of two are exact, subnormal 2**-127 included
    for (int s = 127; s >= 0; --s, power /= 2) value[s] = power;
    power = 2.0f;
    for (int s = 128; s < 255; ++s) {
      value[s] = power;
      if (s < 254) power *= 2;  // 2**128 would overflow
    }
    value[255] = __builtin_nanf("");
  }
};
static constexpr ScaleTable kScales{};

static inline float scale_value(uint8_t s) { return kScales.value[s]; }

// The fast-precision kernels' int8 weights (fast.h): each E2M1 value times 2, so that every
// one is an integer, and the scale halved to match: 2**(s - 128) (byte 0 gives the float32
// subnormal 2**-128, exact; 255 stays NaN).
static const int8_t kInt8Values[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
static inline float int8_scale_value(uint8_t s) { return kScales.value[s] * 0.5f; }

static inline float bf16_value(uint16_t bits) {
  uint32_t widened = uint32_t(bits) << 16;
  float value;
  std::memcpy(&value, &widened, sizeof value);
  return value;
}

}  // namespace openharmony
