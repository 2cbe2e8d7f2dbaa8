#include "proxy/h2_connection.hpp"

#include <nghttp2/nghttp2.h>

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/write.hpp>

#include <algorithm>
#include <array>

namespace tokgate::proxy {

using namespace asio::experimental::awaitable_operators;

namespace {

constexpr std::size_t kReadChunk = 16 * 1024;
constexpr std::size_t kWriteBatch = 64 * 1024;

std::vector<nghttp2_nv> to_nv(const HeaderList& head) {
  std::vector<nghttp2_nv> nv;
  nv.reserve(head.size());
  for (const auto& field : head) {
    // nghttp2 copies names and values at submit time (no NO_COPY flags).
    nv.push_back({const_cast<uint8_t*>(reinterpret_cast<const uint8_t*>(field.name.data())),
                  const_cast<uint8_t*>(reinterpret_cast<const uint8_t*>(field.value.data())),
                  field.name.size(), field.value.size(), NGHTTP2_NV_FLAG_NONE});
  }
  return nv;
}

H2Stream* stream_of(nghttp2_session* session, int32_t stream_id) {
  return static_cast<H2Stream*>(nghttp2_session_get_stream_user_data(session, stream_id));
}

}  // namespace

// nghttp2's callbacks, with access to the connection's state.
struct H2Callbacks {
  static H2Connection& self(void* user_data) { return *static_cast<H2Connection*>(user_data); }

  static int begin_headers(nghttp2_session* session, const nghttp2_frame* frame, void* user_data) {
    auto& connection = self(user_data);
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    if (connection.role_ == H2Connection::Role::server &&
        frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
      auto stream = std::make_shared<H2Stream>(connection.io_.get_executor(),
                                               connection.settings_.stream_window);
      stream->id = frame->hd.stream_id;
      H2Stream* raw = stream.get();
      stream->body_in.on_consumed = [&connection, raw](std::size_t n) {
        nghttp2_session_consume(connection.session_, raw->id, n);
        connection.notify_write();
      };
      nghttp2_session_set_stream_user_data(session, stream->id, stream.get());
      connection.streams_.emplace(stream->id, std::move(stream));
    }
    return 0;
  }

  static int header(nghttp2_session* session, const nghttp2_frame* frame, const uint8_t* name,
                    size_t namelen, const uint8_t* value, size_t valuelen, uint8_t,
                    void* user_data) {
    auto& connection = self(user_data);
    H2Stream* stream = stream_of(session, frame->hd.stream_id);
    if (stream == nullptr) return 0;
    // nghttp2 bounds one field; we bound the list (SETTINGS_MAX_HEADER_LIST_SIZE is advisory)
    // and the count, which also caps what a CONTINUATION flood can make us hold.
    if (stream->head_rejected) return 0;  // over a limit already: decoded, not kept
    stream->head_bytes += namelen + valuelen + 32;
    auto& list = stream->head_complete ? stream->pending_trailers : stream->head;
    const bool pseudo = namelen > 0 && name[0] == ':';
    if (!pseudo) ++stream->head_fields;
    const bool too_large = stream->head_bytes > connection.settings_.max_header_list_bytes;
    const bool too_many = stream->head_fields > connection.settings_.max_header_fields;
    if (too_large || too_many) {
      if (connection.role_ == H2Connection::Role::server && !stream->head_complete) {
        // A request head: keep the stream, so the client gets a 431 that says why.
        stream->head_rejected =
            too_large ? LimitHit::request_header_size : LimitHit::request_header_fields;
        return 0;
      }
      if (connection.role_ == H2Connection::Role::server) {
        connection.count(too_large ? LimitHit::request_header_size
                                   : LimitHit::request_header_fields);  // request trailers
      }
      return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;  // resets this stream only
    }
    std::string_view field_name(reinterpret_cast<const char*>(name), namelen);
    std::string_view field_value(reinterpret_cast<const char*>(value), valuelen);
    if (!stream->head_complete && field_name == ":status" && field_value.starts_with('1')) {
      stream->interim = true;
    }
    list.push_back({std::string(field_name), std::string(field_value)});
    return 0;
  }

  static int frame_recv(nghttp2_session* session, const nghttp2_frame* frame, void* user_data) {
    auto& connection = self(user_data);
    connection.last_active_ = std::chrono::steady_clock::now();
    switch (frame->hd.type) {
      case NGHTTP2_GOAWAY:
        connection.going_away_ = true;
        return 0;
      case NGHTTP2_SETTINGS:
        if ((frame->hd.flags & NGHTTP2_FLAG_ACK) == 0 && !connection.remote_settings_received_) {
          connection.remote_settings_received_ = true;
          connection.settings_signal_.notify();
        }
        return 0;
      case NGHTTP2_RST_STREAM:
        if (connection.role_ == H2Connection::Role::server && !connection.take_reset_token()) {
          // Rapid reset: more resets than the budget allows. Stop reading at once (the reader
          // then sends GOAWAY ENHANCE_YOUR_CALM); nghttp2's own limiter, set looser, is only
          // the backstop and never sees this frame.
          connection.reset_flooded_ = true;
          connection.count(LimitHit::h2_rapid_reset);
          return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        return 0;
      case NGHTTP2_HEADERS:
      case NGHTTP2_DATA:
        break;
      default:
        return 0;
    }
    H2Stream* stream = stream_of(session, frame->hd.stream_id);
    if (stream == nullptr) return 0;
    const bool end_stream = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    bool new_request = false;
    if (frame->hd.type == NGHTTP2_HEADERS && !stream->head_complete) {
      if (stream->interim) {
        // 1xx: nothing a translated or multiplexed exchange passes on; the final head follows.
        stream->head.clear();
        stream->head_bytes = 0;
        stream->head_fields = 0;
        stream->interim = false;
        return 0;
      }
      stream->head_complete = true;
      stream->head_bytes = 0;
      stream->head_fields = 0;
      new_request = connection.role_ == H2Connection::Role::server;
      stream->event.notify();
    }
    if (end_stream) stream->body_in.finish(std::move(stream->pending_trailers));
    if (new_request && connection.on_request_) {
      auto found = connection.streams_.find(stream->id);
      if (found != connection.streams_.end()) connection.on_request_(found->second);
    }
    return 0;
  }

  // A frame nghttp2 refused. The one that concerns a limit: a request HEADERS past
  // SETTINGS_MAX_CONCURRENT_STREAMS (REFUSED_STREAM before our SETTINGS are acknowledged, a
  // connection error after).
  static int invalid_frame(nghttp2_session*, const nghttp2_frame* frame, int lib_error_code,
                           void* user_data) {
    auto& connection = self(user_data);
    if (connection.role_ != H2Connection::Role::server || frame->hd.type != NGHTTP2_HEADERS) {
      return 0;
    }
    if (lib_error_code == NGHTTP2_ERR_REFUSED_STREAM ||
        connection.streams_.size() >= connection.settings_.max_concurrent_streams) {
      connection.count(LimitHit::h2_streams);
      if (connection.end_reason_.empty() && lib_error_code != NGHTTP2_ERR_REFUSED_STREAM) {
        connection.end_reason_ = "too many concurrent streams";
      }
    }
    return 0;
  }

  static int data_chunk(nghttp2_session* session, uint8_t, int32_t stream_id, const uint8_t* data,
                        size_t len, void*) {
    H2Stream* stream = stream_of(session, stream_id);
    if (stream == nullptr) {
      nghttp2_session_consume(session, stream_id, len);
      return 0;
    }
    // The window comes back when the other leg takes these bytes (BodyPipe::on_consumed).
    stream->body_in.push({data, len});
    stream->event.notify();
    return 0;
  }

  static int stream_close(nghttp2_session* session, int32_t stream_id, uint32_t error_code,
                          void* user_data) {
    auto& connection = self(user_data);
    H2Stream* stream = stream_of(session, stream_id);
    if (stream == nullptr) return 0;
    nghttp2_session_set_stream_user_data(session, stream_id, nullptr);
    connection.forget(*stream, error_code);
    return 0;
  }

  static ssize_t read_body(nghttp2_session* session, int32_t stream_id, uint8_t* buf, size_t length,
                           uint32_t* data_flags, nghttp2_data_source* source, void*) {
    auto* stream = static_cast<H2Stream*>(source->ptr);
    BodyPipe* pipe = stream->body_out;
    if (pipe == nullptr || pipe->aborted()) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    const std::size_t n = pipe->read({buf, length});
    if (pipe->drained()) {
      *data_flags |= NGHTTP2_DATA_FLAG_EOF;
      if (!pipe->trailers().empty()) {
        auto nv = to_nv(pipe->trailers());
        if (nghttp2_submit_trailer(session, stream_id, nv.data(), nv.size()) == 0) {
          *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        }
      }
      return static_cast<ssize_t>(n);
    }
    if (n == 0) return NGHTTP2_ERR_DEFERRED;
    return static_cast<ssize_t>(n);
  }
};

H2Connection::H2Connection(TlsStream& io, Role role, const Settings& settings,
                           RequestHandler on_request)
    : io_(io),
      role_(role),
      settings_(settings),
      on_request_(std::move(on_request)),
      write_signal_(io.get_executor()),
      settings_signal_(io.get_executor()),
      last_active_(std::chrono::steady_clock::now()),
      reset_tokens_(settings.reset_burst),
      reset_refilled_(std::chrono::steady_clock::now()) {
  nghttp2_session_callbacks* callbacks = nullptr;
  nghttp2_session_callbacks_new(&callbacks);
  nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, H2Callbacks::begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(callbacks, H2Callbacks::header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, H2Callbacks::frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, H2Callbacks::data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, H2Callbacks::stream_close);
  nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(callbacks,
                                                               H2Callbacks::invalid_frame);
  nghttp2_option* option = nullptr;
  nghttp2_option_new(&option);
  nghttp2_option_set_no_auto_window_update(option, 1);
  nghttp2_option_set_max_send_header_block_length(option, 256 * 1024);
  // SETTINGS/PING floods end the connection.
  nghttp2_option_set_max_outbound_ack(option, settings_.max_pending_acks);
  nghttp2_option_set_max_settings(option, 32);
  // CVE-2023-44487 (rapid reset): our own bucket (take_reset_token) ends the connection first
  // and counts it; nghttp2's, twice as loose, is only a backstop.
  nghttp2_option_set_stream_reset_rate_limit(option, uint64_t{settings_.reset_burst} * 2,
                                             uint64_t{settings_.reset_rate} * 2);
  // CVE-2024-27316 (CONTINUATION flood): CONTINUATION frames per header block.
  nghttp2_option_set_max_continuations(option, settings_.max_continuations);
  if (role == Role::client) nghttp2_option_set_peer_max_concurrent_streams(option, 100);
  if (role == Role::server) {
    nghttp2_session_server_new2(&session_, callbacks, this, option);
  } else {
    nghttp2_session_client_new2(&session_, callbacks, this, option);
  }
  nghttp2_option_del(option);
  nghttp2_session_callbacks_del(callbacks);

  std::vector<nghttp2_settings_entry> entries{
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, settings_.max_concurrent_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, settings_.stream_window},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, settings_.max_header_list_bytes},
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
  };
  if (role == Role::server) {
    entries.pop_back();  // ENABLE_PUSH is the client's to send
    if (settings_.enable_connect_protocol) {
      entries.push_back({NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, 1});
    }
  }
  nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, entries.data(), entries.size());
  if (settings_.connection_window > NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE) {
    nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0,
                                          static_cast<int32_t>(settings_.connection_window));
  }
}

H2Connection::~H2Connection() {
  end("closed");
  *self_ = nullptr;  // pipes that outlive us stop giving window back
  nghttp2_session_del(session_);
}

void H2Connection::forget(H2Stream& stream, uint32_t error_code) {
  stream.closed = true;
  stream.error_code = error_code;
  if (!stream.body_in.finished()) {
    if (error_code == NGHTTP2_NO_ERROR && stream.head_complete) {
      stream.body_in.finish();
    } else {
      stream.body_in.abort();
    }
  }
  // Bytes of a closed stream still in its pipe are taken later (a small response is usually
  // whole, and its stream closed, before the other leg reads it): the connection's window must
  // get them back then, or a long-lived connection stalls once a window's worth has leaked.
  // The pipe may outlive this connection (the exchange holds the stream): hence the weak link.
  std::weak_ptr<H2Connection*> alive = self_;
  stream.body_in.on_consumed = [alive](std::size_t n) {
    auto self = alive.lock();
    if (!self || *self == nullptr) return;
    nghttp2_session_consume_connection((*self)->session_, n);
    (*self)->notify_write();
  };
  if (stream.body_out != nullptr) {
    stream.body_out->on_data = nullptr;
    stream.body_out = nullptr;
  }
  stream.event.notify();
  streams_.erase(stream.id);
}

void H2Connection::end(std::string_view reason) {
  if (ended_) return;
  ended_ = true;
  if (end_reason_.empty()) end_reason_ = reason;
  // Copy first: forget() erases from the map.
  std::vector<std::shared_ptr<H2Stream>> open;
  for (auto& [id, stream] : streams_) open.push_back(stream);
  for (auto& stream : open) {
    nghttp2_session_set_stream_user_data(session_, stream->id, nullptr);
    forget(*stream, kH2Cancel);
  }
  notify_write();
  settings_signal_.notify();
}

awaitable<void> H2Connection::run() {
  co_await (reader() || writer() || idle_watch());
  end(end_reason_.empty() ? std::string_view("closed") : std::string_view(end_reason_));
}

awaitable<void> H2Connection::reader() {
  std::array<uint8_t, kReadChunk> buffer;
  while (!ended_) {
    auto [ec, n] = co_await io_.async_read_some(asio::buffer(buffer), use_nothrow);
    if (ec) {
      // The writer may have failed first (and the reader then been cancelled): its reason stands.
      if (end_reason_.empty()) {
        end_reason_ = ec == asio::error::eof || ec == asio::ssl::error::stream_truncated
                          ? "peer closed"
                          : ec.message();
      }
      break;
    }
    last_active_ = std::chrono::steady_clock::now();
    const auto consumed = nghttp2_session_mem_recv(session_, buffer.data(), n);
    if (consumed < 0) {
      end_reason_ = reset_flooded_ ? std::string("rapid reset")
                                   : std::string(nghttp2_strerror(static_cast<int>(consumed)));
      // Floods come back as errors with no GOAWAY queued: queue one (a no-op if nghttp2 already
      // did), let the writer send it and end the connection, and stop waiting after a moment
      // regardless (a peer that does not read must not hold the connection open).
      const bool flood = consumed == NGHTTP2_ERR_FLOODED ||
                         consumed == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS || reset_flooded_;
      if (consumed == NGHTTP2_ERR_FLOODED) count(LimitHit::h2_control_flood);
      if (consumed == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS) count(LimitHit::h2_continuations);
      nghttp2_session_terminate_session(session_,
                                        flood ? NGHTTP2_ENHANCE_YOUR_CALM : NGHTTP2_PROTOCOL_ERROR);
      notify_write();
      asio::steady_timer grace(io_.get_executor(), std::chrono::seconds(1));
      co_await grace.async_wait(use_nothrow);
      break;
    }
    notify_write();
  }
  // Every open stream learns now, not when the writer notices: their exchanges are waiting.
  end("closed");
}

awaitable<void> H2Connection::writer() {
  for (;;) {
    for (;;) {
      out_.clear();
      while (out_.size() < kWriteBatch) {
        const uint8_t* data = nullptr;
        const auto n = nghttp2_session_mem_send(session_, &data);
        if (n < 0) {
          end_reason_ = nghttp2_strerror(static_cast<int>(n));
          co_return;
        }
        if (n == 0) break;
        out_.insert(out_.end(), data, data + n);
      }
      if (out_.empty()) break;
      auto [ec, written] = co_await asio::async_write(io_, asio::buffer(out_), use_nothrow);
      if (ec) {
        if (end_reason_.empty()) end_reason_ = ec.message();
        co_return;
      }
    }
    if (ended_) co_return;
    if (nghttp2_session_want_read(session_) == 0 && nghttp2_session_want_write(session_) == 0) {
      if (end_reason_.empty()) end_reason_ = going_away_ ? "goaway" : "done";
      co_return;
    }
    if (!co_await write_signal_.wait()) co_return;
    // Let the handlers that are ready now (other streams of the same batch) queue their frames
    // first: one send then carries them all instead of one send per stream.
    co_await asio::post(io_.get_executor(), use_nothrow);
  }
}

awaitable<void> H2Connection::idle_watch() {
  asio::steady_timer timer(io_.get_executor());
  for (;;) {
    timer.expires_at(last_active_ + settings_.idle);
    auto [ec] = co_await timer.async_wait(use_nothrow);
    if (ec) co_return;  // cancelled: the connection ended another way
    if (streams_.empty() && std::chrono::steady_clock::now() - last_active_ >= settings_.idle) {
      if (end_reason_.empty()) end_reason_ = "idle";
      count(LimitHit::idle_timeout);
      nghttp2_session_terminate_session(session_, NGHTTP2_NO_ERROR);
      notify_write();
      last_active_ = std::chrono::steady_clock::now();
      // The writer ends once the GOAWAY is out; give it a moment, then stop regardless.
      timer.expires_after(std::chrono::seconds(2));
      co_await timer.async_wait(use_nothrow);
      co_return;
    }
    if (!streams_.empty()) last_active_ = std::chrono::steady_clock::now();
  }
}

bool H2Connection::take_reset_token() {
  const auto now = std::chrono::steady_clock::now();
  const double elapsed = std::chrono::duration<double>(now - reset_refilled_).count();
  reset_refilled_ = now;
  reset_tokens_ =
      std::min<double>(settings_.reset_burst, reset_tokens_ + elapsed * settings_.reset_rate);
  if (reset_tokens_ < 1) return false;
  reset_tokens_ -= 1;
  return true;
}

void H2Connection::attach_source(H2Stream& stream, BodyPipe* body) {
  stream.body_out = body;
  if (body == nullptr) return;
  const int32_t id = stream.id;
  body->on_data = [this, id] {
    nghttp2_session_resume_data(session_, id);
    notify_write();
  };
}

std::expected<std::shared_ptr<H2Stream>, std::string> H2Connection::submit_request(
    const HeaderList& head, BodyPipe* body) {
  if (!usable()) return std::unexpected(std::string("the origin's HTTP/2 connection is closing"));
  auto stream = std::make_shared<H2Stream>(io_.get_executor(), settings_.stream_window);
  auto nv = to_nv(head);
  nghttp2_data_provider provider{};
  provider.source.ptr = stream.get();
  provider.read_callback = H2Callbacks::read_body;
  const int32_t id = nghttp2_submit_request(session_, nullptr, nv.data(), nv.size(),
                                            body != nullptr ? &provider : nullptr, stream.get());
  if (id < 0) return std::unexpected(std::string(nghttp2_strerror(id)));
  stream->id = id;
  streams_.emplace(id, stream);
  attach_source(*stream, body);
  H2Stream* raw = stream.get();
  stream->body_in.on_consumed = [this, raw](std::size_t n) {
    nghttp2_session_consume(session_, raw->id, n);
    notify_write();
  };
  notify_write();
  return stream;
}

bool H2Connection::submit_response(H2Stream& stream, const HeaderList& head, BodyPipe* body) {
  if (ended_ || stream.closed) return false;
  auto nv = to_nv(head);
  nghttp2_data_provider provider{};
  provider.source.ptr = &stream;
  provider.read_callback = H2Callbacks::read_body;
  const int rv = nghttp2_submit_response(session_, stream.id, nv.data(), nv.size(),
                                         body != nullptr ? &provider : nullptr);
  if (rv != 0) return false;
  attach_source(stream, body);
  notify_write();
  return true;
}

void H2Connection::reset_stream(H2Stream& stream, uint32_t error_code) {
  if (ended_ || stream.closed) return;
  nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, stream.id, error_code);
  notify_write();
}

void H2Connection::release(H2Stream& stream) {
  if (stream.body_out != nullptr) {
    stream.body_out->on_data = nullptr;
    stream.body_out = nullptr;
  }
  if (!stream.closed) {
    // A source that is gone must not be read again: end the stream if it is still open.
    reset_stream(stream, kH2Cancel);
  }
}

void H2Connection::shutdown_gracefully() {
  if (ended_ || going_away_) return;
  going_away_ = true;
  if (role_ == Role::server) {
    nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE,
                          nghttp2_session_get_last_proc_stream_id(session_), NGHTTP2_NO_ERROR,
                          nullptr, 0);
  } else {
    nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, nullptr, 0);
  }
  notify_write();
}

void H2Connection::close() {
  end_reason_ = end_reason_.empty() ? "closed" : end_reason_;
  end("closed");
  error_code ignored;
  io_.next_layer().cancel(ignored);
}

awaitable<bool> H2Connection::wait_remote_settings() {
  // (The await is not inside a condition: GCC 12 miscompiles that in this coroutine.)
  while (!remote_settings_received_ && !ended_) {
    const bool woken = co_await settings_signal_.wait();
    if (!woken) co_return false;
  }
  const bool settled = remote_settings_received_ && !ended_;
  co_return settled;
}

bool H2Connection::remote_allows_extended_connect() const {
  return nghttp2_session_get_remote_settings(session_, NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL) ==
         1;
}

}  // namespace tokgate::proxy
