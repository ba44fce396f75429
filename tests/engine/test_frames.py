"""The frame format: what is encoded decodes to the same frame, and any one flipped bit, in the
header or the payload, is refused, the header's before the receiver waits for a payload (a
flipped length once stalled a stream until its two-minute timeout)."""

import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.aim import frames

_frame = st.builds(frames.Frame, st.sampled_from([frames.WRITE, frames.MARKER, frames.ACK, frames.HEARTBEAT]),
                   st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
                   st.binary(max_size=64))


@given(_frame)
def test_round_trip(f):
    raw = f.encode()
    head, payload = raw[:frames.HEADER_SIZE], raw[frames.HEADER_SIZE:]
    got = frames.decode(head, payload)
    assert (got.type, got.seq, got.offset, got.time_ns, bytes(got.payload)) == (f.type, f.seq, f.offset,
                                                                                 f.time_ns, f.payload)
    buf = bytearray(raw)
    parsed, after = frames.parse_at(buf, 0, len(buf))
    assert parsed is not None and after == len(raw)


@given(_frame, st.data())
def test_a_flipped_header_bit_is_refused_before_the_payload(f, data):
    raw = bytearray(f.encode())
    bit = data.draw(st.integers(0, (frames.HEADER_SIZE - 4) * 8 - 1))  # not the payload checksum's bits
    raw[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(frames.FrameError):
        frames.parse_header(bytes(raw[:frames.HEADER_SIZE]))


@given(_frame.filter(lambda f: f.payload), st.data())
def test_a_flipped_payload_bit_is_refused(f, data):
    raw = bytearray(f.encode())
    bit = data.draw(st.integers(frames.HEADER_SIZE * 8, len(raw) * 8 - 1))
    raw[bit // 8] ^= 1 << (bit % 8)
    frames.parse_header(bytes(raw[:frames.HEADER_SIZE]))  # the header is intact
    with pytest.raises(frames.FrameError):
        frames.decode(bytes(raw[:frames.HEADER_SIZE]), bytes(raw[frames.HEADER_SIZE:]))


def test_a_frame_written_before_the_header_check_still_reads():
    """Journals on disk from before the check: flags and check zero, the payload checksum as then."""
    payload = b"old entry"
    head = struct.pack(">IBBHQQQI", frames.MAGIC, frames.WRITE, 0, 0, 7, 4096, 123, len(payload))
    raw = head + struct.pack(">I", zlib.crc32(payload, zlib.crc32(head)))
    f = frames.decode(raw, payload)
    assert (f.seq, f.offset, bytes(f.payload)) == (7, 4096, payload)
