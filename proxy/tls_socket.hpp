// A TLS stream over a TCP socket that OpenSSL reads and writes directly (through a small BIO of
// our own), for Beast and Asio coroutines. It replaces asio::ssl::stream on the data plane:
// asio's stream keeps four 17 KiB buffers per connection for its whole life (its engine's two
// plus a BIO pair), ~70 KiB even while the connection sits idle, and copies every byte through
// them. Here an idle connection holds no I/O buffer at all (OpenSSL's own buffers are released
// when empty), readiness comes from Asio's reactor (async_wait), and the ciphertext of one write
// (a response head and its body together) leaves in one send().
//
// One read and one write may be in flight at once (HTTP/2 reads while it writes), as with any
// Asio stream. The interface is the subset of asio::ssl::stream the proxy uses.
#pragma once

#include <openssl/ssl.h>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/compose.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/ssl/stream_base.hpp>

#include <array>
#include <cstddef>
#include <memory>
#include <span>
#include <vector>

namespace tokgate::proxy {

class TlsSocket {
 public:
  using socket_type = boost::asio::ip::tcp::socket;
  using executor_type = socket_type::executor_type;
  using next_layer_type = socket_type;
  using lowest_layer_type = socket_type::lowest_layer_type;
  using handshake_type = boost::asio::ssl::stream_base::handshake_type;
  using error_code = boost::system::error_code;

  // What one non-blocking attempt achieved.
  enum class Progress { done, want_read, want_write };

  TlsSocket(socket_type socket, boost::asio::ssl::context& context);
  TlsSocket(const executor_type& executor, boost::asio::ssl::context& context);
  ~TlsSocket();
  TlsSocket(const TlsSocket&) = delete;
  TlsSocket& operator=(const TlsSocket&) = delete;

  executor_type get_executor() noexcept { return socket_.get_executor(); }
  socket_type& next_layer() noexcept { return socket_; }
  lowest_layer_type& lowest_layer() noexcept { return socket_.lowest_layer(); }
  SSL* native_handle() noexcept { return ssl_; }

  // Completes with (error_code).
  template <class Token>
  auto async_handshake(handshake_type type, Token&& token) {
    return start<void(error_code)>(HandshakeStep{this, type}, std::forward<Token>(token));
  }
  // The peer's first bytes were already read (a ClientHello the proxy inspected): they are fed
  // to TLS before the socket. Completes with (error_code, bytes of `initial` taken = all).
  template <class ConstBufferSequence, class Token>
  auto async_handshake(handshake_type type, const ConstBufferSequence& initial, Token&& token) {
    const std::size_t size = boost::asio::buffer_size(initial);
    preread_.resize(size);
    boost::asio::buffer_copy(boost::asio::buffer(preread_), initial);
    preread_offset_ = 0;
    return start<void(error_code, std::size_t)>(HandshakeStep{this, type, size},
                                                std::forward<Token>(token));
  }
  // Sends close_notify; does not wait for the peer's (the connection is closed next anyway).
  template <class Token>
  auto async_shutdown(Token&& token) {
    return start<void(error_code)>(ShutdownStep{this}, std::forward<Token>(token));
  }
  template <class MutableBufferSequence, class Token>
  auto async_read_some(const MutableBufferSequence& buffers, Token&& token) {
    boost::asio::mutable_buffer first;
    for (auto it = boost::asio::buffer_sequence_begin(buffers);
         it != boost::asio::buffer_sequence_end(buffers); ++it) {
      const boost::asio::mutable_buffer buffer = *it;
      if (buffer.size() > 0) {
        first = buffer;
        break;
      }
    }
    return start<void(error_code, std::size_t)>(ReadStep{this, first}, std::forward<Token>(token));
  }
  template <class ConstBufferSequence, class Token>
  auto async_write_some(const ConstBufferSequence& buffers, Token&& token) {
    WriteStep step{this};
    std::size_t total = 0;
    for (auto it = boost::asio::buffer_sequence_begin(buffers);
         it != boost::asio::buffer_sequence_end(buffers) && step.count < step.buffers.size() &&
         total < kWriteBytesPerOperation;
         ++it) {
      const boost::asio::const_buffer buffer = *it;
      if (buffer.size() == 0) continue;
      step.buffers[step.count++] = buffer;
      total += buffer.size();
    }
    return start<void(error_code, std::size_t)>(step, std::forward<Token>(token));
  }

  // The non-blocking steps behind the operations (public for the operation template only).
  Progress handshake_step(handshake_type type, error_code& ec);
  Progress read_step(boost::asio::mutable_buffer buffer, std::size_t& transferred, error_code& ec);
  Progress write_step(std::span<const boost::asio::const_buffer> buffers, std::size_t& transferred,
                      error_code& ec);
  Progress shutdown_step(error_code& ec);
  // Sends buffered ciphertext: done when none is left.
  Progress flush(error_code& ec);
  bool has_output() const noexcept { return output_end_ > output_begin_; }
  // True when a read would most likely find nothing: skip the attempt and wait for readiness.
  bool read_would_block() const noexcept;
  // For a connection about to idle: gives back every I/O buffer it holds (ours and OpenSSL's)
  // unless some output is still on its way.
  void release_buffers_while_idle();
  // True when a read would find input now: decrypted bytes OpenSSL holds, pre-read bytes, or
  // bytes in the socket. Unlike !read_would_block() it never guesses "yes": a relay that reads
  // on while this holds is never left waiting on a paused peer with data in hand.
  bool input_ready() noexcept;
  // The caller waited for the socket to become readable: the next read tries at once.
  void note_readable() noexcept { drained_ = false; }

  // Called by the BIO.
  int bio_read(char* out, std::size_t size, std::size_t* read);
  int bio_write(const char* data, std::size_t size, std::size_t* written);

 private:
  // One write takes at most this much plaintext (more waits for the next call).
  static constexpr std::size_t kWriteBytesPerOperation = 256 * 1024;
  // Ciphertext gathered before one send(): four full TLS records.
  static constexpr std::size_t kOutputCapacity = 4 * (16 * 1024 + 512);

  struct HandshakeStep {
    static constexpr bool kRead = false;
    TlsSocket* tls;
    handshake_type type;
    std::size_t initial = 0;
    std::size_t transferred() const { return initial; }
    Progress operator()(error_code& ec) { return tls->handshake_step(type, ec); }
  };
  struct ShutdownStep {
    static constexpr bool kRead = false;
    TlsSocket* tls;
    std::size_t transferred() const { return 0; }
    Progress operator()(error_code& ec) { return tls->shutdown_step(ec); }
  };
  struct ReadStep {
    static constexpr bool kRead = true;
    TlsSocket* tls;
    boost::asio::mutable_buffer buffer;
    std::size_t done = 0;
    bool waited = false;
    std::size_t transferred() const { return done; }
    Progress operator()(error_code& ec) {
      // An idle connection's read goes straight to waiting: the attempt would be a wasted
      // system call.
      if (!waited && tls->read_would_block()) return Progress::want_read;
      return tls->read_step(buffer, done, ec);
    }
  };
  struct WriteStep {
    static constexpr bool kRead = false;
    TlsSocket* tls;
    std::array<boost::asio::const_buffer, 16> buffers{};
    std::size_t count = 0;
    std::size_t done = 0;
    std::size_t transferred() const { return done; }
    Progress operator()(error_code& ec) {
      return tls->write_step(std::span(buffers.data(), count), done, ec);
    }
  };

  // Drives a step: attempt, flush what it produced, wait for readiness as it asks, repeat.
  template <class Signature, class Step>
  struct Operation {
    Step step;
    bool started = false;   // false until the first wait or post: completion must not be inline
    bool finished = false;  // the step is done; only output remains to flush
    error_code result;

    template <class Self>
    void operator()(Self& self, error_code wait_error = {}) {
      TlsSocket& tls = *step.tls;
      if (wait_error) {  // cancelled or the socket failed while we waited
        result = wait_error;
        finish(self);
        return;
      }
      for (;;) {
        Progress progress = Progress::done;
        if (!finished) {
          progress = step(result);
          if (progress == Progress::done) {
            finished = true;
          } else if (progress == Progress::want_write && !tls.has_output()) {
            finished = true;  // nothing to flush: OpenSSL asked for the impossible
            result = boost::asio::error::no_buffer_space;
          }
        }
        if (tls.has_output()) {
          // A read only helps the output along (a concurrent write owns it and waits for it);
          // it waits on it only when OpenSSL cannot go on otherwise.
          const bool must_flush = !Step::kRead || progress == Progress::want_write;
          error_code flush_error;
          const Progress flushed = tls.flush(flush_error);
          if (flush_error && must_flush) {
            if (!result) result = flush_error;
            finished = true;
          } else if (flushed == Progress::want_write && must_flush) {
            started = true;
            tls.socket_.async_wait(socket_type::wait_write, std::move(self));
            return;
          }
        }
        if (finished) break;
        if (progress == Progress::want_read) {
          started = true;
          if constexpr (Step::kRead) step.waited = true;
          tls.release_idle_buffers();
          tls.socket_.async_wait(socket_type::wait_read, std::move(self));
          return;
        }
      }
      if (!started) {
        started = true;
        boost::asio::post(std::move(self));
        return;
      }
      finish(self);
    }

    template <class Self>
    void finish(Self& self) {
      if constexpr (std::is_same_v<Signature, void(error_code)>) {
        self.complete(result);
      } else {
        self.complete(result, step.transferred());
      }
    }
  };

  template <class Signature, class Step, class Token>
  auto start(Step step, Token&& token) {
    return boost::asio::async_compose<Token, Signature>(
        Operation<Signature, Step>{step, false, false, error_code{}}, token, socket_);
  }

  void attach(boost::asio::ssl::context& context);
  void release_idle_buffers();
  void return_output_buffer();
  error_code error_from(int ssl_result, int ssl_error);

  socket_type socket_;
  SSL* ssl_ = nullptr;
  // Bytes read before the handshake began, fed to OpenSSL first.
  std::vector<unsigned char> preread_;
  std::size_t preread_offset_ = 0;
  // Ciphertext waiting to be sent; allocated while there is some.
  std::unique_ptr<char[]> output_;
  std::size_t output_begin_ = 0;
  std::size_t output_end_ = 0;
  // The last recv() found the socket empty (or returned less than asked).
  bool drained_ = false;
  // errno of the last failed socket call, for SSL_ERROR_SYSCALL.
  int socket_errno_ = 0;
  // A send failed: the connection cannot carry anything more, and every later write says so.
  error_code send_error_;
};

}  // namespace tokgate::proxy
