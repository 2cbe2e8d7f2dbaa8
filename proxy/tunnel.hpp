// A spliced connection's relay: bytes copied between two TCP sockets, untouched. A gateway holds
// many of these open for hours (push channels, idle keep-alives of traffic it does not target),
// so a tunnel waiting for data holds no buffer: it waits for readiness, reads into the worker
// thread's one scratch buffer and writes straight on; only when the peer is slow to take the
// bytes does it keep them, in a buffer of its own, until they are written.
#pragma once

#include <chrono>
#include <cstdint>

#include "proxy/asio_types.hpp"
#include "proxy/deadline.hpp"

namespace tokgate::proxy {

// Copies `from` to `to` until `from` ends (its FIN is passed on) or either side fails (both are
// then cancelled, which also stops the other direction). Each chunk moves `deadline` on by
// `idle`; `bytes` counts what was read.
awaitable<void> tunnel_one_way(tcp::socket& from, tcp::socket& to, uint64_t& bytes,
                               Deadline& deadline, std::chrono::milliseconds idle);

}  // namespace tokgate::proxy
