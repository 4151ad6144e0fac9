"""Sliding replay window over 64-bit packet counters."""

WINDOW_SIZE = 64
_WINDOW_MASK = (1 << WINDOW_SIZE) - 1


class ReplayWindow:
    """Accept each counter at most once, tolerating reordering within 64.

    Bit i of `seen` stands for counter `highest - i`. Counter 0 is never
    valid, so a new window accepts 1 and up.
    """

    __slots__ = ("highest", "seen")

    def __init__(self) -> None:
        self.highest = 0
        self.seen = 1  # counter 0 counts as used

    def check(self, counter: int) -> bool:
        """Tell whether counter would be accepted, without recording it."""
        if counter > self.highest:
            return True
        offset = self.highest - counter
        return offset < WINDOW_SIZE and not (self.seen >> offset) & 1

    def accept(self, counter: int) -> bool:
        """Record counter and return True, or False if it is replayed or too old."""
        highest = self.highest
        if counter > highest:
            shift = counter - highest
            if shift < WINDOW_SIZE:
                self.seen = ((self.seen << shift) | 1) & _WINDOW_MASK
            else:
                self.seen = 1
            self.highest = counter
            return True
        offset = highest - counter
        if offset >= WINDOW_SIZE or (self.seen >> offset) & 1:
            return False
        self.seen |= 1 << offset
        return True
