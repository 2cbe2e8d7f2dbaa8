#include "proxy/content_decoding.hpp"

#include <brotli/decode.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <array>
#include <memory>
#include <vector>

namespace tokgate::proxy {
namespace {

// Output is produced this many bytes at a time; input is fed to zlib at most this many at a time
// (z_stream counts in 32-bit uInt).
constexpr std::size_t kChunkBytes = 16 * 1024;

// RFC 9659: a "zstd" content coding never needs a window above 8 MiB, so a frame asking for more
// is refused instead of letting it allocate up to libzstd's default 128 MiB.
constexpr int kZstdWindowLogMax = 23;

enum class Coding : uint8_t { identity, gzip, deflate, brotli, zstd };

std::string_view coding_name(Coding coding) {
  switch (coding) {
    case Coding::identity:
      return "identity";
    case Coding::gzip:
      return "gzip";
    case Coding::deflate:
      return "deflate";
    case Coding::brotli:
      return "br";
    case Coding::zstd:
      return "zstd";
  }
  return "?";
}

bool iequals(std::string_view a, std::string_view b) {
  return std::ranges::equal(a, b, [](char x, char y) {
    auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; };
    return lower(x) == lower(y);
  });
}

std::string_view trim_ows(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
  return text;
}

// The codings in the order they were applied; empty list elements are skipped (RFC 9110 5.6.1).
std::expected<std::vector<Coding>, std::string> parse_codings(std::string_view field) {
  std::vector<Coding> codings;
  while (true) {
    const auto comma = field.find(',');
    const auto name = trim_ows(field.substr(0, comma));
    if (!name.empty()) {
      if (codings.size() == kMaxContentCodings) return std::unexpected("too many content codings");
      if (iequals(name, "identity")) {
        codings.push_back(Coding::identity);
      } else if (iequals(name, "gzip") || iequals(name, "x-gzip")) {
        codings.push_back(Coding::gzip);
      } else if (iequals(name, "deflate")) {
        codings.push_back(Coding::deflate);
      } else if (iequals(name, "br")) {
        codings.push_back(Coding::brotli);
      } else if (iequals(name, "zstd")) {
        codings.push_back(Coding::zstd);
      } else {
        // Bounded: a hostile header must not turn into a huge error message.
        constexpr std::size_t kMaxNameInError = 64;
        return std::unexpected("unsupported content coding \"" +
                               std::string(name.substr(0, kMaxNameInError)) + "\"");
      }
    }
    if (comma == std::string_view::npos) break;
    field.remove_prefix(comma + 1);
  }
  return codings;
}

std::string too_large(std::size_t max_output) {
  return "decoded body exceeds " + std::to_string(max_output) + " bytes";
}

// Appends one decoded chunk, refusing to pass the cap.
bool append_capped(std::string& out, const unsigned char* data, std::size_t size,
                   std::size_t max_output) {
  if (size > max_output - out.size()) return false;
  out.append(reinterpret_cast<const char*>(data), size);
  return true;
}

bool has_zlib_header(std::string_view body) {
  if (body.size() < 2) return false;
  const auto cmf = static_cast<unsigned char>(body[0]);
  const auto flg = static_cast<unsigned char>(body[1]);
  return (cmf & 0x0f) == Z_DEFLATED && (cmf >> 4) <= 7 && ((cmf << 8) | flg) % 31 == 0;
}

bool starts_gzip_member(const unsigned char* data, std::size_t size) {
  return size >= 2 && data[0] == 0x1f && data[1] == 0x8b;
}

// gzip (window_bits 16 + 15), zlib-wrapped deflate (15) or raw deflate (-15).
std::expected<std::string, std::string> inflate_body(Coding coding, int window_bits,
                                                     std::string_view body, std::size_t max_output,
                                                     BodyExtent extent) {
  z_stream stream{};
  if (inflateInit2(&stream, window_bits) != Z_OK) return std::unexpected("zlib: out of memory");
  const std::unique_ptr<z_stream, decltype(&inflateEnd)> guard(&stream, &inflateEnd);

  const auto* input = reinterpret_cast<const unsigned char*>(body.data());
  std::size_t fed = 0;  // bytes of `body` handed to zlib so far
  std::string out;
  std::array<unsigned char, kChunkBytes> chunk;
  const auto name = std::string(coding_name(coding));
  while (true) {
    if (stream.avail_in == 0 && fed < body.size()) {
      const auto size = std::min(kChunkBytes, body.size() - fed);
      stream.next_in = const_cast<unsigned char*>(input + fed);  // zlib never writes input
      stream.avail_in = static_cast<uInt>(size);
      fed += size;
    }
    stream.next_out = chunk.data();
    stream.avail_out = static_cast<uInt>(chunk.size());
    const int rc = inflate(&stream, Z_NO_FLUSH);
    if (!append_capped(out, chunk.data(), chunk.size() - stream.avail_out, max_output)) {
      return std::unexpected(too_large(max_output));
    }
    const std::size_t unread = stream.avail_in + (body.size() - fed);
    if (rc == Z_STREAM_END) {
      if (unread == 0) return out;
      // RFC 1952 allows several gzip members back to back; anything else is garbage.
      const auto* rest = input + body.size() - unread;
      if (coding == Coding::gzip && starts_gzip_member(rest, unread)) {
        if (inflateReset(&stream) != Z_OK) return std::unexpected("zlib: reset failed");
        continue;
      }
      return std::unexpected("trailing data after " + name + " stream");
    }
    if (rc == Z_BUF_ERROR || (rc == Z_OK && unread == 0 && stream.avail_out != 0)) {
      // No progress without more input.
      if (unread != 0) continue;
      if (extent == BodyExtent::prefix) return out;
      return std::unexpected("truncated " + name + " stream");
    }
    if (rc == Z_NEED_DICT) return std::unexpected("corrupt " + name + " data: needs a dictionary");
    if (rc == Z_MEM_ERROR) return std::unexpected("zlib: out of memory");
    if (rc != Z_OK) {
      return std::unexpected("corrupt " + name +
                             " data: " + (stream.msg != nullptr ? stream.msg : "inflate failed"));
    }
  }
}

std::expected<std::string, std::string> decode_brotli(std::string_view body, std::size_t max_output,
                                                      BodyExtent extent) {
  const std::unique_ptr<BrotliDecoderState, decltype(&BrotliDecoderDestroyInstance)> state(
      BrotliDecoderCreateInstance(nullptr, nullptr, nullptr), &BrotliDecoderDestroyInstance);
  if (!state) return std::unexpected("brotli: out of memory");

  const auto* next_in = reinterpret_cast<const uint8_t*>(body.data());
  std::size_t available_in = body.size();
  std::string out;
  std::array<uint8_t, kChunkBytes> chunk;
  while (true) {
    uint8_t* next_out = chunk.data();
    std::size_t available_out = chunk.size();
    const auto result = BrotliDecoderDecompressStream(state.get(), &available_in, &next_in,
                                                      &available_out, &next_out, nullptr);
    if (!append_capped(out, chunk.data(), chunk.size() - available_out, max_output)) {
      return std::unexpected(too_large(max_output));
    }
    switch (result) {
      case BROTLI_DECODER_RESULT_SUCCESS:
        if (available_in != 0) return std::unexpected("trailing data after br stream");
        return out;
      case BROTLI_DECODER_RESULT_NEEDS_MORE_OUTPUT:
        break;
      case BROTLI_DECODER_RESULT_NEEDS_MORE_INPUT:
        if (extent == BodyExtent::prefix) return out;
        return std::unexpected("truncated br stream");
      case BROTLI_DECODER_RESULT_ERROR:
        return std::unexpected(std::string("corrupt br data: ") +
                               BrotliDecoderErrorString(BrotliDecoderGetErrorCode(state.get())));
    }
  }
}

std::expected<std::string, std::string> decode_zstd(std::string_view body, std::size_t max_output,
                                                    BodyExtent extent) {
  const std::unique_ptr<ZSTD_DCtx, decltype(&ZSTD_freeDCtx)> context(ZSTD_createDCtx(),
                                                                     &ZSTD_freeDCtx);
  if (!context) return std::unexpected("zstd: out of memory");
  if (ZSTD_isError(ZSTD_DCtx_setParameter(context.get(), ZSTD_d_windowLogMax, kZstdWindowLogMax))) {
    return std::unexpected("zstd: cannot limit the window size");
  }

  ZSTD_inBuffer input{body.data(), body.size(), 0};
  std::string out;
  std::array<unsigned char, kChunkBytes> chunk;
  while (true) {
    ZSTD_outBuffer output{chunk.data(), chunk.size(), 0};
    const std::size_t rc = ZSTD_decompressStream(context.get(), &output, &input);
    if (ZSTD_isError(rc)) {
      return std::unexpected(std::string("corrupt zstd data: ") + ZSTD_getErrorName(rc));
    }
    if (!append_capped(out, chunk.data(), output.pos, max_output)) {
      return std::unexpected(too_large(max_output));
    }
    const bool input_done = input.pos == input.size;
    // rc == 0: a frame ended; more input would be a further frame (RFC 8878 allows several).
    if (rc == 0 && input_done) return out;
    if (rc != 0 && input_done && output.pos < output.size) {
      // The decoder stopped with room left to write: it wants input that is not there.
      if (extent == BodyExtent::prefix) return out;
      return std::unexpected("truncated zstd stream");
    }
  }
}

std::expected<std::string, std::string> decode_one(Coding coding, std::string_view body,
                                                   std::size_t max_output, BodyExtent extent) {
  if (body.empty()) return std::string();
  switch (coding) {
    case Coding::identity:
      if (body.size() > max_output) return std::unexpected(too_large(max_output));
      return std::string(body);
    case Coding::gzip:
      return inflate_body(coding, 16 + MAX_WBITS, body, max_output, extent);
    case Coding::deflate:
      // "deflate" means zlib-wrapped (RFC 9110 8.4.1.2), but some servers send raw deflate;
      // browsers accept both, so the zlib header decides.
      return inflate_body(coding, has_zlib_header(body) ? MAX_WBITS : -MAX_WBITS, body, max_output,
                          extent);
    case Coding::brotli:
      return decode_brotli(body, max_output, extent);
    case Coding::zstd:
      return decode_zstd(body, max_output, extent);
  }
  return std::unexpected("unsupported content coding");
}

}  // namespace

std::expected<std::string, std::string> decode_content(std::string_view content_encoding,
                                                       std::string_view body,
                                                       std::size_t max_output, BodyExtent extent) {
  auto codings = parse_codings(content_encoding);
  if (!codings) return std::unexpected(std::move(codings.error()));
  std::erase(*codings, Coding::identity);
  if (codings->empty()) return decode_one(Coding::identity, body, max_output, extent);

  // The last coding applied is undone first; each stage's output feeds the previous coding.
  std::string stage = std::string();
  std::string_view input = body;
  for (auto coding = codings->rbegin(); coding != codings->rend(); ++coding) {
    auto decoded = decode_one(*coding, input, max_output, extent);
    if (!decoded) return std::unexpected(std::move(decoded.error()));
    stage = std::move(*decoded);
    input = stage;
  }
  return stage;
}

bool is_identity_coding(std::string_view content_encoding) {
  const auto codings = parse_codings(content_encoding);
  return codings && std::ranges::all_of(*codings, [](Coding c) { return c == Coding::identity; });
}

}  // namespace tokgate::proxy
