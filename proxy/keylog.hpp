// The TLS key log (opt-in): the secrets of both legs in the NSS SSLKEYLOGFILE format, so a
// researcher can decrypt a parallel packet capture in Wireshark. It holds every session key:
// the file is created 0600 and refused if others can read it.
#pragma once

#include <expected>
#include <filesystem>
#include <mutex>
#include <string>
#include <string_view>

namespace tokgate::proxy {

class KeyLog {
 public:
  static std::expected<std::unique_ptr<KeyLog>, std::string> open(
      const std::filesystem::path& path);
  ~KeyLog();
  KeyLog(const KeyLog&) = delete;
  KeyLog& operator=(const KeyLog&) = delete;

  // One line from OpenSSL's keylog callback (no newline). Thread-safe; one write(2) per line
  // on an O_APPEND file, so lines from several workers never interleave.
  void write_line(std::string_view line);

 private:
  explicit KeyLog(int fd) : fd_(fd) {}
  int fd_;
};

}  // namespace tokgate::proxy
