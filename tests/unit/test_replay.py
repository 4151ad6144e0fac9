"""The 64-packet replay window."""

from relay.protocol.replay import ReplayWindow


def test_counter_zero_never_valid():
    window = ReplayWindow()
    assert not window.accept(0)


def test_in_order_counters_accepted_once():
    window = ReplayWindow()
    for counter in range(1, 200):
        assert window.accept(counter)
        assert not window.accept(counter)


def test_reordered_within_window_accepted():
    window = ReplayWindow()
    assert window.accept(100)
    assert window.accept(37)
    assert window.accept(99)
    assert not window.accept(37)


def test_too_old_rejected():
    window = ReplayWindow()
    assert window.accept(100)
    assert not window.accept(36)  # 100 - 36 = 64: outside the window
    assert window.accept(37)


def test_jump_clears_history():
    window = ReplayWindow()
    assert window.accept(5)
    assert window.accept(1000)
    assert not window.accept(5)
    assert window.accept(999)


def test_check_does_not_record():
    window = ReplayWindow()
    assert window.check(7)
    assert window.check(7)
    assert window.accept(7)
    assert not window.check(7)


def test_counters_near_two_to_the_64():
    window = ReplayWindow()
    top = 2**64 - 1
    assert window.accept(top - 1)
    assert window.accept(top)
    assert not window.accept(top)
    assert not window.accept(top - 1)
    assert window.accept(top - 63)
    assert not window.accept(top - 64)
