#ifndef QUANTD_WORKER_ENGINE_BASE_STATUS_MACROS_H_
#define QUANTD_WORKER_ENGINE_BASE_STATUS_MACROS_H_

// Debian's Abseil (20220623) has no public RETURN_IF_ERROR / ASSIGN_OR_RETURN.

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define QUANTD_STATUS_CONCAT_INNER_(a, b) a##b
#define QUANTD_STATUS_CONCAT_(a, b) QUANTD_STATUS_CONCAT_INNER_(a, b)

#define QUANTD_RETURN_IF_ERROR(expr)                 \
  do {                                               \
    ::absl::Status quantd_status_ = (expr);          \
    if (!quantd_status_.ok()) return quantd_status_; \
  } while (0)

#define QUANTD_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  if (!tmp.ok()) return tmp.status();                 \
  lhs = std::move(tmp).value()

#define QUANTD_ASSIGN_OR_RETURN(lhs, expr) \
  QUANTD_ASSIGN_OR_RETURN_IMPL_(QUANTD_STATUS_CONCAT_(quantd_statusor_, __LINE__), lhs, expr)

#endif  // QUANTD_WORKER_ENGINE_BASE_STATUS_MACROS_H_
