// The stand-in driver's own entry points (beyond the CUDA driver API it
// imitates), for the tests that load it. See standin.cpp.
#pragma once

#include <cstddef>
#include <cstdint>

extern "C" {
// A built-in kernel by name ("fill", "check", "check_struct", "noop"), as a CUfunction.
void* standin_function(const char* name);
// The call log: every entry point appends one line ("cuLaunchKernel check ...").
size_t standin_log_count();
// Line i into buf (NUL-terminated, cut to len); returns its full length.
size_t standin_log_line(size_t i, char* buf, size_t len);
void standin_log_clear();
// Events recorded from now on answer CUDA_ERROR_NOT_READY to `queries`
// cuEventQuery calls before they complete (0, the default: done at once).
void standin_set_event_lag(uint32_t queries);
// Bytes of managed memory the stand-in counts as resident on the device.
uint64_t standin_device_resident();
// Bytes of the managed range [p, p + n) resident on the device.
uint64_t standin_resident_in(uint64_t p, uint64_t n);
// cuEventCreate fails (CUDA_ERROR_OUT_OF_MEMORY) while `fail` is non-zero.
void standin_fail_event_create(int fail);
// Every cuEventQuery answers `result` (a CUresult: work failed on its
// stream) until it is set back to 0.
void standin_fail_event_query(int result);
// cuMemPrefetchAsync of a range that contains `addr` fails with `result`
// (a CUresult) and moves nothing, as the driver refuses a range; 0 (or
// result 0) turns it off.
void standin_fail_prefetch_at(uint64_t addr, int result);
// The same, once: the first prefetch over `addr` moves the part of its range
// below `addr`, then fails with `result` (a driver failing half way); later
// ones succeed.
void standin_fail_prefetch_partly_at(uint64_t addr, int result);
}

// The pattern the "fill" kernel writes and "check" verifies.
inline uint8_t standin_pattern(uint64_t i, uint32_t seed) {
  return static_cast<uint8_t>(i * 131 + seed * 7 + (i >> 12));
}
