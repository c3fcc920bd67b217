#ifndef QUANTD_WORKER_DATASET_JSON_H_
#define QUANTD_WORKER_DATASET_JSON_H_

// A DatasetSpec as stored in the job store's JSON records (jobs and
// evaluations). Internal to the worker library.

#include <nlohmann/json.hpp>

#include "worker/engine/data/dataset_spec.h"

namespace quantd::worker {

nlohmann::json EncodeDataset(const engine::DatasetSpec& d);
// Throws nlohmann's exceptions on a malformed record (callers catch them).
engine::DatasetSpec DecodeDataset(const nlohmann::json& j);

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_DATASET_JSON_H_
