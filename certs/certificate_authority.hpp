// The CA that signs tokgate's leaf certificates: created once (ECDSA P-256, self-signed), or
// loaded from disk, either tokgate's own directory or a bring-your-own cert + key pair.
// The private key never appears in an error message and its file must be mode 0600.
#pragma once

#include "certs/openssl_ptr.hpp"

#include <chrono>
#include <cstdint>
#include <expected>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace tokgate::certs {

class CertificateAuthority {
 public:
  // Names of the two files in a CA directory.
  static constexpr std::string_view cert_file_name = "ca.pem";
  static constexpr std::string_view key_file_name = "ca.key";

  // Generates a new CA and writes dir/ca.pem (0644) and dir/ca.key (0600, created 0600 with
  // O_EXCL). Creates dir with mode 0700 if absent. Refuses if either file already exists.
  // The subject is O=tokgate, CN=<common_name> <8 random hex digits>, so two installs differ.
  static std::expected<CertificateAuthority, std::string> create(
      const std::filesystem::path& dir, std::string_view common_name = "tokgate CA");

  // Loads dir/ca.pem and dir/ca.key with the same checks as load_files().
  static std::expected<CertificateAuthority, std::string> load_dir(
      const std::filesystem::path& dir);

  // Bring-your-own CA. cert_pem holds the CA certificate first, then optionally its chain
  // (intermediates, maybe the root). The key must be unencrypted PEM (EC, or RSA >= 2048 bits),
  // match the first certificate, and not be readable by group or others. The certificate must
  // be a CA (basicConstraints CA:TRUE) allowed to sign certificates, and valid now.
  static std::expected<CertificateAuthority, std::string> load_files(
      const std::filesystem::path& cert_pem, const std::filesystem::path& key_pem);

  // Loads dir if it holds ca.pem, else creates a CA there. *created (if given) tells which.
  static std::expected<CertificateAuthority, std::string> load_or_create(
      const std::filesystem::path& dir, bool* created = nullptr,
      std::string_view common_name = "tokgate CA");

  CertificateAuthority(CertificateAuthority&&) noexcept = default;
  CertificateAuthority& operator=(CertificateAuthority&&) noexcept = default;
  CertificateAuthority(const CertificateAuthority&) = delete;
  CertificateAuthority& operator=(const CertificateAuthority&) = delete;
  ~CertificateAuthority() = default;

  // Borrowed pointers, valid while this object lives (up_ref() them to keep longer).
  X509* certificate() const { return certificate_.get(); }
  EVP_PKEY* private_key() const { return private_key_.get(); }

  // What a server sends after its leaf: this CA's certificate unless it is a self-signed root,
  // then the intermediates that followed it in the cert file, self-signed roots left out.
  const std::vector<X509Ptr>& chain_to_send() const { return chain_to_send_; }

  // SHA-256 of the certificate's DER, "AB:CD:..." (upper-case hex, colon separated).
  std::string fingerprint_sha256() const;
  // RFC 2253 form, e.g. "CN=tokgate CA 1a2b3c4d,O=tokgate".
  std::string subject() const;
  std::chrono::system_clock::time_point not_before() const;
  std::chrono::system_clock::time_point not_after() const;

  // The CA certificate alone (not the chain), for installing on clients.
  std::string pem() const;
  std::vector<uint8_t> der() const;

 private:
  CertificateAuthority(X509Ptr certificate, EvpPkeyPtr private_key, std::vector<X509Ptr> chain);

  X509Ptr certificate_;
  EvpPkeyPtr private_key_;
  std::vector<X509Ptr> chain_to_send_;
};

}  // namespace tokgate::certs
