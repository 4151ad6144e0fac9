"""Stateless REGISTER cookies."""

from relay.protocol.cookie import CookieJar, derive_cookie_key

USER = b"6f1c2a4e-8d3b-4c5a-9e7f-0123456789ab"
CE = bytes(range(32))
ADDRESS = ("127.0.0.1", 40000)


def jar() -> CookieJar:
    return CookieJar(derive_cookie_key(bytes(32)), lifetime_ms=30_000)


def test_cookie_accepted_within_lifetime():
    cookie = jar().mint(ADDRESS, USER, CE, now_ms=1_000)
    assert len(cookie) == 32
    assert jar().check(cookie, ADDRESS, USER, CE, now_ms=31_000)


def test_cookie_expires():
    cookie = jar().mint(ADDRESS, USER, CE, now_ms=1_000)
    assert not jar().check(cookie, ADDRESS, USER, CE, now_ms=31_001)


def test_cookie_bound_to_address_user_and_key():
    cookie = jar().mint(ADDRESS, USER, CE, now_ms=0)
    assert not jar().check(cookie, ("127.0.0.1", 40001), USER, CE, 0)
    assert not jar().check(cookie, ("127.0.0.2", 40000), USER, CE, 0)
    assert not jar().check(cookie, ADDRESS, USER[:-1] + b"c", CE, 0)
    assert not jar().check(cookie, ADDRESS, USER, bytes(32), 0)


def test_cookie_forged_expiry_rejected():
    cookie = jar().mint(ADDRESS, USER, CE, now_ms=0)
    later = (10_000).to_bytes(8, "big") + cookie[8:]
    assert not jar().check(later, ADDRESS, USER, CE, 5_000)


def test_cookie_far_future_expiry_rejected():
    other = CookieJar(derive_cookie_key(bytes(32)), lifetime_ms=3_600_000)
    cookie = other.mint(ADDRESS, USER, CE, now_ms=0)
    assert not jar().check(cookie, ADDRESS, USER, CE, 0)


def test_cookie_from_other_relay_key_rejected():
    other = CookieJar(derive_cookie_key(bytes([1]) * 32), lifetime_ms=30_000)
    cookie = other.mint(ADDRESS, USER, CE, now_ms=0)
    assert not jar().check(cookie, ADDRESS, USER, CE, 0)
