"""A WAN link in user space, for kernels without netem (``sch_netem``): forwards Ethernet frames
between two interfaces with a fixed one-way delay and random loss, in both directions, through
AF_PACKET sockets (root only). The senders on either side must hand it whole frames: no
segmentation offload (``ip link set DEV gso_max_size 1500 gso_max_segs 1``) and no checksum
offload (``python tests/wanlink.py --no-tx-checksum DEV``, the ioctl ethtool would make: frames
would otherwise cross with their checksums still to be filled in, and be dropped).

    python tests/wanlink.py IF_A IF_B DELAY_MS LOSS_PERCENT [SEED]

Prints ``ready`` once both interfaces are open; runs until killed.
"""

import ctypes
import fcntl
import heapq
import random
import select
import socket
import struct
import sys
import time

ETH_P_ALL = 3
PACKET_OUTGOING = 4  # our own sends, seen again on the sending interface


SIOCETHTOOL, ETHTOOL_STXCSUM = 0x8946, 0x17


def no_tx_checksum(ifname: str) -> None:
    """Turn off transmit checksum offload on an interface (``ethtool -K DEV tx off``)."""
    value = ctypes.create_string_buffer(struct.pack("II", ETHTOOL_STXCSUM, 0))
    ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(value)).ljust(40, b"\0")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)


def main(argv: list[str]) -> None:
    if argv[0] == "--no-tx-checksum":
        no_tx_checksum(argv[1])
        return
    if_a, if_b = argv[0], argv[1]
    delay, loss = float(argv[2]) / 1000, float(argv[3]) / 100
    rng = random.Random(int(argv[4]) if len(argv) > 4 else None)
    socks = []
    for name in (if_a, if_b):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        s.bind((name, 0))
        socks.append(s)
    other = {socks[0]: socks[1], socks[1]: socks[0]}
    queue: list[tuple[float, int, socket.socket, bytes]] = []  # (due, order, out, frame)
    order = 0
    print("ready", flush=True)
    while True:
        timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else None
        readable, _, _ = select.select(socks, [], [], timeout)
        now = time.monotonic()
        for s in readable:
            frame, addr = s.recvfrom(65536)
            if addr[2] == PACKET_OUTGOING or rng.random() < loss:
                continue
            order += 1
            heapq.heappush(queue, (now + delay, order, other[s], frame))
        while queue and queue[0][0] <= time.monotonic():
            _due, _order, out, frame = heapq.heappop(queue)
            try:
                out.send(frame)
            except OSError:  # the far side is down (the test cuts the link): the frame is lost
                pass


if __name__ == "__main__":
    main(sys.argv[1:])
