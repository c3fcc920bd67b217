#ifndef QUANTD_TESTS_FUZZ_FUZZ_FILE_H_
#define QUANTD_TESTS_FUZZ_FUZZ_FILE_H_

// The readers under test take paths: each input is written to one scratch
// file per process (under $TMPDIR), rewritten for every run.

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>

namespace quantd::fuzz {

inline std::string ScratchPath(const char* name) {
  const char* tmp = std::getenv("TMPDIR");
  return std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/quantd_fuzz_" + std::to_string(::getpid()) +
         "_" + name;
}

inline const std::string& WriteScratch(const char* name, const uint8_t* data, size_t size) {
  static const std::string* path = new std::string(ScratchPath(name));
  std::ofstream out(*path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  return *path;
}

}  // namespace quantd::fuzz

#endif  // QUANTD_TESTS_FUZZ_FUZZ_FILE_H_
