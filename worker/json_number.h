#ifndef QUANTD_WORKER_JSON_NUMBER_H_
#define QUANTD_WORKER_JSON_NUMBER_H_

// A double as stored in the job store's JSON records (jobs and evaluations).
// JSON has no infinities or NaN, and nlohmann writes them as null, which then
// did not read back as a number: an SQNR is +inf for identical outputs and
// -inf for an all-zero reference. They are written as "inf", "-inf", "nan".
// Internal to the worker library.

#include <nlohmann/json.hpp>

namespace quantd::worker {

nlohmann::json EncodeNumber(double value);
// Reads what EncodeNumber wrote. null, as records written before it hold for
// a non-finite value, reads as `null_reads_as`. Throws nlohmann's exceptions
// on anything else that is not a number (callers catch them).
double DecodeNumber(const nlohmann::json& j, double null_reads_as);

}  // namespace quantd::worker

#endif  // QUANTD_WORKER_JSON_NUMBER_H_
