// The calibration/evaluation readers (CIFAR-10 binary and .npy) on arbitrary
// bytes: first byte picks the format, the rest is the file. Opening must give
// a status, never crash, and a dataset that opens must read its first batch.

#include <cstddef>
#include <cstdint>

#include "tests/fuzz/fuzz_file.h"
#include "worker/engine/data/dataset.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  quantd::engine::DatasetSpec spec;
  spec.format = (data[0] & 1) != 0 ? quantd::engine::DatasetFormat::kNpy
                                    : quantd::engine::DatasetFormat::kCifar10Binary;
  spec.samples_per_class = (data[0] & 2) != 0 ? 1 : 0;
  spec.path = quantd::fuzz::WriteScratch("dataset", data + 1, size - 1);
  auto dataset = quantd::engine::OpenDataset(spec);
  if (!dataset.ok()) return 0;
  const int64_t count = std::min<int64_t>((*dataset)->size(), 4);
  if (count > 0) (void)(*dataset)->ReadBatch(0, count);
  return 0;
}
