#include "worker/engine/base/thread_name.h"

#include <pthread.h>

namespace quantd {

void NameThisThread(absl::string_view name) {
  // The kernel's limit: 16 bytes with the terminating NUL (longer fails ERANGE).
  const std::string cut(name.substr(0, 15));
  pthread_setname_np(pthread_self(), cut.c_str());
}

std::string ThisThreadName() {
  char name[16] = {};
  if (pthread_getname_np(pthread_self(), name, sizeof name) != 0) return "";
  return name;
}

}  // namespace quantd
