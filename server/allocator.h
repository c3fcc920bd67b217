#ifndef QUANTD_SERVER_ALLOCATOR_H_
#define QUANTD_SERVER_ALLOCATOR_H_

#include <string>

namespace quantd {

// The allocator this process runs on, for the startup log: jemalloc's
// version and the options that matter for LibTorch's large tensors, e.g.
// "jemalloc 5.3.0-0-g54eaed1d8b56b1aa528be3bdd1877e59c56fa90c
// oversize_threshold=0 dirty_decay_ms=10000", or "the C library's malloc".
std::string AllocatorSummary();

}  // namespace quantd

#endif  // QUANTD_SERVER_ALLOCATOR_H_
