#ifndef QUANTD_WORKER_ENGINE_PREDICTED_CLASS_H_
#define QUANTD_WORKER_ENGINE_PREDICTED_CLASS_H_

// The class a row of classifier scores predicts, ranked one way everywhere
// quantd counts top-1 (the job's quality check and evaluation, tuning trials,
// Evaluate): the largest score, the first on ties, as argmax. NaN ranks below
// every number, so a model that overflowed never counts as predicting a class.
// (at::argmax ranks NaN above everything.)

#include <cmath>
#include <cstdint>

namespace quantd::engine {

// What a row of NaN scores predicts: no class, never correct, never agreeing.
inline constexpr int64_t kNoClass = -1;

inline int64_t PredictedClass(const float* scores, int64_t classes) {
  int64_t best = 0;
  for (int64_t c = 1; c < classes; ++c) {
    if (scores[c] > scores[best] || (std::isnan(scores[best]) && !std::isnan(scores[c]))) best = c;
  }
  return classes > 0 && !std::isnan(scores[best]) ? best : kNoClass;
}

// Whether two predictions agree: the same class, and a class at all.
inline bool SamePrediction(int64_t a, int64_t b) { return a == b && a != kNoClass; }

}  // namespace quantd::engine

#endif  // QUANTD_WORKER_ENGINE_PREDICTED_CLASS_H_
