// Mints the server certificates tokgate shows to clients, signed by its CA. All leaves share one
// ECDSA P-256 key made at construction: key generation is the slow part, and a leaf key that
// lives only in this process's memory gains nothing from being unique per name.
#pragma once

#include "certs/certificate_authority.hpp"
#include "certs/openssl_ptr.hpp"

#include <chrono>
#include <cstddef>
#include <expected>
#include <string>
#include <vector>

namespace tokgate::certs {

// The names a leaf must carry, usually the client's SNI plus the names of the real server's
// certificate. Every field is untrusted input: the minter skips what is not a valid name.
struct LeafRequest {
  std::string common_name{};
  std::vector<std::string> dns_names{};     // "example.com", "*.example.com"
  std::vector<std::string> ip_addresses{};  // "192.0.2.1", "2001:db8::1"
};

class LeafMinter {
 public:
  // At most this many subjectAltName entries per leaf; the common name comes first.
  static constexpr std::size_t max_names = 100;
  static constexpr std::chrono::hours max_validity{24 * 30};
  // notBefore lies this far in the past, for clients whose clock is slow.
  static constexpr std::chrono::hours backdate{24};

  // Keeps its own references to the CA's certificate and key, so `ca` need not outlive it.
  // Throws std::runtime_error if OpenSSL cannot make a key (start-up, not the data path).
  explicit LeafMinter(const CertificateAuthority& ca);
  LeafMinter(const LeafMinter&) = delete;
  LeafMinter& operator=(const LeafMinter&) = delete;

  // The one private key of every leaf this minter makes.
  EVP_PKEY* leaf_key() const { return leaf_key_.get(); }

  // A v3 leaf with a random serial, valid from now - backdate until min(now + max_validity,
  // the CA's notAfter), CN = common_name (cut to 64 bytes; the first name if empty or not
  // UTF-8), subjectAltName = the valid names deduplicated and lower-cased, serverAuth only,
  // not a CA, signed with SHA-256. Fails if no valid DNS name or IP address is left.
  // Thread-safe: reads only state fixed at construction.
  std::expected<X509Ptr, std::string> mint(const LeafRequest& request) const;

 private:
  X509Ptr ca_certificate_;
  EvpPkeyPtr ca_key_;
  EvpPkeyPtr leaf_key_;
  EvpPkeyPtr leaf_public_key_;  // the same key, in the form fastest to put in certificates
  X509NamePtr issuer_;
  std::chrono::system_clock::time_point ca_not_before_;
  std::chrono::system_clock::time_point ca_not_after_;
  // The extensions every leaf has, encoded once: basicConstraints, keyUsage, extendedKeyUsage,
  // subjectKeyIdentifier (one key, one identifier) and authorityKeyIdentifier.
  std::vector<X509ExtensionPtr> fixed_extensions_;
};

}  // namespace tokgate::certs
