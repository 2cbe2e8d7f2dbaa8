#include "proxy/keylog.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>

namespace tokgate::proxy {

std::expected<std::unique_ptr<KeyLog>, std::string> KeyLog::open(
    const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    return std::unexpected(path.string() + ": cannot open the key log: " + std::strerror(errno));
  }
  struct stat info {};
  if (::fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
    ::close(fd);
    return std::unexpected(path.string() + ": the key log must be a regular file");
  }
  if ((info.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
    ::close(fd);
    return std::unexpected(path.string() +
                           ": the key log is readable by group or others (chmod 600 it): it "
                           "holds every session key");
  }
  return std::unique_ptr<KeyLog>(new KeyLog(fd));
}

KeyLog::~KeyLog() {
  ::close(fd_);
}

void KeyLog::write_line(std::string_view line) {
  if (line.size() > 1024) return;  // OpenSSL's lines are ~200 bytes; anything else is not one
  std::string text(line);
  text.push_back('\n');
  // O_APPEND makes each write atomic with respect to the others for a regular file.
  [[maybe_unused]] const ssize_t written = ::write(fd_, text.data(), text.size());
}

}  // namespace tokgate::proxy
