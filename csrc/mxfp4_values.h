// MXFP4 element and scale values (OCP Microscaling Formats v1.0), shared by every ISA file.
// Everything here is `static`: each translation unit gets its own copy, compiled for its ISA.
#pragma once

#include <cstdint>
#include <cstring>

namespace openharmony {

// The E2M1 value of each 4-bit code: sign in bit 3.
static const float kFp4Values[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                     -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

// The value of an E8M0 scale byte: 2**(s - 127) exactly; byte 0 is the float32 subnormal
// 2**-127, byte 255 is NaN (as openharmony/mxfp4.py decodes it).
static inline float scale_value(uint8_t s) {
  uint32_t bits = s == 0 ? 0x00400000u : s == 255 ? 0x7FC00000u : uint32_t(s) << 23;
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

static inline float bf16_value(uint16_t bits) {
  uint32_t widened = uint32_t(bits) << 16;
  float value;
  std::memcpy(&value, &widened, sizeof value);
  return value;
}

}  // namespace openharmony
