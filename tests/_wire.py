"""Protobuf wire encoding for tests that build binary files by hand (independent of
protocaffe's own writer)."""

from __future__ import annotations


def wire_key(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def len_field(number: int, payload: bytes) -> bytes:
    return wire_key(number, 2) + varint(len(payload)) + payload
