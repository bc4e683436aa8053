"""Which proxy a URL goes through: the setting, else the environment as curl reads it."""

from __future__ import annotations

import base64

import pytest

from agent.http import DIRECT, ProxySettingError, parse_proxy, proxy_for
from agent.http._proxy import bypasses

HTTPS = "https://cloudauth.aliyuncs.com/"
HTTP = "http://mes.factory.lan/reports"


def via(url: str, setting: str = "", **environ: str) -> str | None:
    proxy = proxy_for(url, setting=setting, setting_name="[cloud] proxy", environ=environ)
    return None if proxy is None else f"{proxy} from {proxy.source}"


def test_https_reads_lower_case_first_then_upper_case_then_all_proxy() -> None:
    assert (
        via(HTTPS, https_proxy="p1:3128", HTTPS_PROXY="p2:3128")
        == "http://p1:3128 from environment variable https_proxy"
    )
    assert via(HTTPS, HTTPS_PROXY="p2:3128") == "http://p2:3128 from environment variable HTTPS_PROXY"
    assert via(HTTPS, all_proxy="p3:8080", ALL_PROXY="p4:8080") == "http://p3:8080 from environment variable all_proxy"
    assert via(HTTPS, ALL_PROXY="p4:8080") == "http://p4:8080 from environment variable ALL_PROXY"
    assert via(HTTPS) is None


def test_http_ignores_upper_case_http_proxy_as_curl_does() -> None:
    """A CGI environment sets HTTP_PROXY from a request's Proxy: header ("httpoxy"): never trusted."""
    assert via(HTTP, HTTP_PROXY="evil:80") is None
    assert (
        via(HTTP, http_proxy="p1:3128", HTTP_PROXY="evil:80") == "http://p1:3128 from environment variable http_proxy"
    )
    assert via(HTTP, https_proxy="p2:3128") is None  # the other scheme's variable does not apply


def test_an_empty_variable_counts_as_unset() -> None:
    assert via(HTTPS, https_proxy="", HTTPS_PROXY="p2:3128") == "http://p2:3128 from environment variable HTTPS_PROXY"


@pytest.mark.parametrize(
    ("no_proxy", "host", "bypassed"),
    [
        ("*", "cloudauth.aliyuncs.com", True),
        ("aliyuncs.com", "cloudauth.aliyuncs.com", True),
        (".aliyuncs.com", "cloudauth.aliyuncs.com", True),
        ("aliyuncs.com", "aliyuncs.com", True),
        ("ALIYUNCS.COM", "cloudauth.aliyuncs.com", True),
        ("yuncs.com", "cloudauth.aliyuncs.com", False),  # a name matches at a dot, not anywhere
        ("mes.lan, cloudauth.aliyuncs.com", "cloudauth.aliyuncs.com", True),
        ("10.0.0.0/8", "10.1.2.3", True),
        ("10.0.0.0/8", "11.1.2.3", False),
        ("10.1.2.3", "10.1.2.3", True),
        ("[::1]", "::1", True),
        ("fd00::/8", "[fd12::1]", True),
        ("localhost", "127.0.0.1", False),  # a name never matches an address
        ("", "cloudauth.aliyuncs.com", False),
    ],
)
def test_no_proxy_matches_as_curl_does(no_proxy: str, host: str, bypassed: bool) -> None:
    assert bypasses(host, no_proxy) is bypassed


def test_no_proxy_lower_case_wins_and_applies_only_to_the_environment() -> None:
    assert via(HTTPS, https_proxy="p:1", no_proxy="aliyuncs.com", NO_PROXY="other") is None
    assert via(HTTPS, https_proxy="p:1", NO_PROXY="aliyuncs.com") is None
    assert via(HTTPS, "http://set:3128", no_proxy="*") == "http://set:3128 from [cloud] proxy"


def test_the_setting_overrides_the_environment_and_direct_means_none() -> None:
    assert via(HTTPS, "http://set:3128", https_proxy="env:1") == "http://set:3128 from [cloud] proxy"
    assert via(HTTPS, DIRECT, https_proxy="env:1") is None
    assert via(HTTPS, " Direct ", https_proxy="env:1") is None


def test_a_proxy_url_as_curl_takes_it() -> None:
    proxy = parse_proxy("user%40corp:p%3Ass@proxy.lan", source="t")
    assert (proxy.host, proxy.port) == ("proxy.lan", 1080)  # curl's default proxy port
    assert proxy.authorization is not None
    assert proxy.authorization.reveal() == "Basic " + base64.b64encode(b"user@corp:p:ss").decode()
    assert str(proxy) == "http://proxy.lan:1080"
    assert "p:ss" not in repr(proxy)
    assert "p%3Ass" not in repr(proxy)
    assert parse_proxy("[fd00::1]:3128", source="t").host == "fd00::1"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("socks5://user:hunter2@p:1080", "socks5:// proxies are not supported"),
        ("https://user:hunter2@p:443", "https:// proxies are not supported"),
        ("http://user:hunter2@p:3128/path", "without a path"),
        ("http://user:hunter2@p:99999", "not a proxy URL"),
        ("http://user:hunter2@:3128", "no host"),
    ],
)
def test_an_unusable_proxy_is_refused_naming_its_source_never_its_password(url: str, says: str) -> None:
    with pytest.raises(ProxySettingError, match=says) as caught:
        proxy_for(HTTPS, environ={"HTTPS_PROXY": url})
    assert "HTTPS_PROXY" in str(caught.value)
    assert "hunter2" not in str(caught.value)
