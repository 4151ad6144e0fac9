"""Attacks on REGISTER against the real relay: cookies, signatures and the key binding.

A refused REGISTER gets a plain ERROR no larger than itself, echoing its
ce_public, and opens no session.
"""

import os
import threading
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from relay.client.identity import Identity
from relay.protocol import codec
from relay.protocol.constants import (
    COOKIE_SIZE,
    HEADER_SIZE,
    REGISTER_SIGNATURE_CONTEXT,
    ErrorCode,
    PacketType,
)
from relay.protocol.crypto import x25519_public_bytes
from tests.adversarial.tools import (
    bind_udp,
    collect,
    error_code,
    metric,
    receive_all,
    register_datagram,
    scrape,
    sign_register,
    signed_part,
)
from tests.security_figures import record

pytestmark = pytest.mark.e2e

figures: dict[str, object] = {}


@pytest.fixture(scope="module", autouse=True)
def record_figures():
    yield
    record("adversarial_registration", figures)


@pytest.fixture(scope="module")
def relay(relay_factory):
    # Every attempt comes from 127.0.0.1, so the per-address REGISTER rate
    # is raised above the number of attempts in this module.
    return relay_factory(RATE_REGISTER_PER_IP=10_000)


class Attempt:
    """One handshake, done by hand from one socket, so that any field can be forged."""

    def __init__(
        self, relay, identity: Identity | None = None, host: str = "127.0.0.1"
    ):
        self.relay = relay
        self.identity = identity or Identity.generate()
        self.ce_public = x25519_public_bytes(X25519PrivateKey.generate())
        self.socket = bind_udp(host)

    def first(self) -> bytes:
        return register_datagram(self.identity, self.ce_public, bytes(COOKIE_SIZE))

    def cookie(self) -> bytes:
        (challenge,) = self.exchange(self.first())
        assert challenge[1] == PacketType.CHALLENGE, challenge.hex()
        return challenge[HEADER_SIZE:]

    def signed(self, cookie: bytes) -> bytes:
        unsigned = register_datagram(self.identity, self.ce_public, cookie)
        return sign_register(self.identity, self.relay.relay_public_key, unsigned)

    def send(self, datagram: bytes) -> None:
        self.socket.sendto(datagram, self.relay.udp_address)

    def exchange(self, datagram: bytes) -> list[bytes]:
        self.send(datagram)
        return receive_all(self.socket)

    def refused(self, datagram: bytes, code: ErrorCode) -> None:
        """Send a REGISTER that must get one ERROR with this code, and nothing else."""
        (reply,) = self.exchange(datagram)
        assert error_code(reply) == code
        assert len(reply) <= len(datagram)
        echo = codec.decode_error(reply[HEADER_SIZE:]).echo
        assert echo == self.ce_public[:24]

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def attempts(relay):
    made: list[Attempt] = []

    def make(identity=None, host="127.0.0.1", on=None) -> Attempt:
        attempt = Attempt(on or relay, identity, host)
        made.append(attempt)
        return attempt

    yield make
    for attempt in made:
        attempt.close()


def live_sessions(relay) -> float:
    return metric(scrape(relay), "relay_active_connections")


# --- cookies ------------------------------------------------------------------------


def test_stale_cookie_forbidden(relay_factory, attempts):
    short_lived = relay_factory(COOKIE_LIFETIME_S=1)
    attempt = attempts(on=short_lived)
    cookie = attempt.cookie()
    threading.Event().wait(1.2)
    attempt.refused(attempt.signed(cookie), ErrorCode.FORBIDDEN)
    assert live_sessions(short_lived) == 0


def test_cookie_from_other_port_forbidden(relay, attempts):
    owner = attempts()
    thief = attempts(identity=owner.identity)
    thief.ce_public = owner.ce_public
    cookie = owner.cookie()
    thief.refused(owner.signed(cookie), ErrorCode.FORBIDDEN)
    assert receive_all(owner.socket, first_s=0.3) == []


def test_cookie_from_other_ip_forbidden(relay, attempts):
    owner = attempts()
    thief = attempts(identity=owner.identity, host="127.0.0.77")
    thief.ce_public = owner.ce_public
    thief.refused(owner.signed(owner.cookie()), ErrorCode.FORBIDDEN)


def test_cookie_of_other_user_forbidden(relay, attempts):
    alice = attempts()
    cookie = alice.cookie()
    mallory = attempts()
    # Same socket and same ce_public as Alice's handshake, but Mallory's user id.
    mallory.socket.close()
    mallory.socket = alice.socket
    mallory.ce_public = alice.ce_public
    mallory.refused(mallory.signed(cookie), ErrorCode.FORBIDDEN)


def test_cookie_with_other_ce_key_forbidden(relay, attempts):
    attempt = attempts()
    cookie = attempt.cookie()
    attempt.ce_public = x25519_public_bytes(X25519PrivateKey.generate())
    attempt.refused(attempt.signed(cookie), ErrorCode.FORBIDDEN)


def test_forged_cookies_forbidden(relay, attempts):
    attempt = attempts()
    expiry_soon = (int.from_bytes(os.urandom(2), "big") + 1_900_000_000_000).to_bytes(
        8, "big"
    )
    forged = [os.urandom(COOKIE_SIZE), b"\xff" * COOKIE_SIZE, expiry_soon + bytes(24)]
    for cookie in forged:
        attempt.refused(attempt.signed(cookie), ErrorCode.FORBIDDEN)
    figures["forged_cookies_forbidden"] = len(forged)


def test_cookie_reuse_after_its_session(relay, attempts):
    attempt = attempts()
    signed = attempt.signed(attempt.cookie())
    (registered,) = attempt.exchange(signed)
    assert registered[1] == PacketType.REGISTERED
    # A retry while the session lives gets the identical datagram, byte for byte.
    assert attempt.exchange(signed) == [registered]
    # A newer registration replaces that session: the old cookie is now spent.
    newer = attempts(identity=attempt.identity)
    (newer_registered,) = newer.exchange(newer.signed(newer.cookie()))
    assert newer_registered[1] == PacketType.REGISTERED
    attempt.refused(signed, ErrorCode.FORBIDDEN)
    figures["cookie_reuse_after_session_forbidden"] = True


# The per-address reply limit at its defaults: a burst of 100, then 100 a
# second.
REPLY_BURST = 100
REPLIES_PER_S = 100
REPEATS = 3000


@pytest.mark.parametrize(
    ("outcome", "owner_host", "flood_host"),
    [
        ("REGISTERED", "127.0.0.91", "127.0.0.91"),
        ("KEY_CONFLICT", "127.0.0.92", "127.0.0.93"),
    ],
)
def test_register_repeats_within_reply_rate(
    relay, attempts, outcome, owner_host, flood_host
):
    """A spent REGISTER sent again and again gets replies within the reply limit."""
    # Each case floods from an address whose buckets no earlier test used.
    owner = attempts(host=owner_host)

    if outcome == "REGISTERED":
        attempt = owner
    else:
        owner.exchange(owner.signed(owner.cookie()))
        impostor = Identity(
            owner.identity.user_id,
            Ed25519PrivateKey.generate(),
            X25519PrivateKey.generate(),
        )
        attempt = attempts(identity=impostor, host=flood_host)

    signed = attempt.signed(attempt.cookie())
    (first,) = attempt.exchange(signed)
    if outcome == "REGISTERED":
        assert first[1] == PacketType.REGISTERED
    else:
        assert error_code(first) == ErrorCode.KEY_CONFLICT

    started = time.monotonic()
    for _ in range(REPEATS):
        attempt.send(signed)
    replies = receive_all(attempt.socket, quiet_s=0.3)
    elapsed = time.monotonic() - started

    answers = len(replies)
    assert set(replies) == {first}
    assert answers <= REPLY_BURST + REPLIES_PER_S * elapsed + 1, (answers, elapsed)
    figures[f"repeated_{outcome.lower()}_answers"] = {
        "datagrams_sent": REPEATS,
        "answers": answers,
        "seconds": round(elapsed, 2),
    }


# --- signatures -------------------------------------------------------------------


def _signature_forgeries(attempt: Attempt, cookie: bytes, relay_public: bytes) -> dict:
    """Return REGISTERs whose signature covers the wrong bytes, by what is wrong."""
    identity = attempt.identity
    unsigned = register_datagram(identity, attempt.ce_public, cookie)
    fields = signed_part(unsigned)

    def signed_over(message: bytes, key: Ed25519PrivateKey | None = None) -> bytes:
        return fields + (key or identity.signing_key).sign(message)

    other_cookie = os.urandom(COOKIE_SIZE)
    with_other_cookie = signed_part(
        register_datagram(identity, attempt.ce_public, other_cookie)
    )
    stranger = Ed25519PrivateKey.generate()
    return {
        "without_header": signed_over(
            REGISTER_SIGNATURE_CONTEXT + relay_public + fields[8:]
        ),
        "without_relay_key": signed_over(REGISTER_SIGNATURE_CONTEXT + fields),
        "without_context": signed_over(relay_public + fields),
        "other_relay_key": signed_over(
            REGISTER_SIGNATURE_CONTEXT + os.urandom(32) + fields
        ),
        "over_other_cookie": signed_over(
            REGISTER_SIGNATURE_CONTEXT + relay_public + with_other_cookie
        ),
        "by_other_key": signed_over(
            REGISTER_SIGNATURE_CONTEXT + relay_public + fields, stranger
        ),
        "zero_signature": fields + bytes(64),
    }


def test_signatures_over_wrong_fields_forbidden(relay, attempts):
    before = metric(scrape(relay), "invalid_signatures_total")
    names = []
    for name in _signature_forgeries(attempts(), bytes(32), relay.relay_public_key):
        # A fresh handshake each time, so that no cookie is used twice.
        attempt = attempts()
        cookie = attempt.cookie()
        forged = _signature_forgeries(attempt, cookie, relay.relay_public_key)[name]
        attempt.refused(forged, ErrorCode.FORBIDDEN)
        names.append(name)
    after = metric(scrape(relay), "invalid_signatures_total")
    assert after - before == len(names)
    control = attempts()
    (registered,) = control.exchange(control.signed(control.cookie()))
    assert registered[1] == PacketType.REGISTERED
    figures["wrong_field_signatures_forbidden"] = names


def test_small_order_signing_key_forbidden(relay, attempts):
    attempt = attempts()
    cookie = attempt.cookie()
    identity_point = (1).to_bytes(32, "little")
    # With a small-order key, R = identity and S = 0 verify any message in
    # a lax verifier.
    forged = register_datagram(
        attempt.identity,
        attempt.ce_public,
        cookie,
        signature=identity_point + bytes(32),
        ed25519_public=identity_point,
    )
    attempt.refused(forged, ErrorCode.FORBIDDEN)


def test_low_order_x25519_keys_forbidden(relay, attempts):
    attempt = attempts()
    attempt.ce_public = bytes(32)
    attempt.refused(attempt.signed(attempt.cookie()), ErrorCode.FORBIDDEN)


# --- the key binding ------------------------------------------------------------------

RACE_ROUNDS = 20


def _handshakes(attempt_list: list[Attempt]) -> list[bytes]:
    """Run every attempt's cookie round trip at once; return the signed REGISTERs."""
    for attempt in attempt_list:
        attempt.send(attempt.first())
    replies = collect({i: a.socket for i, a in enumerate(attempt_list)}, 0.1, 2.0)
    signed = []
    for index, attempt in enumerate(attempt_list):
        (challenge,) = replies[index]
        assert challenge[1] == PacketType.CHALLENGE, challenge.hex()
        signed.append(attempt.signed(challenge[HEADER_SIZE:]))
    return signed


def _outcomes(attempt_list: list[Attempt], datagrams: list[bytes]) -> list[str]:
    """Send every datagram at once; return each attempt's single reply by name."""
    for attempt, datagram in zip(attempt_list, datagrams, strict=True):
        attempt.send(datagram)
    replies = collect({i: a.socket for i, a in enumerate(attempt_list)}, 0.1, 2.0)
    names = []
    for index in range(len(attempt_list)):
        (reply,) = replies[index]
        if reply[1] == PacketType.REGISTERED:
            names.append("REGISTERED")
        else:
            names.append(ErrorCode(error_code(reply)).name)
    return names


def test_key_conflict_race_has_one_winner(relay, attempts):
    """Two first REGISTERs of one user id with different keys, sent at once."""
    pairs = []
    for _ in range(RACE_ROUNDS):
        first = Identity.generate()
        second = Identity(
            first.user_id, Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
        )
        pairs.append((attempts(identity=first), attempts(identity=second)))
    racers = [racer for pair in pairs for racer in pair]
    outcomes = _outcomes(racers, _handshakes(racers))
    winners = []
    for round_number in range(RACE_ROUNDS):
        pair_outcomes = outcomes[2 * round_number : 2 * round_number + 2]
        assert sorted(pair_outcomes) == ["KEY_CONFLICT", "REGISTERED"], pair_outcomes
        winners.append(pair_outcomes.index("REGISTERED"))

    # The binding stays: each loser is refused again, each winner registers again.
    retries = [
        attempts(identity=pair[1 - winner].identity)
        for pair, winner in zip(pairs, winners, strict=True)
    ]
    retries += [
        attempts(identity=pair[winner].identity)
        for pair, winner in zip(pairs, winners, strict=True)
    ]
    again = _outcomes(retries, _handshakes(retries))
    assert again == ["KEY_CONFLICT"] * RACE_ROUNDS + ["REGISTERED"] * RACE_ROUNDS
    figures["key_conflict_race"] = {
        "rounds": RACE_ROUNDS,
        "rounds_with_exactly_one_winner": RACE_ROUNDS,
        "first_sent_won": winners.count(0),
        "second_sent_won": winners.count(1),
    }
