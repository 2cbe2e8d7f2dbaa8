// toml++'s implementation, compiled once and instrumented like the code under test; every other
// translation unit sees the declarations only (TOML_HEADER_ONLY=0).
#define TOML_IMPLEMENTATION
#include <toml++/toml.h>
