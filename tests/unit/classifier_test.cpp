// The classifier against the embedded catalog: real-looking requests for every category (host
// shapes, paths, User-Agents and headers from the traffic reference), the hard negatives next to
// them, the evidence lists, the SNI-only stage, and a bounded random property test.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "policy/catalog.hpp"
#include "policy/host_pattern.hpp"

namespace tokgate::policy {
namespace {

const Catalog& catalog() {
  static auto compiled = Catalog::compile(Catalog::embedded_sources());
  if (!compiled) {
    ADD_FAILURE() << compiled.error();
    std::abort();
  }
  return **compiled;
}

// --- User-Agents, shaped like the skeletons of the reference with realistic values -----------

// TikTok's in-app browser.
constexpr std::string_view kTikTokIosWebView =
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Mobile/15E148 musical_ly_34.3.1 JsSdk/2.0 NetType/WIFI Channel/App Store "
    "ByteLocale/en Region/US isDarkMode/0 WKWebView/1 RevealType/Dialog BytedanceWebview/d8a21c6 "
    "FalconTag/6F1B4C3A-0E5D-4C1B-9C7E-2D4A9B8E1F00";
constexpr std::string_view kTikTokAndroidWebView =
    "Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/UQ1A.240205.004; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/122.0.6261.119 Mobile Safari/537.36 "
    "musical_ly_2023405030 JsSdk/1.0 NetType/WIFI Channel/googleplay AppName/musical_ly "
    "app_version/34.5.3 ByteLocale/en ByteFullLocale/en Region/US AppId/1233 Spark/1.5.8.1 "
    "AppVersion/34.5.3 BytedanceWebview/d8a21c6";
constexpr std::string_view kTrillAndroidWebView =
    "Mozilla/5.0 (Linux; Android 13; SM-A546E Build/TP1A.220624.014; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/121.0.6167.178 Mobile Safari/537.36 "
    "trill_2023304050 JsSdk/1.0 NetType/4G Channel/googleplay AppName/trill app_version/33.4.5 "
    "ByteLocale/id-ID ByteFullLocale/id-ID Region/ID BytedanceWebview/d8a21c6";
constexpr std::string_view kTrillIosWebView =
    "Mozilla/5.0 (iPhone; CPU iPhone OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Mobile/15E148 trill_34.9.0 JsSdk/2.0 NetType/WIFI Channel/App Store ByteLocale/th "
    "Region/TH isDarkMode/1 WKWebView/1 BytedanceWebview/d61a8b9";
constexpr std::string_view kTikTokLiteWebView =
    "Mozilla/5.0 (Linux; Android 11; Redmi 9A Build/RP1A.200720.011; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/119.0.6045.193 Mobile Safari/537.36 JsSdk/1.0 "
    "NetType/MOBILE Channel/googleplay AppName/musically_go app_version/32.8.4 ByteLocale/pt-BR "
    "Region/BR";
constexpr std::string_view kUltraliteWebView =
    "Mozilla/5.0 (Linux; Android 12; SM-A135F Build/SP1A.210812.016; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/120.0.6099.144 Mobile Safari/537.36 JsSdk/1.0 "
    "NetType/WIFI Channel/googleplay AppName/ultralite app_version/33.2.1 ByteLocale/es Region/MX";
constexpr std::string_view kBareBytedanceWebView =
    "Mozilla/5.0 (Linux; Android 13; SM-A536B Build/TP1A.220624.014; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/120.0.6099.230 Mobile Safari/537.36 JsSdk/1.0 "
    "NetType/WIFI BytedanceWebview/d8a21c6";

// Other ByteDance apps' WebViews.
constexpr std::string_view kDouyinAndroidWebView =
    "Mozilla/5.0 (Linux; Android 12; V2134A Build/SP1A.210812.003; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/101.0.4951.74 Mobile Safari/537.36 aweme_290100 "
    "JsSdk/1.0 NetType/WIFI Channel/huawei_1128_64 AppName/aweme app_version/29.1.0 "
    "ByteLocale/zh-CN Region/CN BytedanceWebview/d8a21c6";
constexpr std::string_view kDouyinIosWebView =
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Mobile/15E148 aweme_29.1.0 JsSdk/2.0 NetType/WIFI Channel/App Store ByteLocale/zh "
    "Region/CN AppTheme/light BytedanceWebview/d8a21c6 FalconTag/0D3F";
constexpr std::string_view kToutiaoWebView =
    "Mozilla/5.0 (Linux; Android 12; PEHM00 Build/SKQ1.210216.001; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/97.0.4692.98 Mobile Safari/537.36 JsSdk/2 "
    "NewsArticle/9.3.6 NetType/wifi";
constexpr std::string_view kLarkDesktop =
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Lark/7.12.7 Chrome/114.0.5735.289 Safari/537.36 LarkLocale/en_US";

// Native ByteDance clients.
constexpr std::string_view kTikTokAndroidNative =
    "com.zhiliaoapp.musically/2023405030 (Linux; U; Android 14; en_US; Pixel 8; "
    "Build/UQ1A.240205.004; Cronet/TTNetVersion:5f9540e5 2024-01-29 QuicVersion:d298137e "
    "2023-02-13)";
constexpr std::string_view kTikTokAndroidOkHttp =
    "com.zhiliaoapp.musically/2022600030 (Linux; U; Android 7.1.2; es_ES; SM-G988N; "
    "Build/NRD90M;tt-ok/3.12.13.4-tiktok)";
constexpr std::string_view kTrillAndroidNative =
    "com.ss.android.ugc.trill/2613 (Linux; U; Android 10; en_US; Pixel 4; Build/QQ3A.200805.001; "
    "Cronet/58.0.2991.0)";
constexpr std::string_view kTikTokIosNative =
    "TikTok 26.2.0 rv:262018 (iPhone; iOS 14.4.2; en_US) Cronet";
constexpr std::string_view kTikTokIosOld = "TikTok/262018 CFNetwork/1220.1 Darwin/20.3.0";
constexpr std::string_view kDouyinNative =
    "com.ss.android.ugc.aweme/290101 (Linux; U; Android 12; zh_CN; V2134A; Build/SP1A.210812.003; "
    "Cronet/TTNetVersion:b4d74d15 2023-04-17 QuicVersion:0144d358 2023-03-24)";
constexpr std::string_view kLemon8Native =
    "com.bd.nproject/5710 (Linux; U; Android 13; en_US; SM-S908U; Build/TP1A.220624.014;"
    "tt-ok/3.12.13.1)";
constexpr std::string_view kTiktokBusinessSdk = "tiktok-business-android-sdk/1.3.1/v1.3";

// Everyone else.
constexpr std::string_view kChrome =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/123.0.0.0 Safari/537.36";
constexpr std::string_view kFirefox =
    "Mozilla/5.0 (X11; Linux x86_64; rv:124.0) Gecko/20100101 Firefox/124.0";
constexpr std::string_view kSafari =
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15";
constexpr std::string_view kPlainAndroidWebView =
    "Mozilla/5.0 (Linux; Android 13; SM-A536B Build/TP1A.220624.014; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/120.0.6099.230 Mobile Safari/537.36";
constexpr std::string_view kInstagram =
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Mobile/15E148 Instagram 312.0.0.22.114 (iPhone15,2; iOS 17_4; en_US; en; "
    "scale=3.00; 1179x2556; 548339486)";
constexpr std::string_view kFacebookIos =
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Mobile/15E148 [FBAN/FBIOS;FBAV/450.0.0.38.108;FBBV/564431005;FBDV/iPhone14,5;"
    "FBMD/iPhone;FBSN/iOS;FBSV/17.3.1;FBSS/3;FBID/phone;FBLC/en_US;FBOP/5;FBRV/567052743]";
constexpr std::string_view kFacebookAndroid =
    "Mozilla/5.0 (Linux; Android 14; SM-S918B Build/UP1A.231005.007; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/122.0.6261.105 Mobile Safari/537.36 "
    "[FB_IAB/FB4A;FBAV/453.0.0.36.108;]";
constexpr std::string_view kMessenger =
    "Mozilla/5.0 (Linux; Android 13; Pixel 7 Build/TQ3A.230901.001; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/118.0.5993.80 Mobile Safari/537.36 "
    "[FB_IAB/Orca-Android;FBAV/432.0.0.12.109;]";
constexpr std::string_view kSnapchat =
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Mobile/15E148 Snapchat/12.72.0.33 (like Safari/8617.1.17.10.9, panda)";
constexpr std::string_view kLine =
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Mobile/15E148 Safari Line/13.21.0";
constexpr std::string_view kKakao =
    "Mozilla/5.0 (Linux; Android 13; SM-S911N Build/TP1A.220624.014; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/117.0.5938.60 Mobile Safari/537.36 KAKAOTALK 10.3.5";
constexpr std::string_view kTelegram =
    "Mozilla/5.0 (Linux; Android 14; Pixel 6 Build/UQ1A.240105.004; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/120.0.6099.210 Mobile Safari/537.36 "
    "Telegram-Android/10.6.2 (Google Pixel 6; Android 14; SDK 34; AVERAGE)";
constexpr std::string_view kLinkedIn =
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Mobile/15E148 [LinkedInApp]/9.29.8013";
constexpr std::string_view kGoogleApp =
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) GSA/307.0.614422431 Mobile/15E148 Safari/604.1";
constexpr std::string_view kWeChat =
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Mobile/15E148 MicroMessenger/8.0.47(0x18002f2c) NetType/WIFI Language/zh_CN";
constexpr std::string_view kWeChatAndroid =
    "Mozilla/5.0 (Linux; Android 13; 22081212C Build/TKQ1.220829.002; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/111.0.5563.116 Mobile Safari/537.36 XWEB/5279 "
    "MMWEBSDK/20230805 MMWEBID/2585 MicroMessenger/8.0.42.2460(0x28002A35) WeChat/arm64 Weixin "
    "NetType/WIFI Language/zh_CN ABI/arm64";
constexpr std::string_view kWeCom =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/86.0.4240.198 Safari/537.36 wxwork/4.1.10 (MicroMessenger/6.2) WeChat/2.0.4 "
    "WindowsWechat";
constexpr std::string_view kMmtlsAgent = "MicroMessenger Client";
constexpr std::string_view kTikTokSpider =
    "Mozilla/5.0 (Linux; Android 5.0) AppleWebKit/537.36 (KHTML, like Gecko) Mobile "
    "Safari/537.36 (compatible; TikTokSpider; ttspider-feedback@tiktok.com)";
constexpr std::string_view kBytespider =
    "Mozilla/5.0 (Linux; Android 5.0) AppleWebKit/537.36 (KHTML, like Gecko) Mobile "
    "Safari/537.36 (compatible; Bytespider; spider-feedback@bytedance.com)";
constexpr std::string_view kCurl = "curl/8.5.0";

// The ByteDance client's signing headers, as a captured app request carries them.
const std::vector<std::pair<std::string_view, std::string_view>> kSigningHeaders{
    {"X-Gorgon", "0404b0d30000a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"},
    {"X-Khronos", "1711111111"},
    {"X-Argus", "Dq3x4s0bWQ0RZXm2gHkz9L7c2sV0a5Q=="},
    {"X-Ladon", "8b2Hf1cN0+Jt3l2q9sUuZ5kq"},
    {"X-SS-REQ-TICKET", "1711111111234"},
    {"x-tt-trace-id", "00-7a1c3e5f2b9d4c6e8f0a1b2c3d4e5f60-7a1c3e5f2b9d4c6e-01"},
    {"sdk-version", "2"},
};

// --- Requests ------------------------------------------------------------------------------

using Headers = std::vector<std::pair<std::string_view, std::string_view>>;

struct Request {
  std::string_view url;  // "https://host[:port]/path?query"
  std::string_view ua = "";
  Headers headers = {};
  std::string_view method = "GET";
};

struct Case {
  std::string_view note;
  Request request;
  Category expected;
  std::string_view decided_by = "";  // checked when not empty
};

Classification classify(const Request& request) {
  std::string_view rest = request.url;
  if (auto scheme = rest.find("://"); scheme != std::string_view::npos)
    rest.remove_prefix(scheme + 3);
  auto authority_end = rest.find_first_of("/?");
  std::string_view authority = rest.substr(0, authority_end);
  rest = authority_end == std::string_view::npos ? std::string_view() : rest.substr(authority_end);
  std::string_view host = authority;
  if (host.starts_with('[')) {
    host = host.substr(0, host.find(']') + 1);
  } else if (auto colon = host.rfind(':'); colon != std::string_view::npos) {
    host = host.substr(0, colon);
  }
  std::string normalized = normalize_host(host).value_or(std::string(host));

  auto question = rest.find('?');
  std::string_view path = rest.substr(0, question);
  std::string_view query =
      question == std::string_view::npos ? std::string_view() : rest.substr(question + 1);

  std::vector<HeaderView> headers;
  for (const auto& [name, value] : request.headers) headers.push_back({name, value});
  if (!request.ua.empty()) headers.push_back({"User-Agent", request.ua});
  headers.push_back({"Host", authority});

  RequestFacts facts;
  facts.host = normalized;
  facts.port = 443;
  facts.method = request.method;
  facts.path = path.empty() ? std::string_view("/") : path;
  facts.query = query;
  facts.user_agent = request.ua;
  facts.headers = headers;
  return catalog().classify(facts);
}

std::string describe(const Classification& c) {
  std::string out = std::string(to_string(c.category)) + " by '" + std::string(c.decided_by) + "'";
  for (const auto& e : c.evidence) {
    out += "\n    " + std::string(to_string(e.kind)) + " " + std::string(e.signature) + " '" +
           std::string(e.matched) + "' -> " + std::string(to_string(e.category));
  }
  return out;
}

void run(const std::vector<Case>& cases) {
  for (const Case& c : cases) {
    auto result = classify(c.request);
    EXPECT_EQ(result.category, c.expected)
        << c.note << "\n  " << c.request.url << "\n  got " << describe(result);
    if (!c.decided_by.empty()) {
      EXPECT_EQ(result.decided_by, c.decided_by) << c.note << "\n  " << c.request.url;
    }
    if (result.category != Category::none) {
      EXPECT_FALSE(result.decided_by.empty()) << c.note;
    }
  }
}

// Signing headers plus more.
Headers signed_with(Headers extra) {
  Headers all = kSigningHeaders;
  all.insert(all.end(), extra.begin(), extra.end());
  return all;
}

constexpr auto kAppQuery =
    "?iid=7312345678901234567&device_id=7298765432109876543&ac=wifi&channel=googleplay&aid=1233"
    "&app_name=musical_ly&version_code=340503&version_name=34.5.3&device_platform=android"
    "&os=android&ssmix=a&device_type=Pixel+8&device_brand=google&language=en&os_api=34"
    "&os_version=14&manifest_version_code=2023405030&resolution=1080*2205&dpi=420"
    "&update_version_code=2023405030&_rticket=1711111111234&current_region=US&app_type=normal"
    "&sys_region=US&mcc_mnc=310260&timezone_name=America%2FNew_York&carrier_region=US"
    "&ts=1711111111";

// ---------------------------------------------------------------------------------------------

TEST(Classifier, AppApi) {
  const std::string feed =
      std::string("https://api16-normal-c-useast1a.tiktokv.com/aweme/v1/feed/") + kAppQuery;
  run({
      {"feed on the US API host",
       {feed, kTikTokAndroidNative, kSigningHeaders},
       Category::app_api,
       "tiktok-app-path"},
      {"comment list, Singapore",
       {"https://api22-normal-c-alisg.tiktokv.com/aweme/v2/comment/list/"
        "?aweme_id=7301&count=20&aid=1180&app_name=trill",
        kTrillAndroidNative, kSigningHeaders},
       Category::app_api},
      {"detail on api-h2",
       {"https://api-h2.tiktokv.com/aweme/v1/aweme/detail/?aweme_id=7301234567890123456",
        kTrillAndroidNative},
       Category::app_api},
      {"plain api host",
       {"https://api.tiktokv.com/aweme/v1/multi/aweme/detail/", kTikTokAndroidOkHttp},
       Category::app_api},
      {"core host",
       {"https://api19-core-c-useast1a.tiktokv.com/aweme/v1/user/profile/other/?user_id=6",
        kTikTokIosNative},
       Category::app_api},
      {"us subdomain",
       {"https://api16-normal-useast5.us.tiktokv.com/aweme/v1/commit/follow/user/",
        kTikTokAndroidNative},
       Category::app_api},
      {"tiktokv.us aggregator",
       {"https://aggr16-normal.tiktokv.us/aweme/v1/search/item/?keyword=x", kTikTokAndroidNative},
       Category::app_api},
      {"tiktokv.us api",
       {"https://api31-normal-useast2a.tiktokv.us/aweme/v1/feed/", kTikTokIosNative},
       Category::app_api},
      {"EU core host",
       {"https://api16-core-no1a.tiktokv.eu/aweme/v1/aweme/stats/", kTikTokAndroidNative},
       Category::app_api},
      {"old musical.ly API",
       {"https://api2.musical.ly/aweme/v1/feed/?count=6", kTikTokIosOld},
       Category::app_api},
      {"old musical.ly numbered",
       {"https://api2-19-h2.musical.ly/aweme/v1/aweme/post/", kTikTokIosOld},
       Category::app_api},
      {"device registration",
       {"https://log22-normal-alisg.tiktokv.com/service/2/device_register/",
        kTikTokAndroidNative,
        {},
        "POST"},
       Category::app_api},
      {"applog",
       {"https://log16-applog-useast5.tiktokv.com/service/2/app_log/", kTikTokAndroidNative,
        kSigningHeaders, "POST"},
       Category::app_api},
      {"monitoring",
       {"https://mon16-normal-useast5.tiktokv.us/monitor/collect/c/session",
        kTikTokAndroidNative,
        {},
        "POST"},
       Category::app_api},
      {"security SDK",
       {"https://mssdk16-normal-useast5.tiktokv.us/sdi/get_token?lc_id=2142840551",
        kTikTokAndroidNative},
       Category::app_api},
      {"network config",
       {"https://tnc16-platform-useast1a.tiktokv.com/get_domains/v5/", kTikTokAndroidNative},
       Category::app_api},
      {"hot update",
       {"https://gecko16-normal-useast1a.tiktokv.com/gecko/server/v3/package",
        kTikTokAndroidNative},
       Category::app_api},
      {"A/B",
       {"https://libra16-normal-useast1a.tiktokv.com/common", kTikTokAndroidNative},
       Category::app_api},
      {"search",
       {"https://search16-normal-c-useast1a.tiktokv.com/aweme/v1/search/item/",
        kTikTokAndroidNative},
       Category::app_api},
      {"shop",
       {"https://oec16-normal-useast5.tiktokv.us/api/v1/shop/", kTikTokAndroidNative},
       Category::app_api},
      {"byteoversea log",
       {"https://log.byteoversea.com/service/2/app_log/", kTikTokAndroidNative, {}, "POST"},
       Category::app_api},
      {"byteoversea xlog",
       {"https://xlog-va.byteoversea.com/v2/s", kTikTokAndroidNative},
       Category::app_api},
      {"byteoversea vas",
       {"https://vas-alisg16.byteoversea.com/vas/", kTikTokAndroidNative},
       Category::app_api},
      {"byteoversea upload",
       {"https://tos-alisg-up.byteoversea.com/upload/v1/", kTikTokAndroidNative, {}, "PUT"},
       Category::app_api},
      {"isnssdk", {"https://rtlog.isnssdk.com/", kTikTokAndroidNative}, Category::app_api},
      {"sgsnssdk", {"https://api.sgsnssdk.com/", kTikTokAndroidNative}, Category::app_api},
      {"tik-tokapi", {"https://api.tik-tokapi.com/", kTikTokAndroidNative}, Category::app_api},
      {"unclear: tiktokd.net",
       {"https://x.tiktokd.net/"},
       Category::app_api,
       "tiktok-app-backend-unclear"},
      {"old app endpoint on a tiktok.com host",
       {"https://m.tiktok.com/aweme/v1/aweme/detail/?aweme_id=1"},
       Category::app_api,
       "tiktok-app-path"},
      {"native UA on an unknown host",
       {"https://partner-link-preview.example.com/api/preview", kTikTokAndroidNative},
       Category::app_api,
       "tiktok-native-ua"},
      {"native OkHttp UA on an unknown host",
       {"https://cdn.partner.example/obj", kTikTokAndroidOkHttp},
       Category::app_api,
       "tiktok-native-ua"},
      {"Asia native UA on an unknown host",
       {"https://203.0.113.10/x", kTrillAndroidNative},
       Category::app_api},
      {"iOS native UA on an unknown host",
       {"https://edge.example.net/x", kTikTokIosNative},
       Category::app_api},
      {"old iOS native UA on an unknown host",
       {"https://edge.example.net/x", kTikTokIosOld},
       Category::app_api},
      {"signing headers + aid on an unknown host",
       {"https://71.18.1.1/aweme/v1/feed/?aid=1233&version_code=34", "okhttp/3.12.13",
        kSigningHeaders},
       Category::app_api,
       "tiktok-native-signed"},
      {"signing headers + app_name=trill",
       {"https://sg.example.net/x?app_name=trill", "", {{"X-Khronos", "1711111111"}}},
       Category::app_api,
       "tiktok-native-signed"},
      {"X-SS-DP 1233 on an unknown host",
       {"https://edge.example.net/x", "", {{"X-SS-DP", "1233"}}},
       Category::app_api,
       "tiktok-native-app-id-header"},
  });
}

TEST(Classifier, InAppBrowser) {
  run({
      {"iOS WebView on a news site",
       {"https://www.nytimes.com/2024/03/13/technology/tiktok-ban-house-vote.html",
        kTikTokIosWebView},
       Category::in_app_browser,
       "tiktok-webview-ua"},
      {"Android WebView on a shop",
       {"https://shop.example.com/products/sneaker?utm_source=tiktok&ttclid=E.C.P.abc",
        kTikTokAndroidWebView},
       Category::in_app_browser},
      {"Asia Android WebView",
       {"https://www.tokopedia.com/", kTrillAndroidWebView},
       Category::in_app_browser},
      {"Asia iOS WebView", {"https://example.org/", kTrillIosWebView}, Category::in_app_browser},
      {"TikTok Lite WebView",
       {"https://www.amazon.com.br/dp/B0C1", kTikTokLiteWebView},
       Category::in_app_browser},
      {"TikTok Lite (ultralite) WebView",
       {"https://www.mercadolibre.com.mx/", kUltraliteWebView},
       Category::in_app_browser},
      {"bare BytedanceWebview (low confidence)",
       {"https://linktr.ee/someone", kBareBytedanceWebView},
       Category::in_app_browser,
       "bytedance-webview-ua"},
      {"X-Requested-With on a plain WebView UA",
       {"https://example.com/landing",
        kPlainAndroidWebView,
        {{"X-Requested-With", "com.zhiliaoapp.musically"}}},
       Category::in_app_browser,
       "tiktok-webview-android-header"},
      {"X-Requested-With trill",
       {"https://example.com/",
        kPlainAndroidWebView,
        {{"x-requested-with", "com.ss.android.ugc.trill"}}},
       Category::in_app_browser},
      {"in-app browser on a store page of another app",
       {"https://apps.apple.com/us/app/instagram/id389801252", kTikTokIosWebView},
       Category::in_app_browser},
      {"in-app browser on a CDN-hosted page",
       {"https://d111111abcdef8.cloudfront.net/index.html", kTikTokAndroidWebView},
       Category::in_app_browser},
      {"in-app browser on qq.com",
       {"https://v.qq.com/x/cover/abc.html", kTikTokIosWebView},
       Category::in_app_browser},
      {"in-app browser on an IP literal",
       {"http://192.0.2.44:8080/", kTikTokAndroidWebView},
       Category::in_app_browser},
  });
}

TEST(Classifier, MediaCdn) {
  run({
      {"avatar",
       {"https://p16-sign-va.tiktokcdn.com/tos-maliva-avt-0068/"
        "7c1d~c5_100x100.jpeg?x-expires=1711200000&x-signature=abc%3D",
        kChrome},
       Category::media_cdn,
       "tiktok-media-cdn"},
      {"US signed image",
       {"https://p16-sign.tiktokcdn-us.com/tos-useast5-p-0068-tx/"
        "abc~tplv-photomode-zoomcover:720:720.jpeg"},
       Category::media_cdn},
      {"pu-sign image",
       {"https://p19-pu-sign-useast8.tiktokcdn-us.com/tos-useast8-avt-0068-tx2/"
        "abc~c5_720x720.webp"},
       Category::media_cdn},
      {"amd image",
       {"https://p16-amd-va.tiktokcdn.com/img/musically-maliva-obj/1665~c5_100x100.jpeg"},
       Category::media_cdn},
      {"LIVE gift image is media, not live",
       {"https://p16-webcast.tiktokcdn.com/img/maliva/webcast-va/"
        "eba3a9bb85c33e017f3648eaf88d7189~tplv-obj.png"},
       Category::media_cdn,
       "tiktok-media-cdn"},
      {"video",
       {"https://v16m.tiktokcdn.com/0f1e2d3c4b5a69788796a5b4c3d2e1f0/66000000/video/tos/useast2a/"
        "tos-useast2a-ve-0068c001/abc/?a=1233&br=1200&mime_type=video_mp4"},
       Category::media_cdn},
      {"video v19",
       {"https://v19.tiktokcdn.com/video/tos/alisg/tos-alisg-pve-0037c001/abc/"},
       Category::media_cdn},
      {"web video under tiktok.com",
       {"https://v16-webapp.tiktok.com/abc/66000000/video/tos/useast2a/x/?a=1988", kChrome},
       Category::media_cdn,
       "tiktok-web-video"},
      {"web video prime",
       {"https://v16-webapp-prime.tiktok.com/video/tos/maliva/tos-maliva-ve-0068c799-us/o4/"
        "?a=1988&mime_type=video_mp4",
        kChrome},
       Category::media_cdn},
      {"web video v19-web",
       {"https://v19-web.tiktok.com/video/tos/x/", kSafari},
       Category::media_cdn},
      {"lite video", {"https://v16-lite.tiktokcdn-us.com/video/tos/x/"}, Category::media_cdn},
      {"muscdn video", {"https://v16.muscdn.com/abc/video/tos/x/"}, Category::media_cdn},
      {"gts video", {"https://v16-eu.gts.byteoversea.net/video/tos/x/"}, Category::media_cdn},
      {"static website assets",
       {"https://lf16-tiktok-web.tiktokcdn-us.com/obj/tiktok-web-tx/tiktok/webapp/main/"
        "webapp-desktop/npm-async-bizCommon.js",
        kChrome},
       Category::media_cdn},
      {"ibytedtos static",
       {"https://sf16-scmcdn-sg.ibytedtos.com/goofy/tiktok/web/node/_next/static/chunks/main.js",
        kChrome},
       Category::media_cdn},
      {"ttwstatic",
       {"https://sf16-website-login.neutral.ttwstatic.com/obj/tiktok_web_login_static/tiktok/"
        "webapp/main/webapp-desktop/8152caf0c8e8bc67ae0d.js",
        kChrome},
       Category::media_cdn},
      {"ibyteimg",
       {"https://p16-tiktok-sg.ibyteimg.com/obj/tiktok-obj/1a2b3c"},
       Category::media_cdn},
      {"upload host",
       {"https://tos-alisg-up.tiktokcdn.com/upload/v1/abc", kTikTokAndroidNative, {}, "PUT"},
       Category::media_cdn},
      {"EU and row CDNs", {"https://p16.tiktokeu-cdn.com/x.jpeg"}, Category::media_cdn},
      {"row CDN", {"https://p16.tiktokrow-cdn.com/x.jpeg"}, Category::media_cdn},
      {"ttcdn-us", {"https://p16.ttcdn-us.com/x.jpeg"}, Category::media_cdn},
      {"India CDN", {"https://p16.tiktokcdn-in.com/x.jpeg"}, Category::media_cdn},
      {"exact Akamai name",
       {"https://p16-tiktokcdn-com.akamaized.net/obj/tiktok-obj/abc.jpg"},
       Category::media_cdn,
       "tiktok-media-shared-cdn"},
      {"exact Akamai video name",
       {"https://v16-tiktokcdn-com.akamaized.net/video/x"},
       Category::media_cdn},
      {"tiktokcdn.com.akamaized.net pattern",
       {"https://v19.tiktokcdn.com.akamaized.net/video/tos/x"},
       Category::media_cdn},
      {"muscdn.com.akamaized.net pattern",
       {"https://v16.muscdn.com.akamaized.net/x"},
       Category::media_cdn},
      {"exact Fastly name", {"https://tiktok.bytedance.map.fastly.net/x"}, Category::media_cdn},
      {"Fastly bytedance name", {"https://bytedance.map.fastly.net/x"}, Category::media_cdn},
      {"pixel-free image in the in-app browser",
       {"https://p16-sign-va.tiktokcdn.com/obj/x.jpeg", kTikTokIosWebView},
       Category::media_cdn},
  });
}

TEST(Classifier, Web) {
  run({
      {"video page",
       {"https://www.tiktok.com/@scout2015/video/6718335390845095173", kChrome},
       Category::web,
       "tiktok-website"},
      {"profile", {"https://www.tiktok.com/@tiktok", kFirefox}, Category::web},
      {"tag", {"https://www.tiktok.com/tag/passport", kSafari}, Category::web},
      {"web JSON API",
       {"https://www.tiktok.com/api/recommend/item_list/"
        "?aid=1988&app_name=tiktok_web&device_platform=web_pc&msToken=abc&X-Bogus=DFSz&_signature=_"
        "02B4",
        kChrome},
       Category::web},
      {"comment API",
       {"https://www.tiktok.com/api/comment/list/?aweme_id=1&aid=1988", kChrome},
       Category::web},
      {"old m. API", {"https://m.tiktok.com/api/item/detail/?itemId=1", kChrome}, Category::web},
      {"short link vm", {"https://vm.tiktok.com/ZMabc123/", kChrome}, Category::web},
      {"short link vt", {"https://vt.tiktok.com/ZSabc123/", kChrome}, Category::web},
      {"short link /t/", {"https://www.tiktok.com/t/ZT8abc/", kChrome}, Category::web},
      {"oEmbed from a server",
       {"https://www.tiktok.com/oembed?url=https://www.tiktok.com/@scout2015/video/"
        "6718335390845095173",
        "python-requests/2.31.0"},
       Category::web},
      {"embed iframe",
       {"https://www.tiktok.com/embed/v2/6718335390845095173", kChrome},
       Category::web},
      {"ttwid", {"https://www.tiktok.com/ttwid/check/", kChrome, {}, "POST"}, Category::web},
      {"us host", {"https://us.tiktok.com/", kChrome}, Category::web},
      {"lite host", {"https://lite.tiktok.com/", kChrome}, Category::web},
      {"ads portal", {"https://ads.tiktok.com/i18n/dashboard", kChrome}, Category::web},
      {"seller portal", {"https://seller-us.tiktok.com/homepage", kChrome}, Category::web},
      {"developers", {"https://developers.tiktok.com/doc/login-kit-web/", kChrome}, Category::web},
      {"newsroom", {"https://newsroom.tiktok.com/en-us/", kChrome}, Category::web},
      {"support", {"https://support.tiktok.com/en/", kChrome}, Category::web},
      {"DM REST companion",
       {"https://im-api-va.tiktok.com/v1/message/get_by_user_init", kChrome},
       Category::web},
      {"security SDK host",
       {"https://mssdk.tiktokw.us/web/report?msToken=abc", kChrome, {}, "POST"},
       Category::web,
       "tiktok-web-security-sdk"},
      {"EU security SDK host", {"https://mssdk.tiktokw.eu/web/common", kChrome}, Category::web},
      {"developer API",
       {"https://open.tiktokapis.com/v2/user/info/?fields=open_id", "node-fetch/1.0"},
       Category::web,
       "tiktok-developer-api"},
      {"developer video list",
       {"https://open.tiktokapis.com/v2/video/list/", "Go-http-client/2.0", {}, "POST"},
       Category::web},
      {"older open API",
       {"https://open-api.tiktok.com/oauth/access_token/", "python-requests/2.31.0", {}, "POST"},
       Category::web},
      {"website in the in-app browser keeps its label",
       {"https://www.tiktok.com/@someone", kTikTokIosWebView},
       Category::web},
      {"apex", {"https://tiktok.com/", kChrome}, Category::web},
      {"trailing dot and port, normalised",
       {"https://WWW.TikTok.com.:443/@x", kChrome},
       Category::web},
      {"login-ish but not login", {"https://www.tiktok.com/loginx", kChrome}, Category::web},
      {"at-login profile", {"https://www.tiktok.com/@login", kChrome}, Category::web},
  });
}

TEST(Classifier, AnalyticsSdk) {
  run({
      {"pixel loader",
       {"https://analytics.tiktok.com/i18n/pixel/events.js?sdkid=C4ABCDEFGH&lib=ttq", kChrome},
       Category::analytics_sdk,
       "tiktok-pixel"},
      {"pixel config",
       {"https://analytics.tiktok.com/i18n/pixel/config.js?sdkid=C4ABCDEFGH", kSafari},
       Category::analytics_sdk},
      {"pixel beacon",
       {"https://analytics.tiktok.com/api/v2/pixel",
        kChrome,
        {{"Content-Type", "application/json"}},
        "POST"},
       Category::analytics_sdk},
      {"pixel batch SG",
       {"https://analytics-sg.tiktok.com/api/v2/pixel/act", kFirefox, {}, "POST"},
       Category::analytics_sdk},
      {"pixel track US",
       {"https://analytics.us.tiktok.com/api/v2/pixel/track", kChrome, {}, "POST"},
       Category::analytics_sdk},
      {"noscript pixel",
       {"https://analytics.tiktok.com/api/v2/pixel?id=C4ABCDEFGH&ev=PageView&noscript=1", kChrome},
       Category::analytics_sdk},
      {"pixel inside the in-app browser",
       {"https://analytics.tiktok.com/i18n/pixel/events.js?sdkid=C4A", kTikTokIosWebView},
       Category::analytics_sdk},
      {"Events API",
       {"https://business-api.tiktok.com/open_api/v1.3/event/track/",
        "python-requests/2.31.0",
        {{"Access-Token", "abc"}},
        "POST"},
       Category::analytics_sdk,
       "tiktok-business-api"},
      {"Business SDK config",
       {"https://business-api.tiktok.com/open_api/business_sdk_config/get/"
        "?app_id=com.example&sdk_version=1.3.1&tiktok_app_id=7123",
        kTiktokBusinessSdk},
       Category::analytics_sdk},
      {"Business SDK batch",
       {"https://business-api.tiktok.com/open_api/v1.3/app/batch/", kTiktokBusinessSdk, {}, "POST"},
       Category::analytics_sdk},
      {"Marketing API oauth2 is still analytics",
       {"https://business-api.tiktok.com/open_api/v1.3/oauth2/access_token/", "curl/8", {}, "POST"},
       Category::analytics_sdk},
      {"sandbox",
       {"https://sandbox-ads.tiktok.com/open_api/v1.3/campaign/get/"},
       Category::analytics_sdk},
      {"Business SDK UA elsewhere",
       {"https://collector.example.com/x", kTiktokBusinessSdk},
       Category::analytics_sdk,
       "tiktok-business-sdk-agent"},
      {"Pangle get_ads",
       {"https://api16-access-sg.pangle.io/api/ad/union/sdk/get_ads/?aid=1371",
        "Dalvik/2.1.0 (Linux; U; Android 13; SM-A536B Build/TP1A.220624.014)",
        {},
        "POST"},
       Category::analytics_sdk,
       "pangle"},
      {"Pangle ssdk", {"https://ssdk-sg.pangle.io/ssdk/v2/get_ads"}, Category::analytics_sdk},
      {"Pangle global",
       {"https://sf16-fe-tos-sg.i18n-pglstatp.com/obj/ad-pattern-sg/x.js"},
       Category::analytics_sdk},
      {"Pangle toutiao-named domain",
       {"https://api-access.pangolin-sdk-toutiao.com/api/ad/union/sdk/get_ads/"},
       Category::analytics_sdk},
      {"pangle-b", {"https://x.pangle-b.io/"}, Category::analytics_sdk},
  });
}

TEST(Classifier, AppDistribution) {
  run({
      {"App Store",
       {"https://apps.apple.com/us/app/tiktok/id835599320", kSafari},
       Category::app_distribution,
       "tiktok-store-apple"},
      {"App Store slug",
       {"https://apps.apple.com/gb/app/tiktok-videos-music-live/id835599320?platform=iphone",
        kSafari},
       Category::app_distribution},
      {"iTunes link",
       {"https://itunes.apple.com/app/id835599320?mt=8", kSafari},
       Category::app_distribution},
      {"Play",
       {"https://play.google.com/store/apps/details?id=com.zhiliaoapp.musically&hl=en_US&gl=US",
        kChrome},
       Category::app_distribution,
       "tiktok-store-google-play"},
      {"Play, id not first",
       {"https://play.google.com/store/apps/details?hl=de&id=com.zhiliaoapp.musically", kChrome},
       Category::app_distribution},
      {"Play Asia",
       {"https://play.google.com/store/apps/details?id=com.ss.android.ugc.trill", kChrome},
       Category::app_distribution},
      {"Play Lite",
       {"https://play.google.com/store/apps/details?id=com.zhiliaoapp.musically.go", kChrome},
       Category::app_distribution},
      {"Play Lite 2",
       {"https://play.google.com/store/apps/details?id=com.ss.android.ugc.tiktok.lite", kChrome},
       Category::app_distribution},
      {"Play Studio",
       {"https://play.google.com/store/apps/details?id=com.ss.android.tt.creator", kChrome},
       Category::app_distribution},
      {"Play Shop Seller",
       {"https://play.google.com/store/apps/details?id=com.tiktokshop.seller", kChrome},
       Category::app_distribution},
      {"Microsoft Store",
       {"https://apps.microsoft.com/detail/9NH2GPH4JZS4?hl=en-us&gl=US", kChrome},
       Category::app_distribution,
       "tiktok-store-microsoft"},
      {"Microsoft Store old path",
       {"https://apps.microsoft.com/store/detail/tiktok/9NH2GPH4JZS4", kChrome},
       Category::app_distribution},
      {"APKMirror",
       {"https://www.apkmirror.com/apk/tiktok-pte-ltd/tik-tok/tik-tok-34-5-3-release/", kFirefox},
       Category::app_distribution,
       "tiktok-apk-mirror-path"},
      {"APKPure page",
       {"https://apkpure.com/tiktok/com.zhiliaoapp.musically", kFirefox},
       Category::app_distribution},
      {"APKPure download",
       {"https://d.apkpure.com/b/APK/com.zhiliaoapp.musically?version=latest", "Wget/1.21.3"},
       Category::app_distribution},
      {"APKCombo page",
       {"https://apkcombo.com/tiktok/com.zhiliaoapp.musically/", kFirefox},
       Category::app_distribution},
      {"APKCombo download query",
       {"https://apkcombo.com/downloader/?package=com.zhiliaoapp.musically", kFirefox},
       Category::app_distribution,
       "tiktok-apk-mirror-query"},
      {"Uptodown",
       {"https://tiktok.en.uptodown.com/android/download", kChrome},
       Category::app_distribution,
       "tiktok-apk-mirror-uptodown"},
      {"Uptodown other language",
       {"https://tiktok.fr.uptodown.com/android", kChrome},
       Category::app_distribution},
  });
}

TEST(Classifier, Auth) {
  run({
      {"web passport",
       {"https://www.tiktok.com/passport/web/account/info/?aid=1459&app_language=en", kChrome},
       Category::auth,
       "tiktok-auth-path"},
      {"web QR login",
       {"https://www.tiktok.com/passport/web/get_qrcode/?aid=1459", kChrome},
       Category::auth},
      {"app login",
       {"https://api16-normal-c-useast1a.tiktokv.com/passport/user/login/?aid=1233",
        kTikTokAndroidNative, signed_with({{"passport-sdk-version", "19"}}), "POST"},
       Category::auth},
      {"app register",
       {"https://api22-normal-c-alisg.tiktokv.com/passport/email/register/v2/",
        kTrillAndroidNative,
        {},
        "POST"},
       Category::auth},
      {"login page",
       {"https://www.tiktok.com/login", kChrome},
       Category::auth,
       "tiktok-login-page"},
      {"login sub-page",
       {"https://www.tiktok.com/login/phone-or-email/email", kChrome},
       Category::auth},
      {"login host", {"https://login.tiktok.com/", kChrome}, Category::auth, "tiktok-auth-host"},
      {"regional login host",
       {"https://login-no1a.www.tiktok.com/passport/web/user/login/", kChrome, {}, "POST"},
       Category::auth},
      {"passport host",
       {"https://passport-va.byteoversea.com/passport/", kTikTokAndroidNative},
       Category::auth},
      {"passport static",
       {"https://sf16-passport-sg.ibytedtos.com/obj/passport-sg/login.js", kChrome},
       Category::auth},
      {"SSO host", {"https://business-sso.tiktok.com/", kChrome}, Category::auth},
      {"Login Kit authorize",
       {"https://www.tiktok.com/v2/auth/authorize/"
        "?client_key=aw123&scope=user.info.basic&response_type=code&redirect_uri=https%3A%2F%"
        "2Fexample.com%2Fcb&state=x",
        kSafari},
       Category::auth},
      {"Login Kit token exchange",
       {"https://open.tiktokapis.com/v2/oauth/token/",
        "python-requests/2.31.0",
        {{"Content-Type", "application/x-www-form-urlencoded"}},
        "POST"},
       Category::auth},
      {"login in the in-app browser",
       {"https://www.tiktok.com/login", kTikTokIosWebView},
       Category::auth},
  });
}

TEST(Classifier, Live) {
  run({
      {"room info",
       {"https://webcast.tiktok.com/webcast/room/info/?aid=1988&app_name=tiktok_web&room_id=7301",
        kChrome},
       Category::live,
       "tiktok-live-host"},
      {"im fetch",
       {"https://webcast.tiktok.com/webcast/im/fetch/?aid=1988", kChrome},
       Category::live},
      {"app live API",
       {"https://webcast16-normal-c-useast1a.tiktokv.com/webcast/room/enter/",
        kTikTokAndroidNative},
       Category::live},
      {"regional live API",
       {"https://webcast-va.tiktokv.com/webcast/gift/list/", kTikTokAndroidNative},
       Category::live},
      {"EU live API",
       {"https://webcast22-normal-no1a.tiktokv.eu/webcast/feed/", kTikTokAndroidNative},
       Category::live},
      {"chat websocket",
       {"https://webcast16-ws-useast1a.tiktokv.com/webcast/im/push/v2/",
        kTikTokAndroidNative,
        {{"Upgrade", "websocket"}}},
       Category::live},
      {"web chat websocket",
       {"https://webcast16-ws-web-va.tiktok.com/webcast/im/ws/?aid=1988",
        kChrome,
        {{"Upgrade", "websocket"}}},
       Category::live},
      {"DM websocket",
       {"https://im-ws-va.tiktok.com/ws/v2?aid=1459&device_platform=web",
        kChrome,
        {{"Upgrade", "websocket"}}},
       Category::live},
      {"FLV pull",
       {"https://pull-flv-f16-va01.tiktokcdn.com/stage/stream-7301_or4.flv?expire=1711", kChrome},
       Category::live},
      {"HLS pull",
       {"https://pull-hls-f16-va01.tiktokcdn.com/stage/stream-7301/index.m3u8", kSafari},
       Category::live},
      {"CMAF pull US",
       {"https://pull-cmaf-f16-va01.tiktokcdn-us.com/stage/stream-1.mp4"},
       Category::live},
      {"f5 pull", {"https://pull-f5-tt03.fcdn.us.tiktokv.com/stage/stream-1.flv"}, Category::live},
      {"RTMP push host", {"https://push-rtmp-l16-va01.tiktokcdn.com/stage/"}, Category::live},
      {"live CDN",
       {"https://l16-va01.ttlivecdn.com/stage/stream-1.flv"},
       Category::live,
       "tiktok-live-cdn"},
      {"pull host on the live CDN",
       {"https://pull-flv-l16-va01.ttlivecdn.com/stage/stream-1.flv"},
       Category::live},
      {"tlivecdn", {"https://x.tlivecdn.com/live/1.flv"}, Category::live},
      {"tlivepush", {"https://push.tlivepush.com/live/"}, Category::live},
      {"RTMP ingest", {"https://push.tiktokv.us/"}, Category::live},
      {"api-live on the website",
       {"https://www.tiktok.com/api-live/user/room/?uniqueId=someone&aid=1988", kChrome},
       Category::live,
       "tiktok-live-path"},
      {"website /live page is web", {"https://www.tiktok.com/live", kChrome}, Category::web},
  });
}

TEST(Classifier, WeChat) {
  run({
      {"short link transport",
       {"http://short.weixin.qq.com/cgi-bin/micromsg-bin/newsync", kMmtlsAgent, {}, "POST"},
       Category::wechat,
       "wechat-core"},
      {"regional short",
       {"http://szshort.weixin.qq.com/mmtls/1a2b3c4d", kMmtlsAgent, {{"Upgrade", "mmtls"}}, "POST"},
       Category::wechat},
      {"long", {"https://long.weixin.qq.com/"}, Category::wechat},
      {"dns", {"https://dns.weixin.qq.com/cgi-bin/micromsg-bin/newgetdns"}, Category::wechat},
      {"international",
       {"https://sgshort.wechat.com/mmtls/00000001", kMmtlsAgent, {{"Upgrade", "mmtls"}}, "POST"},
       Category::wechat},
      {"US international", {"https://usshort.wechat.com/"}, Category::wechat},
      {"QUIC", {"https://sgquic.wechat.com/"}, Category::wechat},
      {"QR login",
       {"https://open.weixin.qq.com/connect/"
        "qrconnect?appid=wx1234567890abcdef&redirect_uri=https%3A%2F%2Fexample.com&response_type="
        "code&scope=snsapi_login",
        kChrome},
       Category::wechat},
      {"OAuth authorize",
       {"https://open.weixin.qq.com/connect/oauth2/authorize?appid=wx1&scope=snsapi_base", kWeChat},
       Category::wechat},
      {"OAuth token",
       {"https://api.weixin.qq.com/sns/oauth2/"
        "access_token?appid=wx1&secret=s&code=c&grant_type=authorization_code",
        "Go-http-client/1.1"},
       Category::wechat},
      {"official account API",
       {"https://api.weixin.qq.com/cgi-bin/token?grant_type=client_credential"},
       Category::wechat},
      {"article", {"https://mp.weixin.qq.com/s/AbCdEf123", kWeChat}, Category::wechat},
      {"article by biz",
       {"https://mp.weixin.qq.com/s?__biz=MzA3&mid=2&idx=1&sn=abc", kChrome},
       Category::wechat},
      {"article image",
       {"https://mmbiz.qpic.cn/mmbiz_jpg/abc/640?wx_fmt=jpeg", kChrome},
       Category::wechat,
       "wechat-cdn"},
      {"avatar", {"https://wx.qlogo.cn/mmhead/ver_1/abc/132", kChrome}, Category::wechat},
      {"JS-SDK",
       {"https://res.wx.qq.com/open/js/jweixin-1.6.0.js", kChrome},
       Category::wechat,
       "wechat-web"},
      {"JS-SDK fallback",
       {"https://res2.wx.qq.com/open/js/jweixin-1.6.0.js", kChrome},
       Category::wechat},
      {"Pay", {"https://pay.weixin.qq.com/index.php/core/home", kChrome}, Category::wechat},
      {"Pay v3 jsapi",
       {"https://api.mch.weixin.qq.com/v3/pay/transactions/jsapi",
        "WechatPay-Go/0.2.18",
        {{"Authorization", "WECHATPAY2-SHA256-RSA2048 mchid=\"1\""}},
        "POST"},
       Category::wechat},
      {"Pay app host", {"https://payapp.weixin.qq.com/"}, Category::wechat},
      {"wechatpay.cn",
       {"https://api.wechatpay.cn/v3/certificates"},
       Category::wechat,
       "wechat-pay"},
      {"Web WeChat", {"https://wx.qq.com/", kChrome}, Category::wechat},
      {"Web WeChat 2",
       {"https://wx2.qq.com/cgi-bin/mmwebwx-bin/webwxinit", kChrome, {}, "POST"},
       Category::wechat},
      {"Web login",
       {"https://login.wx.qq.com/jslogin?appid=wx782c26e4c19acffb", kChrome},
       Category::wechat},
      {"Web push",
       {"https://webpush.wx.qq.com/cgi-bin/mmwebwx-bin/synccheck", kChrome},
       Category::wechat},
      {"Web international",
       {"https://web.wechat.com/cgi-bin/mmwebwx-bin/webwxnewloginpage", kChrome},
       Category::wechat},
      {"mini-program package",
       {"https://res.servicewechat.com/weapp/release/wx1234567890abcdef/12.wxapkg"},
       Category::wechat,
       "wechat-mini-programs"},
      {"WeCom", {"https://work.weixin.qq.com/wework_admin/frame", kWeCom}, Category::wechat},
      {"Channels", {"https://channels.weixin.qq.com/platform", kChrome}, Category::wechat},
      {"weixin.com", {"https://www.weixin.com/"}, Category::wechat},
      {"weixinbridge", {"https://x.weixinbridge.com/"}, Category::wechat},
      {"legal", {"https://www.wechatlegal.net/"}, Category::wechat},
      {"TikTok in-app browser on a WeChat article",
       {"https://mp.weixin.qq.com/s/AbC", kTikTokIosWebView},
       Category::wechat},
      {"MMTLS on an IP literal",
       {"http://203.0.113.7/mmtls/0000a1b2",
        kMmtlsAgent,
        {{"Upgrade", "mmtls"},
         {"Content-Type", "application/octet-stream"},
         {"Connection", "Upgrade"}},
        "POST"},
       Category::wechat,
       "wechat-mmtls"},
      {"MMTLS on an IPv6 literal",
       {"http://[2001:db8::7]/mmtls/DEADBEEF", kMmtlsAgent, {{"upgrade", "MMTLS"}}, "POST"},
       Category::wechat,
       "wechat-mmtls"},
  });
}

TEST(Classifier, BytedanceOther) {
  run({
      {"Douyin web API",
       {"https://www.douyin.com/aweme/v1/web/aweme/detail/"
        "?aweme_id=7301&aid=6383&device_platform=webapp",
        kChrome},
       Category::bytedance_other,
       "douyin"},
      {"Douyin live", {"https://live.douyin.com/123456789", kChrome}, Category::bytedance_other},
      {"Douyin live webcast",
       {"https://webcast.amemv.com/webcast/room/reflow/info/", kDouyinNative},
       Category::bytedance_other},
      {"Douyin webcast host",
       {"https://webcast5-normal-c-lf.douyin.com/webcast/feed/", kDouyinNative},
       Category::bytedance_other},
      {"Douyin SSO", {"https://sso.douyin.com/get_qrcode/", kChrome}, Category::bytedance_other},
      {"Toutiao passport",
       {"https://passport.snssdk.com/passport/user/login/", kDouyinNative, kSigningHeaders, "POST"},
       Category::bytedance_other},
      {"Douyin app API on snssdk",
       {"https://aweme.snssdk.com/aweme/v1/feed/?aid=1128", kDouyinNative, kSigningHeaders},
       Category::bytedance_other},
      {"Douyin app API on amemv",
       {"https://api5-normal-lf.amemv.com/aweme/v1/feed/", kDouyinNative},
       Category::bytedance_other},
      {"Douyin images",
       {"https://p3-pc.douyinpic.com/img/aweme-avatar/abc~c5_300x300.jpeg"},
       Category::bytedance_other},
      {"Douyin video",
       {"https://v26-web.douyinvod.com/abc/video/tos/cn/x/"},
       Category::bytedance_other},
      {"zjcdn", {"https://v3-dy-o.zjcdn.com/x"}, Category::bytedance_other},
      {"Toutiao",
       {"https://www.toutiao.com/article/7301/", kChrome},
       Category::bytedance_other,
       "toutiao"},
      {"Toutiao API",
       {"https://api5-normal-lq.toutiaoapi.com/api/news/feed/v88/",
        "Dalvik/2.1.0 NewsArticle/9.3.6 cronet/TTNetVersion:3a37693c", kSigningHeaders},
       Category::bytedance_other},
      {"pstatp", {"https://s3.pstatp.com/toutiao/static/js/x.js"}, Category::bytedance_other},
      {"Xigua", {"https://www.ixigua.com/7301", kChrome}, Category::bytedance_other},
      {"CapCut", {"https://www.capcut.com/editor", kChrome}, Category::bytedance_other, "capcut"},
      {"CapCut API",
       {"https://edit-api-sg.capcut.com/lv/v1/",
        "com.lemon.lvoverseas/110000 (Linux; U; Android 13)"},
       Category::bytedance_other},
      {"Lemon8", {"https://www.lemon8-app.com/@someone", kChrome}, Category::bytedance_other},
      {"Lark", {"https://www.larksuite.com/", kChrome}, Category::bytedance_other, "lark"},
      {"Feishu",
       {"https://open.feishu.cn/open-apis/auth/v3/tenant_access_token/internal",
        "curl/8",
        {},
        "POST"},
       Category::bytedance_other},
      {"corporate", {"https://www.bytedance.com/en/", kChrome}, Category::bytedance_other},
      {"corporate infra",
       {"https://lf3-cdn-tos.bytecdn.cn/obj/static/x.js"},
       Category::bytedance_other},
      {"Volcano Engine", {"https://www.volcengine.com/", kChrome}, Category::bytedance_other},
      {"byteimg", {"https://p3.byteimg.com/tos-cn-i-0000/abc"}, Category::bytedance_other},
      {"CapCut App Store",
       {"https://apps.apple.com/us/app/capcut-video-editor/id1500855883", kSafari},
       Category::bytedance_other,
       "bytedance-store-apple"},
      {"Lemon8 App Store",
       {"https://apps.apple.com/us/app/lemon8-lifestyle-community/id1498607143", kSafari},
       Category::bytedance_other},
      {"Douyin App Store",
       {"https://apps.apple.com/cn/app/id1142110895", kSafari},
       Category::bytedance_other},
      {"CapCut Play",
       {"https://play.google.com/store/apps/details?id=com.lemon.lvoverseas", kChrome},
       Category::bytedance_other,
       "bytedance-store-google-play"},
      {"Lemon8 Play",
       {"https://play.google.com/store/apps/details?id=com.bd.nproject&hl=en", kChrome},
       Category::bytedance_other},
      {"Douyin WebView on a third-party site",
       {"https://www.example.cn/activity", kDouyinAndroidWebView},
       Category::bytedance_other,
       "douyin-webview-ua"},
      {"Douyin iOS WebView on a third-party site",
       {"https://m.example.cn/", kDouyinIosWebView},
       Category::bytedance_other},
      {"Toutiao WebView",
       {"https://news.example.cn/a/1", kToutiaoWebView},
       Category::bytedance_other,
       "toutiao-ua"},
      {"Lark desktop on a third-party site",
       {"https://docs.example.com/", kLarkDesktop},
       Category::bytedance_other,
       "lark-ua"},
      {"Douyin native on an unknown host",
       {"https://api.example.net/x", kDouyinNative},
       Category::bytedance_other,
       "bytedance-native-ua"},
      {"Lemon8 native on an unknown host",
       {"https://api.example.net/x", kLemon8Native},
       Category::bytedance_other},
      {"Douyin signing headers + aid",
       {"https://api.example.net/aweme/v1/feed/?aid=1128", "okhttp/3.12.13", kSigningHeaders},
       Category::bytedance_other,
       "bytedance-native-signed"},
      {"CapCut X-SS-DP",
       {"https://api.example.net/x", "", {{"X-SS-DP", "3006"}}},
       Category::bytedance_other},
      {"Douyin WebView on a TikTok host stays TikTok",
       {"https://www.tiktok.com/@x", kDouyinAndroidWebView},
       Category::web},
  });
}

// --- Hard negatives -------------------------------------------------------------------------

TEST(Classifier, LookalikeHostsAreNone) {
  std::vector<Case> cases;
  for (std::string_view url :
       {"https://nottiktok.com/",
        "https://www.nottiktok.com/@x",
        "https://tiktok.com.evil.example/",
        "https://www.tiktok.com.evil.example/login",
        "https://tiktokk.com/",
        "https://tiktok.co/",
        "https://tik-tok.com/",
        "https://tiktok-downloader.example/download?url=https://www.tiktok.com/@x/video/1",
        "https://ssstik.io/en",
        "https://snaptik.app/",
        "https://tiktokdownload.online/",
        "https://tiktok.eulerstream.com/webcast/sign_url",
        "https://tiktok.signer.example/webcast/fetch",
        "https://api.tikapis.com/v1/sign",
        "https://tikapis.com/",
        "https://tiktokapis.com.evil.example/",
        "https://mytiktokapis.com/",
        "https://faketiktokv.com/aweme/v1/feed/",
        "https://tiktokv.com.cn/",
        "https://tiktokcdn.com.example.org/x.jpg",
        "https://p16-tiktokcdn-com.akamaized.net.evil.example/",
        "https://xp16-tiktokcdn-com.akamaized.net/",
        "https://tiktok.example.com/",
        "https://tiktok-live-reader.example/@someone",
        "https://webcast.example.com/webcast/room/info/",
        "https://pull-flv.example-cdn.com/stage/stream-1.flv",
        "https://login.example.com/passport/",
        "https://analytics.example.com/api/v2/pixel",
        "https://analytics.google.com/g/collect",
        "https://v16-webapp.example.com/video/tos/",
        "https://musical.ly.evil.example/",
        "https://douyin.com.evil.example/",
        "https://weixin.qq.com.evil.example/",
        "https://evilweixin.qq.com/",
        "https://wxx.qq.com/",
        "https://notwechat.com/",
        "https://wechat.com.evil.example/",
        "https://tiktok/",
        "https://com/"}) {
    cases.push_back({"look-alike", {url, kChrome}, Category::none});
  }
  run(cases);
}

TEST(Classifier, SharedInfrastructureIsNone) {
  std::vector<Case> cases;
  for (std::string_view url : {
           "https://random.akamaized.net/video.mp4",
           "https://vod-progressive.akamaized.net/exp=1/x.mp4",
           "https://tiktok.akamaized.net/",
           "https://m-p16.akamaized.net/obj/x",
           "https://mpak-suse1.akamaized.net/x",
           "https://a1234.dscb.akamaiedge.net/",
           "https://www.apple.com.edgekey.net/",
           "https://a.edgesuite.net/",
           "https://d111111abcdef8.cloudfront.net/index.js",
           "https://x.cloudfront.net/",
           "https://dualstack.prod.fastly.net/",
           "https://github.map.fastly.net/",
           "https://tiktok-fastly.map.fastly.net/",
           "https://p16-va.bytefcdn-oversea.com/img/x",
           "https://sf16.bytefcdn-oversea.com/obj/x",
           "https://www.qq.com/",
           "https://v.qq.com/x/cover/abc.html",
           "https://mail.qq.com/cgi-bin/loginpage",
           "https://im.qq.com/",
           "https://y.qq.com/",
           "https://qzone.qq.com/",
           "https://puui.qpic.cn/vpic/0/x.jpg",
           "https://thirdqq.qlogo.cn/g?b=qq&nk=1",
           "https://vv.video.qq.com/getinfo",
           "https://pay.qq.com/",
           "https://www.tenpay.com/",
           "https://apps.apple.com/us/app/instagram/id389801252",
           "https://apps.apple.com/us/app/x/id8355993201",
           "https://apps.apple.com/us/app/x/id83559932",
           "https://apps.apple.com/",
           "https://itunes.apple.com/us/genre/ios/id36",
           "https://play.google.com/store/apps/details?id=com.instagram.android",
           "https://play.google.com/store/apps/details?id=com.zhiliaoapp.musically.fake",
           "https://play.google.com/store/search?q=tiktok&c=apps",
           "https://play.google.com/store/apps/details?q=com.zhiliaoapp.musically",
           "https://apps.microsoft.com/detail/9NBLGGH5L9XT",
           "https://www.apkmirror.com/apk/instagram/instagram-instagram/",
           "https://apkpure.com/instagram/com.instagram.android",
           "https://apkpure.com/search?q=tiktok",
           "https://apkcombo.com/instagram/com.instagram.android/",
           "https://instagram.en.uptodown.com/android",
           "https://tiktok-downloader.en.uptodown.com/android",
           "https://en.uptodown.com/android/search/tiktok",
       }) {
    cases.push_back({"shared infrastructure / other app", {url, kChrome}, Category::none});
  }
  run(cases);
}

TEST(Classifier, OtherBrowsersAndAppsAreNone) {
  std::vector<Case> cases;
  for (std::string_view ua : {kChrome,    kFirefox,     kSafari,          kPlainAndroidWebView,
                              kInstagram, kFacebookIos, kFacebookAndroid, kMessenger,
                              kSnapchat,  kLine,        kKakao,           kTelegram,
                              kLinkedIn,  kGoogleApp,   kWeChat,          kWeChatAndroid,
                              kWeCom,     kMmtlsAgent,  kTikTokSpider,    kBytespider,
                              kCurl}) {
    cases.push_back(
        {"third-party page", {"https://www.example.com/article/1", ua}, Category::none});
  }
  for (std::string_view ua : {
           "Mozilla/5.0 (compatible; TikTokDownloader/2.1)",
           "tiktok-scraper/1.4.40 node-fetch",
           "TikTokApi/6.2.0 python-requests/2.31.0",
           "Mozilla/5.0 Thrill_34.1 thrill_2023",
           "Mozilla/5.0 AppName/trillion app_version/1",
           "musical_ly",
           "musical_lyrics/2.0",
           "Mozilla/5.0 SkyLark/2.0 LarkLocale/en",
           "NewsArticleBot/1.0",
           "Mozilla/5.0 faweme_1.0",
           "TikTokSpider",
           "Bytespider",
           "com.zhiliaoapp.musically.fake/1.0",
           "Mozilla/5.0 (Linux; Android 13; wv) JsSdk/1.0 NetType/WIFI Channel/googleplay "
           "ByteLocale/en Region/US AppId/1233",
           "Mozilla/5.0 ... TikTok",
           "TikTok",
           "TikTok-Live-Connector/1.0",
       }) {
    cases.push_back({"tiktok-ish User-Agent", {"https://www.example.com/", ua}, Category::none});
  }
  cases.push_back(
      {"WeChat UA on a third-party page, with WeChat-ish headers",
       {"https://shop.example.cn/", kWeChatAndroid, {{"X-Requested-With", "com.tencent.mm"}}},
       Category::none});
  cases.push_back({"X-Requested-With of another app",
                   {"https://example.com/",
                    kPlainAndroidWebView,
                    {{"X-Requested-With", "com.instagram.android"}}},
                   Category::none});
  cases.push_back(
      {"X-Requested-With prefix of TikTok's",
       {"https://example.com/", kPlainAndroidWebView, {{"X-Requested-With", "com.zhiliaoapp"}}},
       Category::none});
  cases.push_back({"crawler vetoed",
                   {"https://www.example.com/", kTikTokSpider},
                   Category::none,
                   "bytedance-crawler"});
  cases.push_back({"Bytespider vetoed",
                   {"https://www.example.com/", kBytespider},
                   Category::none,
                   "bytedance-crawler"});
  cases.push_back({"TikTok's crawler on tiktok.com is still the website",
                   {"https://www.tiktok.com/@x", kTikTokSpider},
                   Category::web});
  run(cases);
}

TEST(Classifier, ArrivedFromTikTokIsNotTikTok) {
  run({
      {"Referer tiktok",
       {"https://shop.example.com/p/1", kChrome, {{"Referer", "https://www.tiktok.com/"}}},
       Category::none},
      {"Origin tiktok",
       {"https://api.shop.example.com/cart",
        kChrome,
        {{"Origin", "https://www.tiktok.com"}},
        "POST"},
       Category::none},
      {"utm_source",
       {"https://shop.example.com/p/1?utm_source=tiktok&utm_medium=paid", kSafari},
       Category::none},
      {"ttclid", {"https://shop.example.com/p/1?ttclid=E.C.P.CsABabc", kSafari}, Category::none},
      {"tiktok in the path",
       {"https://www.google.com/search?q=tiktok+ban", kChrome},
       Category::none},
      {"encyclopedia", {"https://en.wikipedia.org/wiki/TikTok", kChrome}, Category::none},
      {"code host", {"https://github.com/davidteather/TikTok-Api", kChrome}, Category::none},
      {"package registry", {"https://pypi.org/project/TikTokApi/", kChrome}, Category::none},
      {"npm",
       {"https://registry.npmjs.org/tiktok-live-connector", "npm/10.2.4 node/v20.11.0"},
       Category::none},
      {"public CDN with a TikTok client",
       {"https://cdn.jsdelivr.net/npm/tiktok-live-connector/dist/index.js", kChrome},
       Category::none},
      {"app path on a third-party host",
       {"https://api.example.com/aweme/v1/feed/?aid=1233", kChrome},
       Category::none},
      {"passport path on a third-party host",
       {"https://example.com/passport/web/account/info/", kChrome},
       Category::none},
      {"webcast path on a third-party host",
       {"https://example.com/webcast/room/info/", kChrome},
       Category::none},
      {"signing headers without an app id",
       {"https://api.example.net/x", "okhttp/3.12.13", kSigningHeaders},
       Category::none},
      {"app id without signing headers",
       {"https://api.example.net/x?aid=1233&app_name=musical_ly", "okhttp/3.12.13"},
       Category::none},
      {"X-SS-DP of an unknown app",
       {"https://api.example.net/x", "", {{"X-SS-DP", "9999"}}},
       Category::none},
      {"Meta pixel", {"https://connect.facebook.net/en_US/fbevents.js", kChrome}, Category::none},
      {"Google tag", {"https://www.googletagmanager.com/gtag/js?id=G-1", kChrome}, Category::none},
      {"Snap pixel", {"https://tr.snapchat.com/p", kChrome, {}, "POST"}, Category::none},
      {"Pinterest tag", {"https://ct.pinterest.com/v3/", kChrome}, Category::none},
      {"Firebase",
       {"https://firebaselogging-pa.googleapis.com/v1/firelog/legacy/batchlog", "okhttp/4.9"},
       Category::none},
      {"MMTLS shape but GET",
       {"http://203.0.113.7/mmtls/0000a1b2", kMmtlsAgent, {{"Upgrade", "mmtls"}}, "GET"},
       Category::none},
      {"MMTLS path without Upgrade",
       {"http://203.0.113.7/mmtls/0000a1b2", kMmtlsAgent, {}, "POST"},
       Category::none},
      {"MMTLS Upgrade on another path",
       {"http://203.0.113.7/upload/0000a1b2", kMmtlsAgent, {{"Upgrade", "mmtls"}}, "POST"},
       Category::none},
      {"MMTLS non-hex",
       {"http://203.0.113.7/mmtls/xyz", kMmtlsAgent, {{"Upgrade", "mmtls"}}, "POST"},
       Category::none},
      {"bare MicroMessenger Client",
       {"http://203.0.113.7/", kMmtlsAgent, {}, "POST"},
       Category::none},
  });
}

// --- Evidence -------------------------------------------------------------------------------

bool has_evidence(const Classification& c, EvidenceKind kind, std::string_view signature,
                  std::string_view matched = "") {
  return std::any_of(c.evidence.begin(), c.evidence.end(), [&](const Evidence& e) {
    return e.kind == kind && e.signature == signature && (matched.empty() || e.matched == matched);
  });
}

TEST(ClassifierEvidence, InAppUserAgentOnTheWebsiteIsEvidenceNotTheDecision) {
  auto result = classify({"https://www.tiktok.com/@someone", kTikTokAndroidWebView});
  EXPECT_EQ(result.category, Category::web);
  EXPECT_EQ(result.decided_by, "tiktok-website");
  ASSERT_FALSE(result.evidence.empty()) << describe(result);
  EXPECT_EQ(result.evidence[0].kind, EvidenceKind::host);
  EXPECT_EQ(result.evidence[0].signature, "tiktok-website");
  EXPECT_EQ(result.evidence[0].matched, "tiktok.com");
  EXPECT_EQ(result.evidence[0].category, Category::web);
  EXPECT_TRUE(has_evidence(result, EvidenceKind::user_agent, "tiktok-webview-ua", "musical_ly_{v}"))
      << describe(result);
  EXPECT_TRUE(has_evidence(result, EvidenceKind::user_agent, "bytedance-webview-ua"));
  for (const auto& e : result.evidence) {
    if (e.signature == "tiktok-webview-ua") {
      EXPECT_EQ(e.category, Category::in_app_browser);
    }
  }
}

TEST(ClassifierEvidence, AppRequestCarriesHostUserAgentHeadersAndQuery) {
  auto result = classify(
      {std::string("https://api16-normal-c-useast1a.tiktokv.com/aweme/v1/feed/") + kAppQuery,
       kTikTokAndroidNative, kSigningHeaders});
  EXPECT_EQ(result.category, Category::app_api);
  EXPECT_EQ(result.decided_by, "tiktok-app-path") << describe(result);
  EXPECT_EQ(result.evidence[0].kind, EvidenceKind::path);
  EXPECT_EQ(result.evidence[0].matched, "/aweme/v{n}/");
  EXPECT_TRUE(has_evidence(result, EvidenceKind::host, "tiktok-app-backend", "tiktokv.com"));
  EXPECT_TRUE(has_evidence(result, EvidenceKind::user_agent, "tiktok-native-ua",
                           "com.zhiliaoapp.musically/"));
  EXPECT_TRUE(has_evidence(result, EvidenceKind::header, "tiktok-native-signed", "X-Gorgon"));
  EXPECT_TRUE(has_evidence(result, EvidenceKind::query, "tiktok-native-signed", "aid=1233"));
  EXPECT_TRUE(has_evidence(result, EvidenceKind::header, "bytedance-client-headers", "X-Gorgon"));
  // Strongest first: evidence follows the precedence of the signatures that produced it.
  auto position = [&](std::string_view signature) {
    return std::find_if(result.evidence.begin(), result.evidence.end(),
                        [&](const Evidence& e) { return e.signature == signature; }) -
           result.evidence.begin();
  };
  EXPECT_LT(position("tiktok-app-path"), position("tiktok-app-backend"));
  EXPECT_LT(position("tiktok-app-backend"), position("tiktok-native-ua"));
  EXPECT_LT(position("tiktok-native-ua"), position("bytedance-client-headers"));
}

TEST(ClassifierEvidence, RefinementsComeBeforeTheFamily) {
  auto live = classify({"https://webcast.tiktok.com/webcast/room/info/?aid=1988", kChrome});
  ASSERT_GE(live.evidence.size(), 3u) << describe(live);
  EXPECT_EQ(live.evidence[0].signature, "tiktok-live-host");
  EXPECT_EQ(live.evidence[0].matched, "webcast");
  EXPECT_TRUE(has_evidence(live, EvidenceKind::path, "tiktok-live-path", "/webcast/"));
  EXPECT_TRUE(has_evidence(live, EvidenceKind::host, "tiktok-website", "tiktok.com"));

  auto gift = classify({"https://p16-webcast.tiktokcdn.com/img/x.png"});
  EXPECT_EQ(gift.category, Category::media_cdn);
  EXPECT_FALSE(has_evidence(gift, EvidenceKind::host, "tiktok-live-host"));
}

TEST(ClassifierEvidence, DouyinWebViewShowsTheBareContainerToo) {
  auto result = classify({"https://www.example.cn/", kDouyinAndroidWebView});
  EXPECT_EQ(result.category, Category::bytedance_other);
  ASSERT_GE(result.evidence.size(), 2u);
  EXPECT_EQ(result.evidence[0].signature, "douyin-webview-ua");
  EXPECT_TRUE(
      has_evidence(result, EvidenceKind::user_agent, "bytedance-webview-ua", "BytedanceWebview/"));
  EXPECT_FALSE(has_evidence(result, EvidenceKind::user_agent, "tiktok-webview-ua"));
}

TEST(ClassifierEvidence, InformationalEvidenceDoesNotDecide) {
  auto ad = classify({"https://shop.example.com/?utm_source=tiktok&ttclid=abc", kChrome});
  EXPECT_EQ(ad.category, Category::none);
  EXPECT_EQ(ad.decided_by, "");
  ASSERT_EQ(ad.evidence.size(), 1u);
  EXPECT_EQ(ad.evidence[0].signature, "tiktok-ad-click");
  EXPECT_EQ(ad.evidence[0].kind, EvidenceKind::query);
  EXPECT_EQ(ad.evidence[0].category, Category::none);

  auto unconfirmed = classify({"https://m-p16.akamaized.net/obj/x"});
  EXPECT_EQ(unconfirmed.category, Category::none);
  EXPECT_TRUE(has_evidence(unconfirmed, EvidenceKind::host, "tiktok-media-shared-cdn-unconfirmed"));

  auto headers_only = classify({"https://api.example.net/x", "okhttp/3.12.13", kSigningHeaders});
  EXPECT_EQ(headers_only.category, Category::none);
  EXPECT_TRUE(has_evidence(headers_only, EvidenceKind::header, "bytedance-client-headers"));

  auto nothing = classify({"https://www.example.com/", kChrome});
  EXPECT_TRUE(nothing.evidence.empty());
}

TEST(ClassifierEvidence, CrawlerVetoExplainsItself) {
  auto result = classify({"https://www.example.com/", kTikTokSpider});
  EXPECT_EQ(result.category, Category::none);
  EXPECT_EQ(result.decided_by, "bytedance-crawler");
  ASSERT_EQ(result.evidence.size(), 1u);
  EXPECT_EQ(result.evidence[0].matched, "TikTokSpider");
}

// --- The connection stage: SNI or CONNECT host only -----------------------------------------

TEST(ClassifyHost, DecidesWhatTheNameAloneCanTell) {
  struct HostCase {
    std::string_view host;
    Category expected;
  };
  for (const HostCase& c : std::initializer_list<HostCase>{
           {"api16-normal-c-useast1a.tiktokv.com", Category::app_api},
           {"log22-normal-alisg.tiktokv.com", Category::app_api},
           {"www.tiktok.com", Category::web},
           {"open.tiktokapis.com", Category::web},
           {"analytics.tiktok.com", Category::analytics_sdk},
           {"business-api.tiktok.com", Category::analytics_sdk},
           {"api16-access-sg.pangle.io", Category::analytics_sdk},
           {"webcast.tiktok.com", Category::live},
           {"im-ws-va.tiktok.com", Category::live},
           {"im-api-va.tiktok.com", Category::web},
           {"pull-flv-f16-va01.tiktokcdn.com", Category::live},
           {"login.tiktok.com", Category::auth},
           {"p16-sign-va.tiktokcdn.com", Category::media_cdn},
           {"p16-webcast.tiktokcdn.com", Category::media_cdn},
           {"v16-webapp-prime.tiktok.com", Category::media_cdn},
           {"p16-tiktokcdn-com.akamaized.net", Category::media_cdn},
           {"www.douyin.com", Category::bytedance_other},
           {"short.weixin.qq.com", Category::wechat},
           {"mmbiz.qpic.cn", Category::wechat},
           {"tiktok.en.uptodown.com", Category::app_distribution},
           {"apps.apple.com", Category::none},
           {"play.google.com", Category::none},
           {"random.akamaized.net", Category::none},
           {"qq.com", Category::none},
           {"203.0.113.7", Category::none},
           {"2001:db8::1", Category::none},
           {"example.com", Category::none},
           {"", Category::none},
       }) {
    auto result = catalog().classify_host(c.host);
    EXPECT_EQ(result.category, c.expected) << c.host << ": " << describe(result);
  }
}

TEST(ClassifyHost, AgreesWithAHostOnlyRequest) {
  for (std::string_view host : {"www.tiktok.com", "login-no1a.www.tiktok.com", "apps.apple.com",
                                "v19.tiktokcdn.com.akamaized.net", "wx.qq.com"}) {
    RequestFacts facts;
    facts.host = host;
    auto a = catalog().classify_host(host);
    auto b = catalog().classify(facts);
    EXPECT_EQ(a.category, b.category) << host;
    EXPECT_EQ(a.decided_by, b.decided_by) << host;
    EXPECT_EQ(a.evidence.size(), b.evidence.size()) << host;
  }
}

// --- Label boundaries, case and odd input ---------------------------------------------------

TEST(ClassifierHosts, MatchOnLabelBoundariesOnly) {
  for (std::string_view suffix : {"tiktok.com", "tiktokv.com", "tiktokcdn.com", "douyin.com",
                                  "weixin.qq.com", "pangle.io", "ttlivecdn.com"}) {
    std::string s(suffix);
    EXPECT_NE(catalog().classify_host(s).category, Category::none) << s;
    EXPECT_NE(catalog().classify_host("a.b." + s).category, Category::none) << s;
    EXPECT_EQ(catalog().classify_host("x" + s).category, Category::none) << s;
    EXPECT_EQ(catalog().classify_host("x-" + s).category, Category::none) << s;
    EXPECT_EQ(catalog().classify_host(s + ".evil.example").category, Category::none) << s;
    EXPECT_EQ(catalog().classify_host(s + "x").category, Category::none) << s;
    // Normalised input is assumed; anything else simply does not match (and does not crash).
    EXPECT_EQ(catalog().classify_host(s + ".").category, Category::none) << s;
  }
  // Through normalize_host, case, trailing dots and IDNA fold to the catalog's form.
  for (std::string_view raw :
       {"WWW.TikTok.COM", "www.tiktok.com.", "ｗｗｗ．ｔｉｋｔｏｋ．ｃｏｍ"}) {
    auto host = normalize_host(raw);
    ASSERT_TRUE(host) << raw;
    EXPECT_EQ(catalog().classify_host(*host).category, Category::web) << raw;
  }
  auto idn = normalize_host("tiktök.com");
  ASSERT_TRUE(idn);
  EXPECT_EQ(catalog().classify_host(*idn).category, Category::none);
}

TEST(ClassifierHosts, HostileRequestsDoNotMisbehave) {
  std::string huge_path = "/" + std::string(100'000, 'a') + "/passport/";
  std::string huge_ua(200'000, 'm');
  huge_ua += " musical_ly_1";
  std::string huge_query;
  for (int i = 0; i < 5000; ++i) huge_query += "aid=1&";
  huge_query += "aid=1233";
  std::vector<HeaderView> headers(2000, HeaderView{"X-Gorgon", "0404"});
  headers.push_back({std::string_view("\0\xff", 2), std::string_view("\0", 1)});
  headers.push_back({"", ""});
  RequestFacts facts;
  facts.host = "api.example.net";
  facts.path = huge_path;
  facts.user_agent = huge_ua;
  facts.query = huge_query;
  facts.headers = headers;
  auto result = catalog().classify(facts);
  EXPECT_EQ(result.category, Category::in_app_browser) << describe(result);
  facts.host = "www.tiktok.com";
  EXPECT_EQ(catalog().classify(facts).category, Category::auth);

  facts = {};
  facts.host = std::string_view("www.tiktok.com\0.evil", 20);
  EXPECT_EQ(catalog().classify(facts).category, Category::none);
  facts.host = "....";
  facts.user_agent = "%";
  facts.query = "&&&=&%&%4&%zz=";
  facts.path = "*";
  EXPECT_EQ(catalog().classify(facts).category, Category::none);
}

// A bounded random walk over hosts, paths, User-Agents, headers and queries built from the
// catalog's own fragments and random bytes: never a crash, results always well-formed.
TEST(ClassifierProperty, RandomRequestsNeverCrash) {
  std::mt19937 rng(20240313);
  const std::vector<std::string> labels{"tiktok",
                                        "com",
                                        "tiktokv",
                                        "www",
                                        "api16-normal-c-useast1a",
                                        "webcast",
                                        "pull-flv",
                                        "qq",
                                        "weixin",
                                        "akamaized",
                                        "net",
                                        "p16-tiktokcdn-com",
                                        "apps",
                                        "apple",
                                        "v16-webapp",
                                        "login",
                                        "x-ws-y",
                                        "analytics",
                                        "",
                                        "-",
                                        "xn--bcher-kva",
                                        "douyin",
                                        "1",
                                        "255",
                                        "a_b"};
  const std::vector<std::string> fragments{"musical_ly_",
                                           "34.1",
                                           "trill_",
                                           "AppName/",
                                           "musical_ly",
                                           "BytedanceWebview/",
                                           "aweme_",
                                           "TikTok ",
                                           "rv:",
                                           "/",
                                           "/passport/",
                                           "/aweme/v",
                                           "1",
                                           "/mmtls/",
                                           "ff",
                                           "id835599320",
                                           "Mozilla/5.0 ",
                                           "%",
                                           "&",
                                           "=",
                                           "aid",
                                           "1233",
                                           ";",
                                           " ",
                                           "\xff",
                                           std::string(1, '\0'),
                                           "{n}"};
  auto pick = [&](const std::vector<std::string>& from) -> const std::string& {
    return from[std::uniform_int_distribution<std::size_t>(0, from.size() - 1)(rng)];
  };
  auto random_text = [&](int max_parts) {
    std::string out;
    int parts = std::uniform_int_distribution<int>(0, max_parts)(rng);
    for (int i = 0; i < parts; ++i) {
      if (rng() % 4 == 0) {
        out.push_back(static_cast<char>(rng() % 256));
      } else {
        out += pick(fragments);
      }
    }
    return out;
  };
  const std::vector<std::string> header_names{"X-Gorgon", "x-ss-dp", "Upgrade", "X-Requested-With",
                                              "Referer",  "",        "\x01"};
  std::size_t targeted = 0;
  for (int iteration = 0; iteration < 20000; ++iteration) {
    std::string host;
    int count = std::uniform_int_distribution<int>(0, 5)(rng);
    for (int i = 0; i < count; ++i) {
      if (i > 0) host += rng() % 8 == 0 ? "" : ".";
      host += rng() % 10 == 0 ? std::string(1, static_cast<char>(rng() % 256)) : pick(labels);
    }
    std::string path = random_text(6);
    std::string query = random_text(6);
    std::string ua = random_text(10);
    std::vector<std::string> values;
    std::vector<HeaderView> headers;
    int header_count = std::uniform_int_distribution<int>(0, 4)(rng);
    values.reserve(header_count);
    for (int i = 0; i < header_count; ++i) {
      values.push_back(random_text(3));
      headers.push_back({pick(header_names), values.back()});
    }
    RequestFacts facts;
    facts.host = host;
    facts.path = path;
    facts.query = query;
    facts.user_agent = ua;
    facts.method = rng() % 2 ? "POST" : "GET";
    facts.headers = headers;
    auto result = catalog().classify(facts);
    ASSERT_LT(static_cast<std::size_t>(result.category), kCategoryCount);
    if (result.category != Category::none) {
      ASSERT_FALSE(result.decided_by.empty());
      ASSERT_FALSE(result.evidence.empty());
      ASSERT_EQ(result.evidence[0].signature, result.decided_by);
      ++targeted;
    }
    for (const auto& e : result.evidence) {
      ASSERT_FALSE(e.signature.empty());
      ASSERT_FALSE(e.matched.empty());
      ASSERT_LT(static_cast<std::size_t>(e.kind), 6u);
    }
    auto sni = catalog().classify_host(host);
    ASSERT_LT(static_cast<std::size_t>(sni.category), kCategoryCount);
  }
  EXPECT_GT(targeted, 100u) << "the walk should reach the catalog, not only miss it";
}

}  // namespace
}  // namespace tokgate::policy
