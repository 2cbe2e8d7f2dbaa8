#include "proxy/tls_socket.hpp"

#include <openssl/err.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace tokgate::proxy {

namespace asio = boost::asio;

namespace {

TlsSocket& owner(BIO* bio) {
  return *static_cast<TlsSocket*>(BIO_get_data(bio));
}

int bio_read_ex(BIO* bio, char* out, std::size_t size, std::size_t* read) {
  BIO_clear_retry_flags(bio);
  return owner(bio).bio_read(out, size, read);
}

int bio_write_ex(BIO* bio, const char* data, std::size_t size, std::size_t* written) {
  BIO_clear_retry_flags(bio);
  return owner(bio).bio_write(data, size, written);
}

long bio_ctrl(BIO*, int command, long, void*) {
  // OpenSSL flushes after a handshake flight; the socket's operation sends what is buffered.
  return command == BIO_CTRL_FLUSH ? 1 : 0;
}

int bio_create(BIO* bio) {
  BIO_set_init(bio, 1);
  return 1;
}

BIO_METHOD* socket_bio_method() {
  static BIO_METHOD* const method = [] {
    BIO_METHOD* made = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "tokgate socket");
    if (made == nullptr || BIO_meth_set_read_ex(made, bio_read_ex) != 1 ||
        BIO_meth_set_write_ex(made, bio_write_ex) != 1 || BIO_meth_set_ctrl(made, bio_ctrl) != 1 ||
        BIO_meth_set_create(made, bio_create) != 1) {
      throw std::runtime_error("cannot create the OpenSSL socket BIO method");
    }
    return made;
  }();
  return method;
}

}  // namespace

TlsSocket::TlsSocket(socket_type socket, asio::ssl::context& context) : socket_(std::move(socket)) {
  attach(context);
}

TlsSocket::TlsSocket(const executor_type& executor, asio::ssl::context& context)
    : socket_(executor) {
  attach(context);
}

TlsSocket::~TlsSocket() {
  SSL_free(ssl_);
}

void TlsSocket::attach(asio::ssl::context& context) {
  ssl_ = SSL_new(context.native_handle());
  BIO* bio = ssl_ != nullptr ? BIO_new(socket_bio_method()) : nullptr;
  if (bio == nullptr) {
    SSL_free(ssl_);
    throw std::runtime_error("cannot create a TLS connection (out of memory)");
  }
  BIO_set_data(bio, this);
  SSL_set_bio(ssl_, bio, bio);
  // Whole socket reads (one recv for several records) and buffers released while idle.
  SSL_set_read_ahead(ssl_, 1);
  SSL_set_mode(ssl_, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                         SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
}

// --- the BIO: the socket, with the pre-read bytes first and sends gathered -----------------------

namespace {
// Output buffers are lent by the worker thread to the connection writing, and come back once
// flushed: a busy connection does not pay a 66 KiB malloc/free per write, an idle one holds none.
constexpr std::size_t kPooledOutputBuffers = 16;
thread_local std::vector<std::unique_ptr<char[]>> output_pool;
}  // namespace

void TlsSocket::return_output_buffer() {
  output_begin_ = output_end_ = 0;
  if (!output_) return;
  if (output_pool.size() < kPooledOutputBuffers) {
    output_pool.push_back(std::move(output_));
  } else {
    output_.reset();
  }
}

int TlsSocket::bio_read(char* out, std::size_t size, std::size_t* read) {
  BIO* bio = SSL_get_rbio(ssl_);
  if (preread_offset_ < preread_.size()) {
    const std::size_t n = std::min(size, preread_.size() - preread_offset_);
    std::memcpy(out, preread_.data() + preread_offset_, n);
    preread_offset_ += n;
    if (preread_offset_ == preread_.size()) {
      preread_.clear();
      preread_.shrink_to_fit();
      preread_offset_ = 0;
    }
    *read = n;
    return 1;
  }
  if (!socket_.is_open()) {
    socket_errno_ = EBADF;
    return 0;
  }
  for (;;) {
    const ssize_t n = ::recv(socket_.native_handle(), out, size, 0);
    if (n > 0) {
      drained_ = static_cast<std::size_t>(n) < size;
      *read = static_cast<std::size_t>(n);
      return 1;
    }
    if (n == 0) return 0;  // end of stream: OpenSSL decides whether that was clean
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      drained_ = true;
      BIO_set_retry_read(bio);
      return 0;
    }
    socket_errno_ = errno;
    return 0;
  }
}

int TlsSocket::bio_write(const char* data, std::size_t size, std::size_t* written) {
  if (send_error_) {
    socket_errno_ = send_error_.value();
    return 0;
  }
  if (!output_) {
    if (!output_pool.empty()) {
      output_ = std::move(output_pool.back());
      output_pool.pop_back();
    } else {
      output_ = std::make_unique_for_overwrite<char[]>(kOutputCapacity);
    }
    output_begin_ = output_end_ = 0;
  }
  if (output_begin_ > 0 && output_begin_ == output_end_) output_begin_ = output_end_ = 0;
  const std::size_t room = kOutputCapacity - output_end_;
  if (room == 0) {
    BIO_set_retry_write(SSL_get_wbio(ssl_));
    return 0;
  }
  const std::size_t n = std::min(size, room);
  std::memcpy(output_.get() + output_end_, data, n);
  output_end_ += n;
  *written = n;
  return 1;
}

TlsSocket::Progress TlsSocket::flush(error_code& ec) {
  if (send_error_) {
    ec = send_error_;
    return Progress::done;
  }
  while (output_end_ > output_begin_) {
    const ssize_t n = ::send(socket_.native_handle(), output_.get() + output_begin_,
                             output_end_ - output_begin_, MSG_NOSIGNAL);
    if (n >= 0) {
      output_begin_ += static_cast<std::size_t>(n);
      continue;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Progress::want_write;
    send_error_.assign(errno, boost::system::system_category());
    ec = send_error_;
    break;  // the connection is broken; what was left is lost
  }
  return_output_buffer();
  return Progress::done;
}

bool TlsSocket::read_would_block() const noexcept {
  return drained_ && preread_offset_ >= preread_.size() && SSL_has_pending(ssl_) == 0;
}

bool TlsSocket::input_ready() noexcept {
  if (preread_offset_ < preread_.size() || SSL_pending(ssl_) > 0) return true;
  // The last recv() found the socket empty: what arrived since waits for the next round (the
  // safe answer). Otherwise ask the kernel: a full recv() does not mean more is there.
  if (drained_ || !socket_.is_open()) return false;
  int queued = 0;
  if (::ioctl(socket_.native_handle(), FIONREAD, &queued) != 0) return false;
  if (queued > 0) return true;
  drained_ = true;
  return false;
}

void TlsSocket::release_buffers_while_idle() {
  if (has_output()) return;
  return_output_buffer();
  // OpenSSL keeps a read buffer (~17 KiB) after the last record on some paths even with
  // SSL_MODE_RELEASE_BUFFERS; this fails harmlessly (keeps it) if unread bytes are in it.
  SSL_free_buffers(ssl_);
}

void TlsSocket::release_idle_buffers() {
  if (!has_output()) return_output_buffer();
}

// --- the steps --------------------------------------------------------------------------------

// Asio's conventions, so callers (and their error messages) do not change: a clean close is
// asio::error::eof, a close without close_notify is ssl::error::stream_truncated, OpenSSL's
// errors keep their packed code in the SSL category.
TlsSocket::error_code TlsSocket::error_from(int ssl_result, int ssl_error) {
  error_code ec;
  switch (ssl_error) {
    case SSL_ERROR_ZERO_RETURN:
      ec = asio::error::eof;
      break;
    case SSL_ERROR_SYSCALL:
      if (socket_errno_ != 0) {
        ec.assign(socket_errno_, boost::system::system_category());
      } else {
        ec = ssl_result == 0 ? error_code(asio::ssl::error::stream_truncated)
                             : error_code(asio::error::connection_reset);
      }
      break;
    default: {
      const unsigned long code = ERR_peek_error();
      if (ERR_GET_REASON(code) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
        ec = asio::ssl::error::stream_truncated;
      } else if (code != 0) {
        ec.assign(static_cast<int>(code), asio::error::get_ssl_category());
      } else {
        ec = asio::ssl::error::unspecified_system_error;
      }
    }
  }
  ERR_clear_error();
  return ec;
}

TlsSocket::Progress TlsSocket::handshake_step(handshake_type type, error_code& ec) {
  if (!socket_.non_blocking()) {
    socket_.non_blocking(true, ec);
    if (ec) return Progress::done;
  }
  if (SSL_in_before(ssl_) != 0 && SSL_is_init_finished(ssl_) == 0) {
    if (type == asio::ssl::stream_base::client) {
      SSL_set_connect_state(ssl_);
    } else {
      SSL_set_accept_state(ssl_);
    }
  }
  ERR_clear_error();
  socket_errno_ = 0;
  const int result = SSL_do_handshake(ssl_);
  if (result == 1) return Progress::done;
  const int error = SSL_get_error(ssl_, result);
  if (error == SSL_ERROR_WANT_READ) return Progress::want_read;
  if (error == SSL_ERROR_WANT_WRITE) return Progress::want_write;
  ec = error_from(result, error);
  return Progress::done;
}

TlsSocket::Progress TlsSocket::read_step(asio::mutable_buffer buffer, std::size_t& transferred,
                                         error_code& ec) {
  if (buffer.size() == 0) return Progress::done;
  ERR_clear_error();
  socket_errno_ = 0;
  std::size_t n = 0;
  const int result = SSL_read_ex(ssl_, buffer.data(), buffer.size(), &n);
  if (result == 1) {
    transferred = n;
    return Progress::done;
  }
  const int error = SSL_get_error(ssl_, result);
  if (error == SSL_ERROR_WANT_READ) return Progress::want_read;
  if (error == SSL_ERROR_WANT_WRITE) return Progress::want_write;
  ec = error_from(result, error);
  return Progress::done;
}

namespace {
// Small pieces of a write (the lines of a head, a chunk's size line) are gathered into one record:
// a record per piece would cost a seal and 22 bytes each (a head of eight fields was eight
// records). One record's worth, per worker thread.
constexpr std::size_t kGatherLimit = 16 * 1024;
thread_local std::unique_ptr<char[]> gather_buffer;

// Copies the bytes of `buffers` after `skip` into `out`, up to `limit`; returns how many.
std::size_t gather(std::span<const asio::const_buffer> buffers, std::size_t skip, char* out,
                   std::size_t limit) {
  std::size_t size = 0;
  for (const auto& buffer : buffers) {
    if (size == limit) break;
    if (skip >= buffer.size()) {
      skip -= buffer.size();
      continue;
    }
    const std::size_t n = std::min(buffer.size() - skip, limit - size);
    std::memcpy(out + size, static_cast<const char*>(buffer.data()) + skip, n);
    size += n;
    skip = 0;
  }
  return size;
}
}  // namespace

TlsSocket::Progress TlsSocket::write_step(std::span<const asio::const_buffer> buffers,
                                          std::size_t& transferred, error_code& ec) {
  // Resumes after `transferred` bytes: all buffers are written, as long as the BIO takes them.
  // A retry after WANT_WRITE passes the same bytes again (gathering is deterministic), which is
  // what OpenSSL asks of a retried SSL_write (the address may move: ACCEPT_MOVING_WRITE_BUFFER).
  for (;;) {
    // The piece where the write resumes, and whether more follow it.
    std::size_t skip = transferred;
    std::size_t index = 0;
    while (index < buffers.size() && skip >= buffers[index].size()) {
      skip -= buffers[index].size();
      ++index;
    }
    if (index == buffers.size()) return Progress::done;
    const char* data = static_cast<const char*>(buffers[index].data()) + skip;
    std::size_t left = buffers[index].size() - skip;
    if (left < kGatherLimit && index + 1 < buffers.size()) {
      if (!gather_buffer) gather_buffer = std::make_unique_for_overwrite<char[]>(kGatherLimit);
      left = gather(buffers, transferred, gather_buffer.get(), kGatherLimit);
      data = gather_buffer.get();
    }
    ERR_clear_error();
    socket_errno_ = 0;
    std::size_t n = 0;
    const int result = SSL_write_ex(ssl_, data, left, &n);
    if (result == 1) {
      transferred += n;
      continue;
    }
    const int error = SSL_get_error(ssl_, result);
    if (error == SSL_ERROR_WANT_WRITE) return Progress::want_write;
    if (error == SSL_ERROR_WANT_READ) return Progress::want_read;
    ec = error_from(result, error);
    return Progress::done;
  }
}

TlsSocket::Progress TlsSocket::shutdown_step(error_code& ec) {
  if (!socket_.is_open()) return Progress::done;
  ERR_clear_error();
  socket_errno_ = 0;
  const int result = SSL_shutdown(ssl_);
  if (result >= 0) return Progress::done;  // close_notify sent (0: the peer's not awaited)
  const int error = SSL_get_error(ssl_, result);
  if (error == SSL_ERROR_WANT_WRITE) return Progress::want_write;
  if (error == SSL_ERROR_WANT_READ) return Progress::done;
  ec = error_from(result, error);
  return Progress::done;
}

}  // namespace tokgate::proxy
