#include "worker/json_number.h"

#include <cmath>
#include <limits>
#include <string>

namespace quantd::worker {

nlohmann::json EncodeNumber(double value) {
  if (std::isfinite(value)) return nlohmann::json(value);
  if (std::isnan(value)) return nlohmann::json("nan");
  return nlohmann::json(value > 0 ? "inf" : "-inf");
}

double DecodeNumber(const nlohmann::json& j, double null_reads_as) {
  if (j.is_null()) return null_reads_as;
  if (j.is_string()) {
    const std::string text = j.get<std::string>();
    if (text == "inf") return std::numeric_limits<double>::infinity();
    if (text == "-inf") return -std::numeric_limits<double>::infinity();
    return std::numeric_limits<double>::quiet_NaN();
  }
  return j.get<double>();
}

}  // namespace quantd::worker
