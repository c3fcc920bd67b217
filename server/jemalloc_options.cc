// jemalloc's options for the executables linked with it (CMake's
// QUANTD_JEMALLOC): quantd and quantd-serving-bench. jemalloc reads this
// symbol at its first allocation; MALLOC_CONF in the environment still
// overrides it.
//
// oversize_threshold:0 turns off jemalloc 5.3's oversize arena. By default
// every allocation of 8 MiB or more comes from that arena, which hands its
// pages back to the kernel (MADV_DONTNEED) as soon as they are freed. An FP32
// pass over a batch of 256 CIFAR images allocates 16 MiB activations at every
// layer, so every pass page-faulted and zeroed them again: FP32 evaluation ran
// at 109-123 images/s, 1771-1903 with this (2048 test images, AVX-512 VNNI
// EPYC; 40% of the CPU was in page faults). Large blocks now stay in the
// thread's arena and go back to the kernel after jemalloc's usual decay
// (dirty_decay_ms, 10 s).
extern "C" {
// NOLINTNEXTLINE: the name jemalloc looks up.
const char* malloc_conf = "oversize_threshold:0";
}
