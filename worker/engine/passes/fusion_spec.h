#ifndef QUANTD_WORKER_ENGINE_PASSES_FUSION_SPEC_H_
#define QUANTD_WORKER_ENGINE_PASSES_FUSION_SPEC_H_

#include <string>
#include <vector>

namespace quantd::engine {

// Which modules to fuse: explicit groups of module paths, e.g.
// {{"conv1", "bn1", "relu1"}, {"layer1.conv2", "layer1.bn2"}}, or every
// fusable pattern (`automatic`, which also fuses residual add + ReLU).
struct FusionSpec {
  bool automatic = false;
  std::vector<std::vector<std::string>> groups;
};

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_PASSES_FUSION_SPEC_H_
