#include "certs/certificate_authority.hpp"

#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <ctime>
#include <system_error>
#include <utility>

namespace tokgate::certs {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::system_clock;

// A CA file is a few KiB; the bound keeps a wrong path (a disk image, /dev/zero) harmless.
constexpr std::size_t max_pem_file_bytes = 1 << 20;
// The CA certificate plus its chain; real chains have 1-3 certificates.
constexpr std::size_t max_file_certificates = 16;
constexpr int ca_validity_days = 3653;  // ten years, leap days included
constexpr int min_rsa_bits = 2048;
constexpr std::size_t max_common_name_bytes = 64;  // X.520 ub-common-name
constexpr std::size_t name_suffix_bytes = 4;       // printed as 8 hex digits

std::string quoted(const fs::path& path) {
  return "'" + path.string() + "'";
}

std::string errno_text(int error) {
  return std::generic_category().message(error);
}

std::string hex(const unsigned char* bytes, std::size_t size, bool colons) {
  static constexpr char digits[] = "0123456789ABCDEF";
  std::string text;
  text.reserve(size * 3);
  for (std::size_t i = 0; i < size; ++i) {
    if (colons && i != 0) text += ':';
    text += digits[bytes[i] >> 4];
    text += digits[bytes[i] & 0x0F];
  }
  return text;
}

// PEM callbacks ask for a passphrase on the terminal by default; a service must not block on
// that, so encrypted keys simply fail to load.
int refuse_passphrase(char*, int, int, void*) {
  return -1;
}

class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  // Closes now, reporting the error close() can carry for a written file.
  bool close() {
    const int fd = std::exchange(fd_, -1);
    return ::close(fd) == 0;
  }

 private:
  int fd_;
};

// File bytes that are wiped when dropped: the key file's text must not linger in freed memory.
struct FileBytes {
  std::string bytes;

  FileBytes() = default;
  FileBytes(FileBytes&&) noexcept = default;
  FileBytes& operator=(FileBytes&&) noexcept = default;
  ~FileBytes() { OPENSSL_cleanse(bytes.data(), bytes.size()); }
};

enum class Privacy { shared, private_to_owner };

// Reads a small regular file. For a private file, refuses before reading if the mode lets
// group or others read it; the mode comes from the open descriptor, so no swap can slip in.
std::expected<FileBytes, std::string> read_small_file(const fs::path& path, std::string_view what,
                                                      Privacy privacy) {
  const std::string name = std::string(what) + " " + quoted(path);
  // O_NONBLOCK: a FIFO planted at the path must not hang start-up.
  FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  if (fd.get() < 0) return std::unexpected(name + ": cannot open: " + errno_text(errno));
  struct stat info {};
  if (::fstat(fd.get(), &info) != 0) {
    return std::unexpected(name + ": cannot stat: " + errno_text(errno));
  }
  if (!S_ISREG(info.st_mode)) return std::unexpected(name + " is not a regular file");
  if (privacy == Privacy::private_to_owner && (info.st_mode & 077) != 0) {
    std::array<char, 8> mode{};
    std::snprintf(mode.data(), mode.size(), "%04o", static_cast<unsigned>(info.st_mode & 07777));
    return std::unexpected(name + " is accessible by group or others (mode " + mode.data() +
                           "); a CA private key must be private to its owner: chmod 600 " +
                           quoted(path));
  }
  if (info.st_size < 0 || static_cast<std::uint64_t>(info.st_size) > max_pem_file_bytes) {
    return std::unexpected(name + " is larger than 1 MiB; it cannot be a PEM file");
  }
  FileBytes contents;
  // One byte of room beyond the stat size tells a file that grew while being read.
  contents.bytes.resize(static_cast<std::size_t>(info.st_size) + 1);
  std::size_t filled = 0;
  while (filled < contents.bytes.size()) {
    const ssize_t got =
        ::read(fd.get(), contents.bytes.data() + filled, contents.bytes.size() - filled);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return std::unexpected(name + ": cannot read: " + errno_text(errno));
    if (got == 0) break;
    filled += static_cast<std::size_t>(got);
  }
  if (filled > static_cast<std::size_t>(info.st_size)) {
    return std::unexpected(name + " changed while it was being read");
  }
  contents.bytes.resize(filled);
  return contents;
}

// Creates path (which must not exist) with exactly `mode` and writes bytes to it. The mode is
// given to open(), so the file is never more open than `mode`, even for an instant; fchmod()
// then undoes whatever the umask removed.
std::expected<void, std::string> write_new_file(const fs::path& path, std::string_view bytes,
                                                mode_t mode) {
  FileDescriptor fd(
      ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode));
  if (fd.get() < 0) {
    if (errno == EEXIST) return std::unexpected("refusing to overwrite existing " + quoted(path));
    return std::unexpected("cannot create " + quoted(path) + ": " + errno_text(errno));
  }
  auto fail = [&](std::string reason) {
    ::unlink(path.c_str());
    return std::unexpected(std::move(reason));
  };
  if (::fchmod(fd.get(), mode) != 0) {
    return fail("cannot set the mode of " + quoted(path) + ": " + errno_text(errno));
  }
  std::size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t put = ::write(fd.get(), bytes.data() + written, bytes.size() - written);
    if (put < 0 && errno == EINTR) continue;
    if (put <= 0) return fail("cannot write " + quoted(path) + ": " + errno_text(errno));
    written += static_cast<std::size_t>(put);
  }
  if (::fsync(fd.get()) != 0 || !fd.close()) {
    return fail("cannot write " + quoted(path) + ": " + errno_text(errno));
  }
  return {};
}

std::expected<void, std::string> add_extension(X509* certificate, X509V3_CTX* context, int nid,
                                               const char* value) {
  X509ExtensionPtr extension(X509V3_EXT_nconf_nid(nullptr, context, nid, value));
  if (!extension || X509_add_ext(certificate, extension.get(), -1) != 1) {
    return std::unexpected(std::string("cannot add extension ") + OBJ_nid2sn(nid) + ": " +
                           openssl_errors());
  }
  return {};
}

std::expected<X509Ptr, std::string> build_self_signed_ca(EVP_PKEY* key,
                                                         const std::string& common_name) {
  X509Ptr certificate(X509_new());
  X509NamePtr name(X509_NAME_new());
  if (!certificate || !name) return std::unexpected("out of memory: " + openssl_errors());
  std::time_t now = std::time(nullptr);  // not const: X509_time_adj_ex takes time_t*
  const auto* cn = reinterpret_cast<const unsigned char*>(common_name.data());
  const auto* organization = reinterpret_cast<const unsigned char*>("tokgate");
  if (X509_set_version(certificate.get(), X509_VERSION_3) != 1 ||
      !set_random_serial(certificate.get()) ||
      X509_NAME_add_entry_by_NID(name.get(), NID_organizationName, MBSTRING_UTF8, organization, -1,
                                 -1, 0) != 1 ||
      X509_NAME_add_entry_by_NID(name.get(), NID_commonName, MBSTRING_UTF8, cn,
                                 static_cast<int>(common_name.size()), -1, 0) != 1 ||
      X509_set_subject_name(certificate.get(), name.get()) != 1 ||
      X509_set_issuer_name(certificate.get(), name.get()) != 1 ||
      // Back-dated a day so clients with a slow clock accept it at once.
      X509_time_adj_ex(X509_getm_notBefore(certificate.get()), -1, 0, &now) == nullptr ||
      X509_time_adj_ex(X509_getm_notAfter(certificate.get()), ca_validity_days, 0, &now) ==
          nullptr ||
      X509_set_pubkey(certificate.get(), key) != 1) {
    return std::unexpected("cannot fill in the CA certificate: " + openssl_errors());
  }
  X509V3_CTX context;
  X509V3_set_ctx_nodb(&context);
  X509V3_set_ctx(&context, certificate.get(), certificate.get(), nullptr, nullptr, 0);
  // pathlen:0: this CA signs leaves only, never another CA.
  for (const auto& [nid, value] : {std::pair{NID_basic_constraints, "critical,CA:TRUE,pathlen:0"},
                                   std::pair{NID_key_usage, "critical,keyCertSign,cRLSign"},
                                   std::pair{NID_subject_key_identifier, "hash"},
                                   // After the SKI: the AKI of a self-signed cert copies it.
                                   std::pair{NID_authority_key_identifier, "keyid:always"}}) {
    if (auto added = add_extension(certificate.get(), &context, nid, value); !added) {
      return std::unexpected(added.error());
    }
  }
  if (X509_sign(certificate.get(), key, EVP_sha256()) <= 0) {
    return std::unexpected("cannot sign the CA certificate: " + openssl_errors());
  }
  return certificate;
}

// PEM text of the private key, in a buffer that is wiped when freed.
std::expected<FileBytes, std::string> private_key_pem(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_secmem()));
  if (!bio ||
      PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return std::unexpected("cannot encode the private key: " + openssl_errors());
  }
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio.get(), &data);
  FileBytes pem;
  if (size > 0) pem.bytes.assign(data, static_cast<std::size_t>(size));
  return pem;
}

std::string certificate_pem(X509* certificate) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509(bio.get(), certificate) != 1) return {};
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio.get(), &data);
  return size > 0 ? std::string(data, static_cast<std::size_t>(size)) : std::string();
}

std::expected<std::vector<X509Ptr>, std::string> parse_certificates(const FileBytes& file,
                                                                    const fs::path& path) {
  BioPtr bio(BIO_new_mem_buf(file.bytes.data(), static_cast<int>(file.bytes.size())));
  if (!bio) return std::unexpected("out of memory: " + openssl_errors());
  std::vector<X509Ptr> certificates;
  ERR_clear_error();
  while (true) {
    // Skips PEM blocks of other types (e.g. a key in a combined file).
    X509* certificate = PEM_read_bio_X509(bio.get(), nullptr, refuse_passphrase, nullptr);
    if (certificate == nullptr) break;
    certificates.emplace_back(certificate);
    if (certificates.size() > max_file_certificates) {
      return std::unexpected("CA certificate file " + quoted(path) + " holds more than " +
                             std::to_string(max_file_certificates) + " certificates");
    }
  }
  // Reading stops at the end of the file ("no start line") or at a damaged certificate.
  const unsigned long stop = ERR_peek_last_error();
  if (stop != 0 && ERR_GET_REASON(stop) != PEM_R_NO_START_LINE) {
    return std::unexpected("CA certificate file " + quoted(path) + ": certificate " +
                           std::to_string(certificates.size() + 1) +
                           " cannot be parsed: " + openssl_errors());
  }
  ERR_clear_error();
  if (certificates.empty()) {
    return std::unexpected("CA certificate file " + quoted(path) +
                           " holds no PEM certificate (-----BEGIN CERTIFICATE-----)");
  }
  return certificates;
}

bool is_self_signed(X509* certificate) {
  return X509_self_signed(certificate, 1) == 1;
}

}  // namespace

CertificateAuthority::CertificateAuthority(X509Ptr certificate, EvpPkeyPtr private_key,
                                           std::vector<X509Ptr> chain)
    : certificate_(std::move(certificate)),
      private_key_(std::move(private_key)),
      chain_to_send_(std::move(chain)) {}

std::expected<CertificateAuthority, std::string> CertificateAuthority::create(
    const fs::path& dir, std::string_view common_name) {
  auto fail = [&](const std::string& reason) {
    return std::unexpected("cannot create a CA in " + quoted(dir) + ": " + reason);
  };
  const fs::path cert_path = dir / cert_file_name;
  const fs::path key_path = dir / key_file_name;

  std::error_code error;
  const fs::file_status dir_status = fs::status(dir, error);
  if (!fs::exists(dir_status)) {
    if (dir.has_parent_path()) fs::create_directories(dir.parent_path(), error);
    // 0700: the directory holds the key; others need not even list it.
    if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
      return fail("cannot create the directory: " + errno_text(errno));
    }
  } else if (!fs::is_directory(dir_status)) {
    return fail("it exists and is not a directory");
  }
  for (const fs::path& path : {cert_path, key_path}) {
    // symlink_status: a dangling symlink counts as an existing file too.
    if (fs::exists(fs::symlink_status(path, error))) {
      return fail("refusing to overwrite existing " + quoted(path));
    }
  }

  std::array<unsigned char, name_suffix_bytes> suffix{};
  if (RAND_bytes(suffix.data(), static_cast<int>(suffix.size())) != 1) {
    return fail("no randomness: " + openssl_errors());
  }
  const std::string suffix_text = " " + hex(suffix.data(), suffix.size(), false);
  std::string name(common_name.empty() ? std::string_view("tokgate CA") : common_name);
  name = std::string(utf8_prefix(name, max_common_name_bytes - suffix_text.size())) + suffix_text;

  EvpPkeyPtr key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  if (!key) return fail("cannot generate a P-256 key: " + openssl_errors());
  auto certificate = build_self_signed_ca(key.get(), name);
  if (!certificate) return fail(certificate.error());
  auto key_pem = private_key_pem(key.get());
  if (!key_pem) return fail(key_pem.error());
  const std::string cert_pem = certificate_pem(certificate->get());
  if (cert_pem.empty()) return fail("cannot encode the certificate: " + openssl_errors());

  // Key first: a directory with ca.pem always has its key, and load_or_create() keys on ca.pem.
  if (auto written = write_new_file(key_path, key_pem->bytes, 0600); !written) {
    return fail(written.error());
  }
  if (auto written = write_new_file(cert_path, cert_pem, 0644); !written) {
    ::unlink(key_path.c_str());
    return fail(written.error());
  }
  return CertificateAuthority(std::move(*certificate), std::move(key), {});
}

std::expected<CertificateAuthority, std::string> CertificateAuthority::load_dir(
    const fs::path& dir) {
  return load_files(dir / cert_file_name, dir / key_file_name);
}

std::expected<CertificateAuthority, std::string> CertificateAuthority::load_files(
    const fs::path& cert_pem, const fs::path& key_pem) {
  auto key_file = read_small_file(key_pem, "CA key file", Privacy::private_to_owner);
  if (!key_file) return std::unexpected(key_file.error());
  auto cert_file = read_small_file(cert_pem, "CA certificate file", Privacy::shared);
  if (!cert_file) return std::unexpected(cert_file.error());

  auto certificates = parse_certificates(*cert_file, cert_pem);
  if (!certificates) return std::unexpected(certificates.error());

  BioPtr key_bio(BIO_new_mem_buf(key_file->bytes.data(), static_cast<int>(key_file->bytes.size())));
  if (!key_bio) return std::unexpected("out of memory: " + openssl_errors());
  ERR_clear_error();
  EvpPkeyPtr key(PEM_read_bio_PrivateKey(key_bio.get(), nullptr, refuse_passphrase, nullptr));
  if (!key) {
    return std::unexpected("CA key file " + quoted(key_pem) +
                           " holds no unencrypted PEM private key (encrypted keys are not "
                           "supported): " +
                           openssl_errors());
  }
  const std::string key_name = "CA key file " + quoted(key_pem);
  const int key_type = EVP_PKEY_get_base_id(key.get());
  if (key_type != EVP_PKEY_EC && key_type != EVP_PKEY_RSA) {
    return std::unexpected(key_name + " holds a " + OBJ_nid2sn(key_type) +
                           " key; only EC and RSA CA keys are supported");
  }
  if (key_type == EVP_PKEY_RSA && EVP_PKEY_get_bits(key.get()) < min_rsa_bits) {
    return std::unexpected(key_name + " holds an RSA key shorter than " +
                           std::to_string(min_rsa_bits) + " bits");
  }

  X509* ca = (*certificates)[0].get();
  const std::string cert_name = "CA certificate " + quoted(cert_pem);
  if (EVP_PKEY_eq(X509_get0_pubkey(ca), key.get()) != 1) {
    ERR_clear_error();
    return std::unexpected(key_name + " does not match the first certificate in " +
                           quoted(cert_pem));
  }
  const uint32_t flags = X509_get_extension_flags(ca);
  if ((flags & EXFLAG_INVALID) != 0) {
    return std::unexpected(cert_name + " has malformed extensions");
  }
  if ((flags & EXFLAG_CA) == 0) {
    return std::unexpected(cert_name +
                           " is not a CA certificate (basicConstraints CA:TRUE is "
                           "missing); it cannot sign other certificates");
  }
  // Without a keyUsage extension every usage is allowed (RFC 5280 4.2.1.3); OpenSSL then
  // reports all bits set.
  if ((X509_get_key_usage(ca) & KU_KEY_CERT_SIGN) == 0) {
    return std::unexpected(cert_name + " has a keyUsage without keyCertSign");
  }
  const auto not_before = to_time_point(X509_get0_notBefore(ca));
  const auto not_after = to_time_point(X509_get0_notAfter(ca));
  const auto now = Clock::now();
  if (!not_before || !not_after) {
    return std::unexpected(cert_name + " has an unreadable validity period");
  }
  if (*not_after <= now) return std::unexpected(cert_name + " has expired");
  if (*not_before > now) return std::unexpected(cert_name + " is not valid yet");

  std::vector<X509Ptr> chain;
  if (!is_self_signed(ca)) chain.push_back(up_ref(ca));
  for (std::size_t i = 1; i < certificates->size(); ++i) {
    if (!is_self_signed((*certificates)[i].get())) chain.push_back(std::move((*certificates)[i]));
  }
  ERR_clear_error();
  return CertificateAuthority(std::move((*certificates)[0]), std::move(key), std::move(chain));
}

std::expected<CertificateAuthority, std::string> CertificateAuthority::load_or_create(
    const fs::path& dir, bool* created, std::string_view common_name) {
  std::error_code error;
  const bool has_certificate = fs::exists(fs::symlink_status(dir / cert_file_name, error));
  auto ca = has_certificate ? load_dir(dir) : create(dir, common_name);
  if (ca && created != nullptr) *created = !has_certificate;
  return ca;
}

std::string CertificateAuthority::fingerprint_sha256() const {
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int size = 0;
  if (X509_digest(certificate_.get(), EVP_sha256(), digest.data(), &size) != 1) return {};
  return hex(digest.data(), size, true);
}

std::string CertificateAuthority::subject() const {
  BioPtr bio(BIO_new(BIO_s_mem()));
  // RFC 2253, but UTF-8 kept as UTF-8 rather than escaped.
  if (!bio || X509_NAME_print_ex(bio.get(), X509_get_subject_name(certificate_.get()), 0,
                                 XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB) < 0) {
    return {};
  }
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio.get(), &data);
  return size > 0 ? std::string(data, static_cast<std::size_t>(size)) : std::string();
}

std::chrono::system_clock::time_point CertificateAuthority::not_before() const {
  return to_time_point(X509_get0_notBefore(certificate_.get())).value_or(Clock::time_point::max());
}

std::chrono::system_clock::time_point CertificateAuthority::not_after() const {
  return to_time_point(X509_get0_notAfter(certificate_.get())).value_or(Clock::time_point::min());
}

std::string CertificateAuthority::pem() const {
  return certificate_pem(certificate_.get());
}

std::vector<uint8_t> CertificateAuthority::der() const {
  const int size = i2d_X509(certificate_.get(), nullptr);
  if (size <= 0) return {};
  std::vector<uint8_t> bytes(static_cast<std::size_t>(size));
  unsigned char* out = bytes.data();
  if (i2d_X509(certificate_.get(), &out) != size) return {};
  return bytes;
}

}  // namespace tokgate::certs
