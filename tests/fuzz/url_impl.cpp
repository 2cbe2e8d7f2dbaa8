// Boost.URL's implementation, compiled once and instrumented like the code under test (the
// Debian libboost_url.so would be a black box to the fuzzer).
#include <boost/url/src.hpp>
