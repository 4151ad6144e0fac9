"""MESSAGE, push, ACK, POLL and receipts on the socket-free core."""

import asyncio
import uuid

from relay.client.events import (
    EntryPushed,
    MessageAckReceived,
    PollResponseReceived,
    PongReceived,
    SessionEstablished,
)
from relay.protocol.constants import AckStatus


def statuses(events) -> list[AckStatus]:
    return [e.status for e in events if isinstance(e, MessageAckReceived)]


async def registered(relay, count: int):
    phones = [relay.phone() for _ in range(count)]
    for phone in phones:
        await phone.register()
    return phones


async def test_online_recipient_gets_push_and_sender_receipt(relay):
    alice, bob = await registered(relay, 2)
    events = await alice.exchange(alice.message(bob, b"sealed"))
    assert statuses(events) == [AckStatus.QUEUED]
    (push,) = bob.events()
    assert isinstance(push, EntryPushed)
    assert push.entry.sender_id == alice.user_id
    assert push.entry.payload == b"sealed"
    assert push.entry.received_at_ms == relay.clock()
    await bob.exchange(bob.session.ack([(alice.user_id, push.entry.message_id)]))
    assert statuses(alice.events()) == [AckStatus.DELIVERED]


async def test_offline_messages_polled_in_order(relay):
    alice, bob = await registered(relay, 2)
    await bob.exchange(bob.session.unregister())
    payloads = [f"m{i}".encode() for i in range(5)]
    for payload in payloads:
        assert statuses(await alice.exchange(alice.message(bob, payload))) == [
            AckStatus.QUEUED
        ]
    established = await bob.register()
    assert established.pending == 5
    (response,) = await bob.exchange(bob.session.poll())
    assert isinstance(response, PollResponseReceived)
    assert [e.payload for e in response.response.entries] == payloads
    assert response.response.remaining == 0


async def test_poll_budget_splits_and_counts_remaining(relay):
    alice, bob = await registered(relay, 2)
    await bob.exchange(bob.session.unregister())
    for _ in range(4):
        await alice.exchange(alice.message(bob, b"x" * 100))
    await bob.register()
    # 38 bytes of framing and 184 bytes an entry: two entries fill 406 bytes.
    (response,) = await bob.exchange(bob.session.poll(405))
    assert len(response.response.entries) == 1
    assert response.response.remaining == 3
    (response,) = await bob.exchange(bob.session.poll(406))
    assert len(response.response.entries) == 2
    assert response.response.remaining == 2


async def test_poll_answer_fits_one_udp_datagram(relay):
    alice, bob = await registered(relay, 2)
    await bob.exchange(bob.session.unregister())
    # Two entries of this size and the framing make 65,520 bytes: within
    # the POLL's largest max_bytes, over the largest IPv4 UDP datagram.
    for _ in range(2):
        await alice.exchange(alice.message(bob, b"w" * 32_657))
    await bob.register()
    (response,) = await bob.exchange(bob.session.poll(65_535))
    assert len(response.response.entries) == 1
    assert response.response.remaining == 1


async def test_oldest_sent_alone_when_over_budget(relay):
    alice, bob = await registered(relay, 2)
    await bob.exchange(bob.session.unregister())
    await alice.exchange(alice.message(bob, b"y" * 3000))
    await alice.exchange(alice.message(bob, b"z"))
    await bob.register()
    (response,) = await bob.exchange(bob.session.poll(0))
    assert [len(e.payload) for e in response.response.entries] == [3000]
    assert response.response.remaining == 1


async def test_duplicate_stored_once(relay):
    alice, bob = await registered(relay, 2)
    await bob.exchange(bob.session.unregister())
    message_id = str(uuid.uuid4())
    for _ in range(3):
        events = await alice.exchange(
            alice.message(bob, b"once", message_id=message_id)
        )
        assert statuses(events) == [AckStatus.QUEUED]
    await bob.register()
    (response,) = await bob.exchange(bob.session.poll())
    assert len(response.response.entries) == 1


async def test_duplicate_after_delivery_answered_delivered(relay):
    alice, bob = await registered(relay, 2)
    message_id = str(uuid.uuid4())
    await alice.exchange(alice.message(bob, message_id=message_id))
    (_push,) = bob.events()
    await bob.exchange(bob.session.ack([(alice.user_id, message_id)]))
    alice.events()
    events = await alice.exchange(alice.message(bob, message_id=message_id))
    assert statuses(events) == [AckStatus.DELIVERED]
    assert bob.events() == []


async def test_unknown_recipient(relay):
    (alice,) = await registered(relay, 1)
    events = await alice.exchange(alice.message(str(uuid.uuid4())))
    assert statuses(events) == [AckStatus.UNKNOWN_RECIPIENT]


async def test_too_large(make_relay):
    relay = await make_relay(max_payload_bytes=1000)
    alice, bob = await registered(relay, 2)
    events = await alice.exchange(alice.message(bob, b"x" * 1001))
    assert statuses(events) == [AckStatus.TOO_LARGE]
    assert bob.events() == []


async def test_mailbox_full_per_sender(make_relay):
    relay = await make_relay(mailbox_max_per_sender=2)
    alice, bob = await registered(relay, 2)
    await bob.exchange(bob.session.unregister())
    results = [statuses(await alice.exchange(alice.message(bob)))[0] for _ in range(3)]
    assert results == [AckStatus.QUEUED, AckStatus.QUEUED, AckStatus.MAILBOX_FULL]


async def test_message_rate_limited(make_relay):
    relay = await make_relay(rate_message_per_user=2)
    alice, bob = await registered(relay, 2)
    results = [statuses(await alice.exchange(alice.message(bob)))[0] for _ in range(3)]
    assert results[2] == AckStatus.RATE_LIMITED
    relay.clock.advance(30)
    assert statuses(await alice.exchange(alice.message(bob))) == [AckStatus.QUEUED]


async def test_ttl_expiry_hides_and_answers_expired(relay):
    alice, bob = await registered(relay, 2)
    await bob.exchange(bob.session.unregister())
    message_id = str(uuid.uuid4())
    await alice.exchange(alice.message(bob, message_id=message_id, ttl_s=60))
    relay.clock.advance(61)
    established = await bob.register()
    assert established.pending == 0
    (response,) = await bob.exchange(bob.session.poll())
    assert response.response.entries == []
    events = await alice.exchange(alice.message(bob, message_id=message_id))
    assert statuses(events) == [AckStatus.EXPIRED]


async def test_ack_of_other_mailbox_deletes_nothing(relay):
    alice, bob, mallory = await registered(relay, 3)
    await bob.exchange(bob.session.unregister())
    message_id = str(uuid.uuid4())
    await alice.exchange(alice.message(bob, message_id=message_id))
    await mallory.exchange(mallory.session.ack([(alice.user_id, message_id)]))
    assert statuses(alice.events()) == []
    await bob.register()
    (response,) = await bob.exchange(bob.session.poll())
    assert [e.message_id for e in response.response.entries] == [message_id]


async def test_pong_announces_pending(relay):
    alice, bob = await registered(relay, 2)
    await bob.exchange(bob.session.unregister())
    await alice.exchange(alice.message(bob))
    await bob.register()
    (pong,) = await bob.exchange(bob.session.ping())
    assert isinstance(pong, PongReceived)
    assert pong.pending == 1


async def test_large_message_not_pushed(relay):
    alice, bob = await registered(relay, 2)
    # 116 bytes of framing plus 1,085 bytes of payload is one byte over 1,200.
    await alice.exchange(alice.message(bob, b"x" * 1085))
    assert bob.events() == []
    await alice.exchange(alice.message(bob, b"x" * 1084))
    (push,) = bob.events()
    assert len(push.entry.payload) == 1084


async def test_new_message_pushed_before_commit(relay):
    alice, bob = await registered(relay, 2)
    alice.send(alice.message(bob))
    (push,) = bob.events()
    assert isinstance(push, EntryPushed)
    assert alice.events() == []  # QUEUED waits for the commit
    await relay.settle()
    assert statuses(alice.events()) == [AckStatus.QUEUED]


async def test_ack_before_commit_never_stores(relay):
    alice, bob = await registered(relay, 2)
    message_id = str(uuid.uuid4())
    alice.send(alice.message(bob, message_id=message_id))
    (_push,) = bob.events()
    bob.send(bob.session.ack([(alice.user_id, message_id)]))
    await relay.settle()
    assert statuses(alice.events()) == [AckStatus.QUEUED, AckStatus.DELIVERED]
    assert relay.storage.stats().queue_size == 0
    events = await alice.exchange(alice.message(bob, message_id=message_id))
    assert statuses(events) == [AckStatus.DELIVERED]
    assert bob.events() == []


async def test_repeat_waits_and_not_pushed(relay):
    alice, bob = await registered(relay, 2)
    message_id = str(uuid.uuid4())
    await alice.exchange(alice.message(bob, message_id=message_id))
    (_push,) = bob.events()
    alice.send(alice.message(bob, message_id=message_id))
    assert bob.events() == []  # not pushed before the writer looked it up
    await relay.settle()
    assert statuses(alice.events()) == [AckStatus.QUEUED]
    assert bob.events() == []  # the first copy was pushed; POLL has it
    (response,) = await bob.exchange(bob.session.poll())
    assert [e.message_id for e in response.response.entries] == [message_id]


async def test_repeat_to_other_recipient_not_delivered(relay):
    alice, bob, carol = await registered(relay, 3)
    await bob.exchange(bob.session.unregister())
    message_id = str(uuid.uuid4())
    await alice.exchange(alice.message(bob, b"first", message_id=message_id))
    events = await alice.exchange(
        alice.message(carol, b"second", message_id=message_id)
    )
    assert statuses(events) == [AckStatus.QUEUED]
    assert carol.events() == []
    (response,) = await carol.exchange(carol.session.poll())
    assert response.response.entries == []


async def test_delivered_repeat_new_session_not_pushed(relay):
    alice, bob = await registered(relay, 2)
    message_id = str(uuid.uuid4())
    await alice.exchange(alice.message(bob, message_id=message_id))
    (push,) = bob.events()
    await bob.exchange(bob.session.ack([(alice.user_id, push.entry.message_id)]))
    assert statuses(alice.events()) == [AckStatus.DELIVERED]
    await alice.register()  # a new session, as after a reconnect
    events = await alice.exchange(alice.message(bob, message_id=message_id))
    assert statuses(events) == [AckStatus.DELIVERED]
    assert bob.events() == []


async def test_delivered_repeat_after_restart_not_pushed(make_relay):
    first = await make_relay()
    alice, bob = await registered(first, 2)
    message_id = str(uuid.uuid4())
    await alice.exchange(alice.message(bob, message_id=message_id))
    await bob.exchange(bob.session.ack([(alice.user_id, message_id)]))
    await first.close()
    second = await make_relay()
    alice = second.phone(identity=alice.identity)
    bob = second.phone(identity=bob.identity)
    await alice.register()
    await bob.register()
    events = await alice.exchange(alice.message(bob, message_id=message_id))
    assert statuses(events) == [AckStatus.DELIVERED]
    assert bob.events() == []


async def test_expired_repeat_not_pushed(relay):
    alice, bob = await registered(relay, 2)
    await bob.exchange(bob.session.unregister())
    message_id = str(uuid.uuid4())
    await alice.exchange(alice.message(bob, message_id=message_id, ttl_s=60))
    relay.clock.advance(61)
    sweep = await relay.storage.sweep(relay.clock(), 86_400_000)
    assert sweep.expired_messages == 1
    await alice.register()  # a new session, as after a reconnect
    await bob.register()
    events = await alice.exchange(alice.message(bob, message_id=message_id))
    assert statuses(events) == [AckStatus.EXPIRED]
    assert bob.events() == []


async def test_retry_acked_in_same_batch_not_pushed(make_relay):
    relay = await make_relay(mailbox_max_per_sender=1)
    alice, bob = await registered(relay, 2)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    await alice.exchange(alice.message(bob, message_id=first))
    events = await alice.exchange(alice.message(bob, message_id=second))
    assert statuses(events) == [AckStatus.MAILBOX_FULL]
    pushed = [event.entry.message_id for event in bob.events()]
    assert pushed == [first, second]  # the refused copy was pushed on arrival
    await bob.exchange(bob.session.ack([(alice.user_id, first)]))
    alice.events()
    # Bob acknowledges the copy he already has as Alice retries it.
    bob.send(bob.session.ack([(alice.user_id, second)]))
    alice.send(alice.message(bob, message_id=second))
    await relay.settle()
    assert statuses(alice.events()) == [AckStatus.QUEUED, AckStatus.DELIVERED]
    assert bob.events() == []


async def test_expired_during_commit_not_pushed(relay):
    alice, bob = await registered(relay, 2)
    message_id = str(uuid.uuid4())
    events = await alice.exchange(
        alice.message(str(uuid.uuid4()), message_id=message_id)
    )
    assert statuses(events) == [AckStatus.UNKNOWN_RECIPIENT]
    # The id is now seen, so this message waits for its commit to be pushed.
    alice.send(alice.message(bob, message_id=message_id, ttl_s=60))
    relay.clock.advance(61)
    await relay.settle()
    assert statuses(alice.events()) == [AckStatus.QUEUED]
    assert bob.events() == []


async def test_erasing_recipient_gets_no_push(relay):
    alice, bob = await registered(relay, 2)
    bob.send(bob.session.unregister(erase=True))
    alice.send(alice.message(bob))
    await relay.settle()
    assert not [event for event in bob.events() if isinstance(event, EntryPushed)]


async def test_session_registered_during_erase_ends(relay):
    alice, bob = await registered(relay, 2)
    second = relay.phone(identity=bob.identity)  # the same user, another session
    second.send(second.session.start_register())
    (challenge,) = second.events()
    second.send(challenge.register)  # its registry write is queued first
    bob.send(bob.session.unregister(erase=True))
    await relay.settle()
    assert relay.core.sessions.of_user(bob.user_id, relay.clock()) is None
    events = await alice.exchange(alice.message(bob))
    assert statuses(events) == [AckStatus.UNKNOWN_RECIPIENT]
    assert not [e for e in second.events() if isinstance(e, EntryPushed)]


async def test_poll_skips_message_expired_while_waiting(relay):
    alice, bob = await registered(relay, 2)
    await bob.exchange(bob.session.unregister())
    kept, short = str(uuid.uuid4()), str(uuid.uuid4())
    await alice.exchange(alice.message(bob, message_id=kept, ttl_s=600))
    await alice.exchange(alice.message(bob, message_id=short, ttl_s=60))
    await bob.register()
    bob.send(bob.session.ack([(alice.user_id, str(uuid.uuid4()))]))
    bob.send(bob.session.poll())  # waits for the ACK's commit
    relay.clock.advance(61)
    await relay.settle()
    (response,) = bob.events()
    assert [e.message_id for e in response.response.entries] == [kept]
    assert response.response.remaining == 0


async def test_outcome_counted_after_sender_left(relay):
    alice, bob = await registered(relay, 2)
    succeeded = relay.core.stats.succeeded["message"]
    alice.send(alice.message(bob))
    alice.send(alice.session.unregister())  # gone before the commit
    await relay.settle()
    assert relay.core.stats.succeeded["message"] == succeeded + 1


async def test_ack_and_poll_failures_counted(relay):
    alice, bob = await registered(relay, 2)
    await relay.storage.close()
    await bob.exchange(bob.session.ack([(alice.user_id, str(uuid.uuid4()))]))
    await bob.exchange(bob.session.poll())
    assert relay.core.stats.failed["ack"] == 1
    assert relay.core.stats.failed["poll"] == 1


async def batch_started(relay) -> None:
    """Return once the writer has taken everything queued into a running batch."""
    writer = relay.storage.writer
    for _ in range(10_000):
        if writer.pending_operations and not writer.queued_operations:
            return
        await asyncio.sleep(0)
    raise AssertionError("the writer began no batch")


async def test_message_pushed_during_reconnect_reaches_new_session(relay):
    alice, bob = await registered(relay, 2)
    # Bob's phone reconnects from a new address, as after a restart of the
    # app, while its old session still counts as live.
    new_bob = relay.phone(identity=bob.identity)
    new_bob.send(new_bob.session.start_register())
    (challenge,) = new_bob.events()
    new_bob.send(challenge.register)
    await batch_started(relay)
    # The message arrives while the registration's batch commits: the old
    # session gets the push, and the count in REGISTERED misses it.
    alice.send(alice.message(bob, b"during the reconnect"))
    await relay.settle()
    established, push = new_bob.events()
    assert isinstance(established, SessionEstablished)
    # The message commits after the new session opened, which then gets it.
    assert isinstance(push, EntryPushed)
    assert push.entry.payload == b"during the reconnect"
