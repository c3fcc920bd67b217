#ifndef QUANTD_WORKER_ENGINE_RUNTIME_IDEEP_CACHE_H_
#define QUANTD_WORKER_ENGINE_RUNTIME_IDEEP_CACHE_H_

#include <string>

namespace quantd::engine {

// LibTorch 1.13 runs oneDNN through ideep, which keeps the last
// LRU_CACHE_CAPACITY (default 1024) primitive descriptors of each thread and
// creates a primitive from a kept one whenever oneDNN's own primitive cache
// has dropped that primitive. oneDNN 2.6's int8 brgemm convolutions (AVX-512
// VNNI) share descriptors whose attribute pointer outlives what it points to;
// with the defaults, the 45th or so of 48 quantization jobs in one process
// failed with std::bad_array_new_length inside oneDNN, or crashed
// (README, "Fixed: oneDNN failed in a long run").
//
// Every binary that links the int8 runtime therefore starts with
// LRU_CACHE_CAPACITY=1 unless the environment already sets it: ideep then
// reuses a descriptor only for its thread's very next call with the same key,
// whose primitive oneDNN still holds. The int8 runtime keeps its own packed
// weights (and so its primitives) per batch size, so steady-state serving does
// not depend on ideep's cache. See also base/helper_threads.h. Both only
// narrowed the failure; what closes it is running int8 kernels without
// post-ops (onednn_post_ops.h).
inline constexpr char kIdeepCacheCapacityVariable[] = "LRU_CACHE_CAPACITY";

// The capacity ideep reads, as set in the environment.
std::string IdeepCacheCapacity();

// Empty when ideep's descriptor cache is the safe size (1); otherwise a
// warning that names the variable and the risk.
std::string IdeepCacheWarning();

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_RUNTIME_IDEEP_CACHE_H_
