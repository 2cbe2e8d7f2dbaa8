// Asio and Beast in separate-compilation mode: their out-of-line code is compiled here, once,
// instead of in every translation unit that uses them.
#include <boost/asio/impl/src.hpp>
#include <boost/asio/ssl/impl/src.hpp>
#include <boost/beast/src.hpp>
