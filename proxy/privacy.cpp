#include "proxy/privacy.hpp"

#include <fcntl.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <iterator>

namespace tokgate::proxy {

namespace {
constexpr std::size_t kMinKeyBytes = 32;
constexpr std::size_t kMaxKeyBytes = 4096;
constexpr std::size_t kMaxQueryNameBytes = 256;
}  // namespace

std::string_view to_string(QueryPrivacy mode) {
  switch (mode) {
    case QueryPrivacy::redact:
      return "redact";
    case QueryPrivacy::full:
      return "full";
    case QueryPrivacy::omit:
      return "omit";
  }
  return "redact";
}

std::optional<QueryPrivacy> parse_query_privacy(std::string_view name) {
  if (name == "redact") return QueryPrivacy::redact;
  if (name == "full") return QueryPrivacy::full;
  if (name == "omit") return QueryPrivacy::omit;
  return std::nullopt;
}

std::optional<std::string> apply_query_privacy(std::string_view query, QueryPrivacy mode) {
  if (mode == QueryPrivacy::omit) return std::nullopt;
  if (mode == QueryPrivacy::full) return std::string(query);
  std::string out;
  out.reserve(query.size());
  while (!query.empty()) {
    const auto amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    const auto eq = pair.find('=');
    std::string_view name = pair.substr(0, eq);
    if (name.size() > kMaxQueryNameBytes) name = name.substr(0, kMaxQueryNameBytes);
    if (!out.empty()) out.push_back('&');
    out.append(name);
    if (eq != std::string_view::npos) {
      out.push_back('=');
      if (eq + 1 < pair.size()) out.append("REDACTED");
    }
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return out;
}

std::expected<ClientPseudonymiser, std::string> ClientPseudonymiser::load_or_create(
    const std::filesystem::path& key_file) {
  const std::string name = key_file.string();
  struct stat info {};
  if (::stat(name.c_str(), &info) != 0) {
    std::string key(kMinKeyBytes, '\0');
    if (RAND_bytes(reinterpret_cast<unsigned char*>(key.data()), static_cast<int>(key.size())) !=
        1) {
      return std::unexpected(name + ": cannot generate a key");
    }
    const int fd = ::open(name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return std::unexpected(name + ": cannot create the key file");
    const bool written = ::write(fd, key.data(), key.size()) == static_cast<ssize_t>(key.size());
    ::close(fd);
    if (!written) return std::unexpected(name + ": cannot write the key file");
    return from_key(key);
  }
  if ((info.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
    return std::unexpected(name + ": key file is readable by group or others (chmod 600 it)");
  }
  if (!S_ISREG(info.st_mode)) return std::unexpected(name + ": not a regular file");
  if (static_cast<std::size_t>(info.st_size) > kMaxKeyBytes) {
    return std::unexpected(name + ": key file is larger than 4096 bytes");
  }
  std::ifstream in(key_file, std::ios::binary);
  std::string key((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in && !in.eof()) return std::unexpected(name + ": cannot read the key file");
  if (key.size() < kMinKeyBytes) {
    return std::unexpected(name + ": key must be at least 32 bytes");
  }
  return from_key(key);
}

ClientPseudonymiser ClientPseudonymiser::from_key(std::string_view key) {
  ClientPseudonymiser out;
  out.key_.assign(key);
  return out;
}

std::string ClientPseudonymiser::pseudonym(std::string_view address) const {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  HMAC(EVP_sha256(), key_.data(), static_cast<int>(key_.size()),
       reinterpret_cast<const unsigned char*>(address.data()), address.size(), digest, &length);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out = "anon:";
  for (unsigned i = 0; i < 8 && i < length; ++i) {
    out.push_back(kHex[digest[i] >> 4]);
    out.push_back(kHex[digest[i] & 0xf]);
  }
  return out;
}

}  // namespace tokgate::proxy
