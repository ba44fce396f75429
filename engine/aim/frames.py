"""One checksummed frame format for the AIM journal on disk and the AIM stream on the wire.

    magic u32 'AIMF' | type u8 | flags u8 | check u16 | seq u64 | offset u64 | time_ns u64 |
    length u32 | crc32 u32 (over the header before it and the payload) | payload

A journal entry is shipped as the very bytes it was journaled as; the receiver checks the same
checksum before applying anything. ``check`` (flag ``HEADER_CHECKED``) is a CRC of the header alone,
so that a corrupted length is caught before the receiver waits for a payload that never comes (a
flipped bit there once stalled a stream until its two-minute timeout). Frames written before it
existed have the flag clear and ``check`` zero, and are read as they were.
"""

import struct
import zlib
from dataclasses import dataclass

MAGIC = 0x41494D46  # 'AIMF'
HEADER = struct.Struct(">IBBHQQQII")
_HEAD = struct.Struct(">IBBHQQQI")  # the header up to the checksum
_CRC = struct.Struct(">I")
_CHECK_AT = 6  # the check's offset in the header: after magic, type and flags
HEADER_CHECKED = 0x01
HEADER_SIZE = HEADER.size  # 40
MAX_PAYLOAD = 32 << 20

# entry types (journal and stream)
WRITE, ZERO, MARKER = 1, 2, 3
# stream-only types
RESYNC_BEGIN, RESYNC_BLOCK, RESYNC_END, ACK, HEARTBEAT = 10, 11, 12, 20, 21
ERROR = 22  # destination -> source: why it stopped applying (JSON: reason, errno, volume)

NAMES = {WRITE: "write", ZERO: "zero", MARKER: "marker", RESYNC_BEGIN: "resync-begin",
         RESYNC_BLOCK: "resync-block", RESYNC_END: "resync-end", ACK: "ack", HEARTBEAT: "heartbeat",
         ERROR: "error"}


class FrameError(Exception):
    """A frame that is not what its header and checksum promise."""


@dataclass(slots=True)
class Frame:
    type: int
    seq: int = 0
    offset: int = 0
    time_ns: int = 0
    payload: bytes | memoryview = b""  # a view into a receive buffer for WRITE and RESYNC_BLOCK frames
    length: int = -1  # ZERO frames carry a length and no payload

    @property
    def size(self) -> int:
        """The byte count the frame stands for: payload bytes, or the zeroed range."""
        return self.length if self.type == ZERO else len(self.payload)

    def encode(self) -> bytes:
        return header(self.type, self.seq, self.offset, self.time_ns, self.payload, self.length) + self.payload


def header(ftype: int, seq: int, offset: int, time_ns: int, payload: bytes | memoryview, length: int = -1) -> bytes:
    """The header of a frame whose payload is ``payload`` (sent or written right after it)."""
    n = length if ftype == ZERO else len(payload)
    check = _header_check(_HEAD.pack(MAGIC, ftype, HEADER_CHECKED, 0, seq, offset, time_ns, n))
    head = _HEAD.pack(MAGIC, ftype, HEADER_CHECKED, check, seq, offset, time_ns, n)
    return head + _CRC.pack(zlib.crc32(payload, zlib.crc32(head)))


def _header_check(head: bytes | bytearray | memoryview) -> int:
    """CRC-32 of the header before the payload checksum, with the check field zero, folded to 16 bits."""
    crc = zlib.crc32(head[_CHECK_AT + 2:_HEAD.size], zlib.crc32(b"\0\0", zlib.crc32(head[:_CHECK_AT])))
    return (crc ^ (crc >> 16)) & 0xFFFF


def parse_header(raw: bytes) -> tuple[int, int, int, int, int, int]:
    """(type, seq, offset, time_ns, length, crc); raises FrameError on a bad magic or length."""
    magic, ftype, flags, check, seq, offset, time_ns, length, crc = HEADER.unpack(raw)
    if magic != MAGIC:
        raise FrameError(f"bad frame magic {magic:#x}")
    if check != (_header_check(raw) if flags & HEADER_CHECKED else 0) or flags & ~HEADER_CHECKED:
        raise FrameError("header checksum mismatch (a corrupted frame header)")
    if ftype not in NAMES:
        raise FrameError(f"unknown frame type {ftype}")
    if ftype != ZERO and length > MAX_PAYLOAD:
        raise FrameError(f"frame payload of {length} bytes exceeds {MAX_PAYLOAD}")
    return ftype, seq, offset, time_ns, length, crc


def payload_length(ftype: int, length: int) -> int:
    return 0 if ftype == ZERO else length


def decode(raw_header: bytes, payload: bytes) -> Frame:
    return _checked(parse_header(raw_header), raw_header[:-4], payload)


def parse_at(buf: bytearray, pos: int, end: int) -> tuple[Frame | None, int]:
    """The frame at ``buf[pos:]`` if all of it is before ``end``, checked, and the position after
    it; else (None, the bytes from ``pos`` that frame needs). Data payloads are views into
    ``buf``; the payloads of control frames (markers, resync ends: JSON) are copied."""
    if end - pos < HEADER_SIZE:
        return None, HEADER_SIZE
    parsed = parse_header(buf[pos:pos + HEADER_SIZE])
    size = HEADER_SIZE + payload_length(parsed[0], parsed[4])
    if end - pos < size:
        return None, size
    with memoryview(buf) as view:
        frame = _checked(parsed, view[pos:pos + HEADER_SIZE - 4], view[pos + HEADER_SIZE:pos + size])
    if frame.type not in (WRITE, RESYNC_BLOCK):
        frame.payload = bytes(frame.payload)
    return frame, pos + size


def _checked(parsed: tuple, head: bytes | memoryview, payload: bytes | memoryview) -> Frame:
    """The frame, if the checksum over ``head`` (the header before it) and ``payload`` matches."""
    ftype, seq, offset, time_ns, length, crc = parsed
    if zlib.crc32(payload, zlib.crc32(head)) != crc:
        raise FrameError(f"checksum mismatch in {NAMES[ftype]} frame seq {seq}")
    return Frame(ftype, seq, offset, time_ns, payload, length if ftype == ZERO else -1)
