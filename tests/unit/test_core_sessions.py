"""Session packets on the socket-free core: window, tags, roaming, ending, draining."""

import asyncio
import os
import random
import uuid

import structlog.testing

from relay.client.events import (
    DrainingReceived,
    EntryPushed,
    ErrorReceived,
    MessageAckReceived,
    PathChallengeReceived,
    PongReceived,
    SessionErrorReceived,
    UnregisteredReceived,
)
from relay.core.session import CipherCache, Session, SessionTable
from relay.protocol.codec import decode_error, pack_header
from relay.protocol.constants import HEADER_SIZE, AckStatus, ErrorCode, PacketType


async def test_ping_answered_with_pong(relay):
    phone = relay.phone()
    await phone.register()
    (pong,) = await phone.exchange(phone.session.ping())
    assert isinstance(pong, PongReceived)
    assert pong.server_time_ms == relay.clock()


async def test_ping_over_rate_silent(make_relay):
    relay = await make_relay(rate_ping_per_user=6)
    phone = relay.phone()
    await phone.register()
    answers = [await phone.exchange(phone.session.ping()) for _ in range(7)]
    assert all(len(a) == 1 for a in answers[:6])
    assert answers[6] == []
    assert relay.core.stats.rate_limited["ping"] == 1


async def test_registering_again_keeps_rate_limits(make_relay):
    relay = await make_relay(rate_ping_per_user=6)
    phone = relay.phone()
    await phone.register()
    first = [await phone.exchange(phone.session.ping()) for _ in range(4)]
    await phone.register()
    second = [await phone.exchange(phone.session.ping()) for _ in range(3)]
    assert [len(answers) for answers in first + second] == [1, 1, 1, 1, 1, 1, 0]
    other = relay.phone()
    await other.register()
    assert len(await other.exchange(other.session.ping())) == 1


async def test_unregister_keeps_rate_limits(make_relay):
    relay = await make_relay(rate_ping_per_user=6)
    phone = relay.phone()
    await phone.register()
    first = [await phone.exchange(phone.session.ping()) for _ in range(6)]
    (done,) = await phone.exchange(phone.session.unregister())
    assert isinstance(done, UnregisteredReceived)
    await phone.register()
    second = [await phone.exchange(phone.session.ping()) for _ in range(2)]
    assert [len(answers) for answers in first] == [1] * 6
    # One PING's worth comes back in 10 s, and no time has passed.
    assert [len(answers) for answers in second] == [0, 0]


async def test_timed_out_session_leaves_rate_limits(make_relay):
    relay = await make_relay(rate_ping_per_user=6, session_timeout_s=30)
    phone = relay.phone()
    await phone.register()
    for _ in range(6):
        await phone.exchange(phone.session.ping())
    relay.clock.advance(31)  # 3 PINGs' worth back, the session gone
    relay.core.tick()
    assert relay.core.stats.sessions_timed_out == 1
    await phone.register()
    answers = [await phone.exchange(phone.session.ping()) for _ in range(4)]
    assert [len(answer) for answer in answers] == [1, 1, 1, 0]


async def test_carried_limits_dropped_once_full(make_relay):
    relay = await make_relay(rate_ping_per_user=6)
    phone = relay.phone()
    await phone.register()
    await phone.exchange(phone.session.ping())
    await phone.exchange(phone.session.unregister())
    carried = relay.core.sessions.carried_limits
    assert list(carried) == [phone.user_id]
    relay.clock.advance(9)
    relay.core.tick()
    assert list(carried) == [phone.user_id]
    relay.clock.advance(2)  # the PING's token is back after 10 s
    relay.core.tick()
    assert carried == {}


def test_carried_limits_swept_oldest_first():
    table = SessionTable(timeout_ms=60_000, linger_ms=0, max_ended=10)
    for port, full_at in enumerate([1_000.0, 2_000.0, 9_000.0, 3_000.0]):
        session = _session(f"user-{port}", port)
        session.message_full_at = full_at
        table.add(session)
        table.remove(session, now_ms=0)
    table.sweep(now_ms=5_000)
    # user-3 is full too, but waits behind user-2, at most a minute.
    assert list(table.carried_limits) == ["user-2", "user-3"]
    table.sweep(now_ms=9_000)
    assert table.carried_limits == {}


def test_carried_limits_capped():
    table = SessionTable(timeout_ms=60_000, linger_ms=0, max_ended=2)
    for port in range(3):
        session = _session(f"user-{port}", port)
        session.ping_full_at = 5_000.0
        table.add(session)
        table.remove(session, now_ms=0)
    assert list(table.carried_limits) == ["user-1", "user-2"]


async def test_replayed_packet_dropped_silently(relay):
    phone = relay.phone()
    await phone.register()
    ping = phone.session.ping()
    assert len(await phone.exchange(ping)) == 1
    assert await phone.exchange(ping) == []
    assert relay.core.stats.dropped["replayed"] == 1


async def test_forged_tag_dropped_without_effect(relay):
    phone = relay.phone()
    await phone.register()
    ping = bytearray(phone.session.ping())
    ping[-1] ^= 0x01
    assert await phone.exchange(bytes(ping)) == []
    assert relay.core.stats.dropped["bad_tag"] == 1
    # The counter of the forged packet is still free for the real one.
    ping[-1] ^= 0x01
    assert len(await phone.exchange(bytes(ping))) == 1


async def test_session_times_out(relay):
    phone = relay.phone()
    await phone.register()
    relay.clock.advance(121)
    relay.core.tick()
    assert len(relay.core.sessions) == 0
    assert relay.core.stats.sessions_timed_out == 1
    (error,) = await phone.exchange(phone.session.ping())
    assert isinstance(error, ErrorReceived)
    assert error.code == ErrorCode.UNKNOWN_SESSION


async def test_unknown_session_error_echoes_ids(relay):
    phone = relay.phone()
    datagram = pack_header(PacketType.PING, 40) + os.urandom(40)
    phone.send(datagram)
    (reply,) = phone.inbox()
    error = decode_error(reply[HEADER_SIZE:])
    assert error.code == ErrorCode.UNKNOWN_SESSION
    assert error.echo == datagram[HEADER_SIZE : HEADER_SIZE + 24]
    assert len(reply) <= len(datagram)


async def test_malformed_body_gets_session_error(relay):
    phone = relay.phone()
    await phone.register()
    bad_poll = phone.session.seal(PacketType.POLL, b"\x00")
    (error,) = await phone.exchange(bad_poll)
    assert isinstance(error, SessionErrorReceived)
    assert error.code == ErrorCode.BAD_REQUEST
    # The counter was used up before the body was parsed.
    assert await phone.exchange(bad_poll) == []


async def test_roaming_challenge_then_validation(relay):
    alice, bob = relay.phone(), relay.phone()
    await alice.register()
    await bob.register()
    bob.address = ("127.0.0.9", 50000)
    events = await bob.exchange(bob.session.ping())
    # The 48-byte PING pays for the 40-byte challenge; the PONG does not fit.
    (challenge,) = events
    assert isinstance(challenge, PathChallengeReceived)
    # No push while the new address is unvalidated.
    await alice.exchange(alice.message(bob))
    assert bob.events() == []
    (pong,) = await bob.exchange(challenge.reply)
    assert isinstance(pong, PongReceived)
    session = relay.core.sessions.of_user(bob.user_id, relay.clock())
    assert session.validated
    assert session.address == ("127.0.0.9", 50000)
    await alice.exchange(alice.message(bob))
    assert any(isinstance(e, EntryPushed) for e in bob.events())


async def test_unvalidated_address_gets_no_more_bytes_than_sent(relay):
    phone = relay.phone()
    await phone.register()
    phone.address = ("127.0.0.9", 50001)
    ping = phone.session.ping()
    phone.send(ping)
    received = phone.inbox()
    assert sum(len(d) for d in received) <= len(ping)


async def test_wrong_echo_repeats_same_challenge(relay):
    phone = relay.phone()
    await phone.register()
    phone.address = ("127.0.0.9", 50002)
    (first, *_) = await phone.exchange(phone.session.ping())
    events = await phone.exchange(phone.session.ping(b"\x00" * 8))
    again = [e for e in events if isinstance(e, PathChallengeReceived)]
    assert again and again[0].nonce == first.nonce


async def test_old_counter_from_new_address_does_not_move(relay):
    phone = relay.phone()
    await phone.register()
    early = phone.session.ping()
    late = phone.session.ping()
    await phone.exchange(late)
    home = phone.address
    phone.address = ("127.0.0.9", 50003)
    phone.send(early)
    await relay.settle()
    session = relay.core.sessions.of_user(phone.user_id, relay.clock())
    assert session.address == home
    assert session.validated


async def test_unregister_then_retry_then_other_packet(relay):
    phone = relay.phone()
    await phone.register()
    keys = phone.session._keys
    (done,) = await phone.exchange(phone.session.unregister())
    assert isinstance(done, UnregisteredReceived)
    assert len(relay.core.sessions) == 0
    phone.session._keys = keys  # pretend UNREGISTERED was lost
    (again,) = await phone.exchange(phone.session.unregister())
    assert isinstance(again, UnregisteredReceived)
    phone.session._keys = keys
    (error,) = await phone.exchange(phone.session.ping())
    assert isinstance(error, SessionErrorReceived)
    assert error.code == ErrorCode.UNKNOWN_SESSION


async def test_erase_deletes_mailbox_and_binding(relay):
    alice, bob = relay.phone(), relay.phone()
    await alice.register()
    await bob.register()
    await alice.exchange(alice.message(bob))
    bob.events()
    (done,) = await bob.exchange(bob.session.unregister(erase=True))
    assert done.flags == 1
    events = await alice.exchange(alice.message(bob))
    assert [e.status for e in events if isinstance(e, MessageAckReceived)] == [
        AckStatus.UNKNOWN_RECIPIENT
    ]


async def test_drain_tells_sessions_and_refuses_new_work(relay):
    alice, bob = relay.phone(), relay.phone()
    await alice.register()
    await bob.register()
    assert relay.core.drain() == 2
    (draining,) = alice.events()
    assert isinstance(draining, DrainingReceived)
    assert draining.retry_after_ms == relay.settings.drain_retry_after_ms
    bob.events()
    events = await alice.exchange(alice.message(bob))
    assert [e.status for e in events if isinstance(e, MessageAckReceived)] == [
        AckStatus.UNAVAILABLE
    ]
    carol = relay.phone()
    carol.send(carol.session.start_register())
    (error,) = carol.events()
    assert error.code == ErrorCode.OVERLOADED


async def test_relay_only_types_silent_in_any_version(relay):
    phone = relay.phone()
    for packet_type in (0x02, 0x05, 0x06, 0x11, 0x12, 0x21, 0xFE, 0xFF):
        for version in (1, 2, 255):
            header = bytes([version, packet_type]) + bytes(2) + (40).to_bytes(4, "big")
            phone.send(header + bytes(40))
    assert phone.inbox() == []


async def test_unknown_type_silent(relay):
    phone = relay.phone()
    for packet_type in (0x00, 0x0A, 0x14, 0x22, 0x77, 0xFD):
        header = bytes([1, packet_type]) + bytes(2) + (40).to_bytes(4, "big")
        phone.send(header + bytes(40))
    assert phone.inbox() == []


async def test_other_version_unsupported(relay):
    phone = relay.phone()
    datagram = bytes([2, 0x01]) + bytes(2) + (228).to_bytes(4, "big") + bytes(228)
    phone.send(datagram)
    (reply,) = phone.inbox()
    assert decode_error(reply[HEADER_SIZE:]).code == ErrorCode.UNSUPPORTED


async def test_no_reply_larger_than_random_datagram(relay):
    rng = random.Random(7)
    phone = relay.phone()
    await phone.register()
    templates = [phone.session.ping(), phone.session.start_register()]
    for _ in range(500):
        if rng.random() < 0.5:
            datagram = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
        else:
            datagram = bytearray(rng.choice(templates))
            for _ in range(rng.randrange(1, 4)):
                datagram[rng.randrange(len(datagram))] = rng.randrange(256)
            datagram = bytes(datagram)
        phone.address = ("127.0.0.2", 1000 + rng.randrange(60000))
        phone.send(datagram)
        await relay.settle()
        for reply in relay.network.take(phone.address):
            assert len(reply) <= len(datagram)


async def test_unauthenticated_flood_limited_per_address(make_relay):
    relay = await make_relay(
        rate_unauthenticated_per_ip=10, replies_per_address_per_s=1000
    )
    phone = relay.phone()
    for _ in range(50):
        phone.send(pack_header(PacketType.PING, 40) + os.urandom(40))
    assert len(phone.inbox()) == 10
    assert relay.core.stats.flood_drops == 40


async def test_replies_per_address_bounded(make_relay):
    relay = await make_relay(replies_per_address_per_s=3)
    sources = [relay.phone() for _ in range(10)]  # many ports, one address
    for phone in sources:
        phone.send(phone.session.start_register())
    answered = sum(len(phone.inbox()) for phone in sources)
    assert answered == 3


async def test_message_to_self_and_unknown_user_id_format(relay):
    phone = relay.phone()
    await phone.register()
    events = await phone.exchange(phone.message(phone))
    assert [e.status for e in events if isinstance(e, MessageAckReceived)] == [
        AckStatus.QUEUED
    ]
    assert str(uuid.UUID(phone.user_id)) == phone.user_id


def _session(user_id: str, port: int) -> Session:
    address = ("127.0.0.1", port)
    return Session(os.urandom(16), user_id, address, os.urandom(64), 0)


def test_cipher_cache_keeps_only_newest_sessions():
    cache = CipherCache(max_sessions=2)
    sessions = [_session(f"user-{i}", i) for i in range(3)]
    for session in sessions:
        cache.build(session)
    assert sessions[0].ciphers is None
    assert sessions[1].ciphers is not None
    assert sessions[2].ciphers is not None
    assert len(cache) == 2


def test_cipher_cache_rebuilds_same_keys():
    cache = CipherCache(max_sessions=1)
    session = _session("user", 1)
    _, outbound = cache.build(session)
    sealed = outbound.encrypt(bytes(12), b"body", b"")
    cache.build(_session("other", 2))
    assert session.ciphers is None
    _, rebuilt = cache.build(session)
    assert rebuilt.encrypt(bytes(12), b"body", b"") == sealed


async def test_failing_callbacks_logged_at_bounded_rate(relay):
    def fail(future) -> None:
        raise RuntimeError("a bug in a completion")

    loop = asyncio.get_running_loop()
    with structlog.testing.capture_logs() as logs:
        for _ in range(50):
            future = loop.create_future()
            relay.core.follow(future, fail)
            future.set_result(None)
        await relay.settle()
    failures = [line for line in logs if line["event"] == "request_failed"]
    assert len(failures) == 1
    assert relay.core._tasks == set()
