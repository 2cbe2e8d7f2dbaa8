// The process: one worker per core, the listeners, and the signals (SIGTERM/SIGINT drain
// in-flight requests, then exit).
#pragma once

#include <memory>
#include <vector>

#include "proxy/runtime.hpp"
#include "proxy/worker.hpp"

namespace tokgate::proxy {

class Server {
 public:
  explicit Server(Runtime& runtime);
  ~Server();

  // Binds every listener on every worker; throws std::runtime_error naming the address.
  void bind();
  // Runs until SIGTERM or SIGINT, then drains; returns the process exit code.
  int run();

 private:
  Runtime& runtime_;
  std::vector<std::unique_ptr<Worker>> workers_;
};

}  // namespace tokgate::proxy
