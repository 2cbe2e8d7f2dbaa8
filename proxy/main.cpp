#include <string_view>
#include <vector>

#include "proxy/cli.hpp"

int main(int argc, char** argv) {
  std::vector<std::string_view> args(argv + 1, argv + argc);
  return tokgate::proxy::run_cli(args);
}
