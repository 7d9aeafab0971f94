// The int8 engine's plans and kernel table (_int8.inc, _kernels_int8.inc): shared by
// _engine.cpp and the kernel harness bench/native_int8_kernels.cpp, so both compile the
// kernels against one definition.
#pragma once

#include <stdint.h>

#include "_plans.h"  // interior_columns, which the int8 depthwise shares with fp32

namespace {

struct Requant {
  float hi;  // 255 - zp_out: the clamp before rounding (the packs clamp below: requant)
  int zp;
};

struct DwPlan {
  int hin, win, hout, wout, cs, stride, dil, pt, pl;
  const int16_t* w;
  const int32_t* bias;
  const float* mult;
  Requant rq;
};

struct StemPlan {
  int hin, win, hout, wout, cs, stride, dil, pt, pl, zp_in;
  const int8_t* w;
  const int32_t* bias;
  const float* mult;
  Requant rq;
};

struct AddParams {
  float ra, rb, fixed;
};

struct I8Kernels {
  void (*gemm)(const uint8_t*, long, int, int, const int8_t*, int, uint8_t*, long,
               const int32_t*, const float*, const Requant&);
  void (*dw)(const DwPlan&, const uint8_t*, uint8_t*, int, int, const uint8_t*);
  void (*stem)(const StemPlan&, const uint8_t*, uint8_t*, int, int, uint8_t*);
  void (*quant)(const float*, uint8_t*, long, long, float, int);
  void (*add)(const uint8_t*, const uint8_t*, uint8_t*, long, long, const AddParams&);
  void (*gap)(const uint8_t*, long, int, int, int, int, const float*, const Requant&, uint8_t*);
  void (*dw_row)(const DwPlan&, const uint8_t* const*, uint8_t*, const uint8_t*);
  void (*stem_row)(const StemPlan&, const uint8_t*, int, uint8_t*, uint8_t*);
};

}  // namespace
