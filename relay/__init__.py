"""Relay server of the Ya OK delay-tolerant messenger."""

__version__ = "0.1.0"

# Wire protocol version spoken on the UDP port; the first byte of every packet.
PROTOCOL_VERSION = 1
