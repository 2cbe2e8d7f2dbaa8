// Owning pointers for OpenSSL objects, plus the few helpers every file of certs/ needs.
// A deleter type per free function keeps each unique_ptr the size of a raw pointer.
#pragma once

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <chrono>
#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace tokgate::certs {

template <auto FreeFunction>
struct OpensslDeleter {
  template <typename T>
  void operator()(T* object) const noexcept {
    FreeFunction(object);
  }
};

inline void free_x509_stack(STACK_OF(X509) * stack) {
  sk_X509_pop_free(stack, X509_free);
}

using X509Ptr = std::unique_ptr<X509, OpensslDeleter<&X509_free>>;
using X509NamePtr = std::unique_ptr<X509_NAME, OpensslDeleter<&X509_NAME_free>>;
using X509ExtensionPtr = std::unique_ptr<X509_EXTENSION, OpensslDeleter<&X509_EXTENSION_free>>;
using X509StorePtr = std::unique_ptr<X509_STORE, OpensslDeleter<&X509_STORE_free>>;
using X509StoreCtxPtr = std::unique_ptr<X509_STORE_CTX, OpensslDeleter<&X509_STORE_CTX_free>>;
using X509StackPtr = std::unique_ptr<STACK_OF(X509), OpensslDeleter<&free_x509_stack>>;
using EvpPkeyPtr = std::unique_ptr<EVP_PKEY, OpensslDeleter<&EVP_PKEY_free>>;
using EvpPkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, OpensslDeleter<&EVP_PKEY_CTX_free>>;
using EvpMdCtxPtr = std::unique_ptr<EVP_MD_CTX, OpensslDeleter<&EVP_MD_CTX_free>>;
using EvpMdPtr = std::unique_ptr<EVP_MD, OpensslDeleter<&EVP_MD_free>>;
using BioPtr = std::unique_ptr<BIO, OpensslDeleter<&BIO_free_all>>;
using BignumPtr = std::unique_ptr<BIGNUM, OpensslDeleter<&BN_free>>;
using Asn1IntegerPtr = std::unique_ptr<ASN1_INTEGER, OpensslDeleter<&ASN1_INTEGER_free>>;
using Asn1OctetStringPtr =
    std::unique_ptr<ASN1_OCTET_STRING, OpensslDeleter<&ASN1_OCTET_STRING_free>>;
using Asn1BitStringPtr = std::unique_ptr<ASN1_BIT_STRING, OpensslDeleter<&ASN1_BIT_STRING_free>>;
using GeneralNamePtr = std::unique_ptr<GENERAL_NAME, OpensslDeleter<&GENERAL_NAME_free>>;
using GeneralNamesPtr = std::unique_ptr<GENERAL_NAMES, OpensslDeleter<&GENERAL_NAMES_free>>;
using AuthorityKeyIdPtr = std::unique_ptr<AUTHORITY_KEYID, OpensslDeleter<&AUTHORITY_KEYID_free>>;

// A second owning reference to an object someone else also owns.
inline X509Ptr up_ref(X509* certificate) {
  if (certificate != nullptr) X509_up_ref(certificate);
  return X509Ptr(certificate);
}
inline EvpPkeyPtr up_ref(EVP_PKEY* key) {
  if (key != nullptr) EVP_PKEY_up_ref(key);
  return EvpPkeyPtr(key);
}

// Drains this thread's OpenSSL error queue into one line. Only the library's fixed reason texts
// are used, never the optional error data, so no input bytes (key material) can leak into it.
inline std::string openssl_errors() {
  std::string text;
  while (unsigned long code = ERR_get_error()) {
    if (text.size() > 512) continue;  // keep draining, stop growing
    char line[256];
    ERR_error_string_n(code, line, sizeof line);
    if (!text.empty()) text += "; ";
    text += line;
  }
  return text.empty() ? std::string("no detail from OpenSSL") : text;
}

// Gives a certificate a random positive 128-bit serial number (never zero).
inline bool set_random_serial(X509* certificate) {
  BignumPtr number(BN_new());
  if (!number) return false;
  do {
    if (BN_rand(number.get(), 128, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) != 1) return false;
  } while (BN_is_zero(number.get()));
  return BN_to_ASN1_INTEGER(number.get(), X509_get_serialNumber(certificate)) != nullptr;
}

// The longest prefix of at most max_bytes that does not split a UTF-8 sequence. It does not
// validate: OpenSSL does when the text goes into a certificate as MBSTRING_UTF8.
inline std::string_view utf8_prefix(std::string_view text, std::size_t max_bytes) {
  if (text.size() <= max_bytes) return text;
  std::size_t end = max_bytes;
  // Back off while the first byte left out is a continuation byte (10xxxxxx).
  while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
  return text.substr(0, end);
}

// An ASN.1 UTCTime/GeneralizedTime as a time point; nullopt if it does not parse.
inline std::optional<std::chrono::system_clock::time_point> to_time_point(const ASN1_TIME* time) {
  // Times past year 2262 (e.g. the common 9999-12-31 "no expiry") do not fit the clock's
  // nanosecond count; clamp them rather than overflow.
  using Clock = std::chrono::system_clock;
  std::tm parts{};
  if (time == nullptr || ASN1_TIME_to_tm(time, &parts) != 1) return std::nullopt;
  const std::chrono::seconds since_epoch(timegm(&parts));
  constexpr auto latest = std::chrono::duration_cast<std::chrono::seconds>(Clock::duration::max());
  constexpr auto earliest =
      std::chrono::duration_cast<std::chrono::seconds>(Clock::duration::min());
  if (since_epoch >= latest) return Clock::time_point::max();
  if (since_epoch <= earliest) return Clock::time_point::min();
  return Clock::time_point(std::chrono::duration_cast<Clock::duration>(since_epoch));
}

}  // namespace tokgate::certs
