#include "certs/leaf_minter.hpp"

#include <openssl/ec.h>

#include <algorithm>
#include <cstdint>
#include <ctime>
#include <optional>
#include <stdexcept>
#include <string_view>
#include <utility>

namespace tokgate::certs {
namespace {

using Clock = std::chrono::system_clock;

constexpr std::size_t max_dns_name_bytes = 253;
constexpr std::size_t max_label_bytes = 63;
constexpr std::size_t max_common_name_bytes = 64;  // X.520 ub-common-name
// Longer than any IPv6 text form ("ffff:...:255.255.255.255" is 45); bounds the parse.
constexpr std::size_t max_ip_text_bytes = 64;

// A name as it goes into subjectAltName.
struct AltName {
  int type;            // GEN_DNS or GEN_IPADD
  std::string text;    // the DNS name, or the IP address as given
  std::string binary;  // GEN_IPADD: the 4 or 16 address bytes; GEN_DNS: the name again
};

bool is_ascii_digit(char c) {
  return c >= '0' && c <= '9';
}
bool is_ascii_hex(char c) {
  return is_ascii_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}
char ascii_lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

// The 4 or 16 bytes of an IPv4 or IPv6 literal ("[v6]" accepted); nullopt if it is not one.
// The strict character check comes first because OpenSSL's parser reads IPv4 with sscanf and
// would take "1.2.3.4.example.com" for 1.2.3.4.
std::optional<std::string> parse_ip(std::string_view text) {
  if (text.size() >= 2 && text.front() == '[' && text.back() == ']') {
    text = text.substr(1, text.size() - 2);
  }
  if (text.empty() || text.size() > max_ip_text_bytes) return std::nullopt;
  const bool v6 = text.find(':') != std::string_view::npos;
  if (v6) {
    if (!std::ranges::all_of(text,
                             [](char c) { return is_ascii_hex(c) || c == ':' || c == '.'; })) {
      return std::nullopt;
    }
  } else {
    if (std::ranges::count(text, '.') != 3 || text.front() == '.' || text.back() == '.' ||
        text.find("..") != std::string_view::npos ||
        !std::ranges::all_of(text, [](char c) { return is_ascii_digit(c) || c == '.'; })) {
      return std::nullopt;
    }
  }
  const std::string terminated(text);
  Asn1OctetStringPtr bytes(a2i_IPADDRESS(terminated.c_str()));
  if (!bytes) {
    ERR_clear_error();
    return std::nullopt;
  }
  const int size = ASN1_STRING_length(bytes.get());
  if (size != 4 && size != 16) return std::nullopt;
  return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(bytes.get())),
                     static_cast<std::size_t>(size));
}

// The lower-cased form of a DNS name fit for subjectAltName, or nullopt. Labels are letters,
// digits, '-' and '_' (seen in real certificates); a wildcard is allowed only as the whole
// leftmost label and over at least two more labels ("*.example.com", not "*.com").
std::optional<std::string> normalize_dns_name(std::string_view text) {
  if (!text.empty() && text.back() == '.') text.remove_suffix(1);  // absolute form
  if (text.empty() || text.size() > max_dns_name_bytes) return std::nullopt;
  std::string name;
  name.reserve(text.size());
  std::size_t label_start = 0;
  std::size_t labels = 0;
  bool wildcard = false;
  for (std::size_t i = 0; i <= text.size(); ++i) {
    if (i == text.size() || text[i] == '.') {
      const std::string_view label = text.substr(label_start, i - label_start);
      if (label.empty() || label.size() > max_label_bytes) return std::nullopt;
      if (label == "*") {
        if (labels != 0) return std::nullopt;
        wildcard = true;
      } else if (!std::ranges::all_of(label, [](char c) {
                   const char lower = ascii_lower(c);
                   return (lower >= 'a' && lower <= 'z') || is_ascii_digit(c) || c == '-' ||
                          c == '_';
                 })) {
        return std::nullopt;
      }
      ++labels;
      label_start = i + 1;
    }
    if (i < text.size()) name += ascii_lower(text[i]);
  }
  if (wildcard && labels < 3) return std::nullopt;
  return name;
}

std::optional<AltName> to_alt_name(std::string_view text, bool dns_allowed) {
  if (auto ip = parse_ip(text)) {
    const std::string_view bare =
        (text.front() == '[') ? text.substr(1, text.size() - 2) : text;  // parse_ip checked "]"
    return AltName{GEN_IPADD, std::string(bare), std::move(*ip)};
  }
  if (!dns_allowed) return std::nullopt;
  if (auto dns = normalize_dns_name(text)) return AltName{GEN_DNS, *dns, *dns};
  return std::nullopt;
}

// Untrusted text made safe to quote in an error message.
std::string printable(std::string_view text) {
  std::string safe;
  for (const char c : text.substr(0, 64)) safe += (c >= 0x20 && c < 0x7F) ? c : '?';
  if (text.size() > 64) safe += "...";
  return safe;
}

std::expected<GeneralNamesPtr, std::string> encode_alt_names(const std::vector<AltName>& names) {
  GeneralNamesPtr encoded(sk_GENERAL_NAME_new_null());
  if (!encoded) return std::unexpected("out of memory: " + openssl_errors());
  for (const AltName& name : names) {
    GeneralNamePtr entry(GENERAL_NAME_new());
    ASN1_STRING* value = (name.type == GEN_DNS) ? ASN1_IA5STRING_new() : ASN1_OCTET_STRING_new();
    if (!entry || value == nullptr ||
        ASN1_STRING_set(value, name.binary.data(), static_cast<int>(name.binary.size())) != 1) {
      ASN1_STRING_free(value);
      return std::unexpected("out of memory: " + openssl_errors());
    }
    GENERAL_NAME_set0_value(entry.get(), name.type, value);
    if (sk_GENERAL_NAME_push(encoded.get(), entry.get()) <= 0) {
      return std::unexpected("out of memory: " + openssl_errors());
    }
    entry.release();  // owned by the stack now
  }
  return encoded;
}

X509ExtensionPtr configured_extension(X509V3_CTX* context, int nid, const char* value) {
  return X509ExtensionPtr(X509V3_EXT_nconf_nid(nullptr, context, nid, value));
}

std::time_t to_time_t(Clock::time_point time) {
  return Clock::to_time_t(time);
}

// The leaf public key as OpenSSL 3.0's legacy EC_KEY type, or nullptr. Why: X509_set_pubkey()
// encodes a provider key through the OSSL_ENCODER machinery and decodes it again, which costs
// about 0.8 ms on OpenSSL 3.0, several times the signature; a legacy key takes the old direct
// encoder (about 35 us). Only the public half goes into certificates; TLS signs with the
// provider key, and the two compare equal.
EvpPkeyPtr legacy_public_key(EVP_PKEY* key) {
#if !defined(OPENSSL_NO_DEPRECATED_3_0)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  EC_KEY* ec_key = EVP_PKEY_get1_EC_KEY(key);
  EvpPkeyPtr legacy(EVP_PKEY_new());
  if (ec_key == nullptr || !legacy || EVP_PKEY_assign_EC_KEY(legacy.get(), ec_key) != 1) {
    EC_KEY_free(ec_key);
    ERR_clear_error();
    return nullptr;
  }
#pragma GCC diagnostic pop
  // Compare once here: it also fills the key's provider export cache, so that later
  // comparisons by TLS code (one per certificate use) only read it.
  if (EVP_PKEY_eq(legacy.get(), key) != 1) {
    ERR_clear_error();
    return nullptr;
  }
  return legacy;
#else
  (void)key;
  return nullptr;
#endif
}

}  // namespace

LeafMinter::LeafMinter(const CertificateAuthority& ca)
    : ca_certificate_(up_ref(ca.certificate())),
      ca_key_(up_ref(ca.private_key())),
      leaf_key_(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256")),
      ca_not_before_(ca.not_before()),
      ca_not_after_(ca.not_after()) {
  if (!leaf_key_) {
    throw std::runtime_error("cannot generate the leaf key: " + openssl_errors());
  }
  leaf_public_key_ = legacy_public_key(leaf_key_.get());
  if (!leaf_public_key_) leaf_public_key_ = up_ref(leaf_key_.get());
  // A copy owned here; being freshly decoded, its DER is cached, so copying it into each leaf
  // concurrently only reads it.
  issuer_.reset(X509_NAME_dup(X509_get_subject_name(ca_certificate_.get())));

  // SKI "hash" reads the subject key from a certificate: a throwaway one holding the leaf key.
  X509Ptr key_holder(X509_new());
  if (!issuer_ || !key_holder || X509_set_pubkey(key_holder.get(), leaf_public_key_.get()) != 1) {
    throw std::runtime_error("cannot prepare leaf minting: " + openssl_errors());
  }
  X509V3_CTX context;
  X509V3_set_ctx_nodb(&context);
  X509V3_set_ctx(&context, ca_certificate_.get(), key_holder.get(), nullptr, nullptr, 0);
  fixed_extensions_.push_back(
      configured_extension(&context, NID_basic_constraints, "critical,CA:FALSE"));
  fixed_extensions_.push_back(
      configured_extension(&context, NID_key_usage, "critical,digitalSignature"));
  fixed_extensions_.push_back(configured_extension(&context, NID_ext_key_usage, "serverAuth"));
  fixed_extensions_.push_back(configured_extension(&context, NID_subject_key_identifier, "hash"));
  // AKI names the CA's key by the CA's own SKI; a CA without one gets no AKI in its leaves
  // (chain building then matches by name, which works).
  if (const ASN1_OCTET_STRING* ca_key_id = X509_get0_subject_key_id(ca_certificate_.get())) {
    AuthorityKeyIdPtr authority(AUTHORITY_KEYID_new());
    if (authority) authority->keyid = ASN1_OCTET_STRING_dup(ca_key_id);
    fixed_extensions_.emplace_back(
        (authority && authority->keyid != nullptr)
            ? X509V3_EXT_i2d(NID_authority_key_identifier, 0, authority.get())
            : nullptr);
  }
  if (std::ranges::any_of(fixed_extensions_, [](const auto& extension) { return !extension; })) {
    throw std::runtime_error("cannot prepare leaf extensions: " + openssl_errors());
  }
}

std::expected<X509Ptr, std::string> LeafMinter::mint(const LeafRequest& request) const {
  // subjectAltName: the common name first, then the DNS names, then the IP addresses.
  std::vector<AltName> names;
  auto add = [&names](std::optional<AltName> name) {
    if (!name || names.size() >= max_names) return;
    const bool duplicate = std::ranges::any_of(names, [&](const AltName& known) {
      return known.type == name->type && known.binary == name->binary;
    });
    if (!duplicate) names.push_back(std::move(*name));
  };
  std::optional<AltName> common = to_alt_name(request.common_name, true);
  add(common);
  // An IP literal among the DNS names (a server certificate may carry one) becomes an IP entry.
  for (const std::string& name : request.dns_names) {
    if (names.size() >= max_names) break;
    add(to_alt_name(name, true));
  }
  for (const std::string& address : request.ip_addresses) {
    if (names.size() >= max_names) break;
    add(to_alt_name(address, false));
  }
  if (names.empty()) {
    return std::unexpected(
        "no valid DNS name or IP address to mint a certificate for (common name \"" +
        printable(request.common_name) + "\")");
  }

  const Clock::time_point now = Clock::now();
  const Clock::time_point not_before = std::max(now - backdate, ca_not_before_);
  const Clock::time_point not_after = std::min(now + max_validity, ca_not_after_);
  if (not_after <= now) return std::unexpected(std::string("the CA certificate has expired"));

  X509Ptr leaf(X509_new());
  X509NamePtr subject(X509_NAME_new());
  if (!leaf || !subject) return std::unexpected("out of memory: " + openssl_errors());

  // CN: the normalized name when the common name is one, else its UTF-8 text cut to 64 bytes;
  // the first SAN when empty or not UTF-8 (OpenSSL refuses it then).
  const std::string common_name =
      common ? common->text : std::string(utf8_prefix(request.common_name, max_common_name_bytes));
  auto set_common_name = [&subject](std::string_view text) {
    return !text.empty() &&
           X509_NAME_add_entry_by_NID(subject.get(), NID_commonName, MBSTRING_UTF8,
                                      reinterpret_cast<const unsigned char*>(text.data()),
                                      static_cast<int>(text.size()), -1, 0) == 1;
  };
  if (!set_common_name(common_name)) {
    ERR_clear_error();
    if (!set_common_name(utf8_prefix(names.front().text, max_common_name_bytes))) {
      return std::unexpected("cannot set the common name: " + openssl_errors());
    }
  }

  auto alt_names = encode_alt_names(names);
  if (!alt_names) return std::unexpected(alt_names.error());

  if (X509_set_version(leaf.get(), X509_VERSION_3) != 1 || !set_random_serial(leaf.get()) ||
      X509_set_subject_name(leaf.get(), subject.get()) != 1 ||
      X509_set_issuer_name(leaf.get(), issuer_.get()) != 1 ||
      ASN1_TIME_set(X509_getm_notBefore(leaf.get()), to_time_t(not_before)) == nullptr ||
      ASN1_TIME_set(X509_getm_notAfter(leaf.get()), to_time_t(not_after)) == nullptr ||
      X509_set_pubkey(leaf.get(), leaf_public_key_.get()) != 1) {
    return std::unexpected("cannot fill in the leaf certificate: " + openssl_errors());
  }
  for (const X509ExtensionPtr& extension : fixed_extensions_) {
    if (X509_add_ext(leaf.get(), extension.get(), -1) != 1) {
      return std::unexpected("cannot add a leaf extension: " + openssl_errors());
    }
  }
  if (X509_add1_ext_i2d(leaf.get(), NID_subject_alt_name, alt_names->get(), 0,
                        X509V3_ADD_DEFAULT) != 1) {
    return std::unexpected("cannot add subjectAltName: " + openssl_errors());
  }
  if (X509_sign(leaf.get(), ca_key_.get(), EVP_sha256()) <= 0) {
    return std::unexpected("cannot sign the leaf certificate: " + openssl_errors());
  }
  return leaf;
}

}  // namespace tokgate::certs
