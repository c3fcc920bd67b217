#ifndef QUANTD_WORKER_ENGINE_SERIALIZATION_TORCHSCRIPT_WRITER_H_
#define QUANTD_WORKER_ENGINE_SERIALIZATION_TORCHSCRIPT_WRITER_H_

// Writes an int8 Program as a standard TorchScript module: prepacked weights
// are custom-class attributes, scales and zero points are attributes (exact
// doubles), and forward calls the same quantized kernels in the same order,
// so torch.jit.load in Python computes what the engine's executor computes.

#include <string>

#include "absl/status/statusor.h"
#include "worker/engine/runtime/int8_program.h"

namespace quantd::engine {

absl::StatusOr<torch::jit::Module> ProgramToModule(const Program& program);

// The module's bytes as torch.jit.save writes them. Deterministic: the same
// program gives the same bytes.
absl::StatusOr<std::string> SerializeProgram(const Program& program);

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_SERIALIZATION_TORCHSCRIPT_WRITER_H_
