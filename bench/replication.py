"""AIM replication benchmarks, each beside a baseline measured in the same run.

1. Throughput on loopback vs a raw Python socket stream into a file with fsync (target >= 0.7).
2. Traffic of a hot-spot (Zipf) workload: direct AIM vs snapshot-source AIM with an increment
   every interval; bytes_sent vs the unique changed bytes (target <= 1.02x for snapshot-source).
3. Periodic sync of a 1 GiB volume with 1 % of blocks changed: increment + ship vs
   ``rsync --inplace --no-whole-file`` over loopback (target <= 0.5x the time, <= rsync's bytes).
4. The journal's cost on the write path: fio 4 KiB random writes at iodepth 16 into an AIM source
   volume vs the same without an AIM set (target >= 0.5 of its IOPS), with each site on a CPU of
   its own, and again with everything sharing the CPUs.
5. Peak RSS of both nodes over 1-4 and over a destination outage (target <= 256 MiB each).

    python bench/replication.py [--size 1GiB] [--repeat 3]
"""

import argparse
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from common import emit, fio_iops, free_port, median, pin, timed, vm_hwm_mib

from engine import parse_size  # noqa: E402
from orchestrator.demo.localnode import start_node  # noqa: E402
from engine.client.remote import RemoteNode  # noqa: E402

MiB = 1 << 20


class Sites:
    def __init__(self, work: str) -> None:
        self.work = work
        self.src = start_node(os.path.join(work, "src"))
        self.dst = start_node(os.path.join(work, "dst"))
        self.s = RemoteNode(self.src.api, self.src.token, timeout=600)
        self.d = RemoteNode(self.dst.api, self.dst.token, timeout=600)

    def aim(self, name: str, source: str, dest: str, size: int, limit: str = "4GiB", bs: int = 65536) -> None:
        self.d.create_volume(dest, size, bs)
        self.d.create_snapshot(f"{dest}-pit", dest, "differential")
        self.s.replication.create(name, source, f"{self.dst.aim}/{dest}", self.dst.token, limit)
        self.caught_up(name)

    def caught_up(self, name: str, timeout: float = 600) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            info = self.s.replication.info(name)
            if info["state"] == "replicating" and info["queued_entries"] == 0 and info["acked_seq"] == info["last_seq"]:
                return info
            if time.monotonic() > deadline:
                raise RuntimeError(f"not caught up: {info}")
            time.sleep(0.01)

    def stop(self) -> dict:
        rss = {"source": vm_hwm_mib(self.src.proc.pid), "destination": vm_hwm_mib(self.dst.proc.pid)}
        self.src.stop()
        self.dst.stop()
        return rss


# -- 1. throughput --------------------------------------------------------------------------------------
RAW_RECEIVER = r"""
import os, socket, sys
srv = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
conn, _ = srv.accept()
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT, 0o600)
buf, pos, since = bytearray(1 << 20), 0, 0
while True:
    n = conn.recv_into(buf)
    if not n:
        break
    os.pwrite(fd, memoryview(buf)[:n], pos)
    pos += n; since += n
    if since >= 8 << 20:
        os.fdatasync(fd); since = 0
os.fdatasync(fd)
conn.sendall(b"done")
"""


def raw_stream(work: str, nbytes: int) -> float:
    port = free_port()
    recv = subprocess.Popen([sys.executable, "-c", RAW_RECEIVER, str(port), os.path.join(work, "raw.out")],
                            stdout=subprocess.PIPE)
    recv.stdout.readline()
    chunk = os.urandom(256 * 1024)
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s:
        sent = 0
        while sent < nbytes:
            s.sendall(chunk)
            sent += len(chunk)
        s.shutdown(socket.SHUT_WR)
        s.recv(4)
    dt = time.perf_counter() - t0
    recv.wait()
    os.unlink(os.path.join(work, "raw.out"))
    return dt


def throughput(sites: Sites, work: str, nbytes: int, repeat: int) -> dict:
    sites.s.create_volume("tp", nbytes)
    sites.aim("tp-aim", "tp", "tp-dr", nbytes)
    src_file = os.path.join(work, "tp.img")
    with open(src_file, "wb") as f:
        for _ in range(nbytes // (4 * MiB)):
            f.write(os.urandom(4 * MiB))
    aim_t, raw_t = [], []
    for i in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(["nbdcopy", "-C", "1", src_file, sites.src.nbd_uri("tp")], check=True)
        sites.caught_up("tp-aim")
        aim_t.append(time.perf_counter() - t0)
        raw_t.append(raw_stream(work, nbytes))
    a, r = median(aim_t), median(raw_t)
    os.unlink(src_file)
    return {"benchmark": f"1. loopback throughput ({nbytes // MiB} MiB written, shipped, applied)",
            "aimsnap": f"{nbytes / a / MiB:.0f} MiB/s", "baseline": f"raw socket+fsync {nbytes / r / MiB:.0f} MiB/s",
            "ratio": r / a, "target": ">= 0.7"}


# -- 2. traffic --------------------------------------------------------------------------------------------
def zipf_blocks(rng: random.Random, nblocks: int, count: int, s: float = 1.1) -> list[int]:
    weights = [1 / (k ** s) for k in range(1, 4097)]
    hot = rng.sample(range(nblocks), 4096)
    return rng.choices(hot, weights=weights, k=count)


def traffic(sites: Sites, size: int) -> list[dict]:
    bs = 4096
    for vol in ("direct", "prod"):
        sites.s.create_volume(vol, size, bs)
    sites.s.create_snapshot("prod-ci", "prod", "complete-image")
    sites.s.enable_snapshot("prod-ci")
    sites.aim("direct-aim", "direct", "direct-dr", size, bs=bs)
    sites.aim("ci-aim", "prod-ci", "prod-ci-dr", size, bs=bs)
    base = {n: sites.s.replication.info(n)["bytes_sent"] for n in ("direct-aim", "ci-aim")}
    rng = random.Random(7)
    unique = written = 0
    nblocks = size // bs
    for interval in range(4):
        blocks = zipf_blocks(rng, nblocks, 4000)
        changed = set()
        for b in blocks:
            data = os.urandom(bs)
            sites.s.write("direct", b * bs, data)
            sites.s.write("prod", b * bs, data)
            changed.add(b)
            written += bs
        unique += len(changed) * bs
        sites.s.enable_snapshot("prod-ci")
        sites.s.replication.issue_marker("ci-aim", "prod-ci-dr-pit")
        sites.caught_up("ci-aim")
        sites.caught_up("direct-aim")
    direct = sites.s.replication.info("direct-aim")["bytes_sent"] - base["direct-aim"]
    ci = sites.s.replication.info("ci-aim")["bytes_sent"] - base["ci-aim"]
    return [{"benchmark": "2. hot-spot traffic, snapshot-source AIM (4 intervals)", "aimsnap": f"{ci / MiB:.1f} MiB sent",
             "baseline": f"unique changed {unique / MiB:.1f} MiB", "ratio": ci / unique, "target": "<= 1.02"},
            {"benchmark": "2. hot-spot traffic, direct AIM (same writes)", "aimsnap": f"{direct / MiB:.1f} MiB sent",
             "baseline": f"written {written / MiB:.1f} MiB", "ratio": direct / unique,
             "target": f"saving of snapshot-source: {100 * (1 - ci / direct):.0f} %"}]


# -- 3. periodic sync vs rsync -------------------------------------------------------------------------
def rsync_vs_aim(sites: Sites, work: str, size: int, repeat: int) -> list[dict]:
    bs = 65536
    img, mirror = os.path.join(work, "rs-src.img"), os.path.join(work, "rs-dst")
    os.makedirs(mirror)
    with open(img, "wb") as f:
        for _ in range(size // (4 * MiB)):
            f.write(os.urandom(4 * MiB))
    shutil.copyfile(img, os.path.join(mirror, "rs-src.img"))
    sites.s.create_volume("rs", size, bs)
    subprocess.run(["nbdcopy", img, sites.src.nbd_uri("rs")], check=True)
    sites.s.create_snapshot("rs-ci", "rs", "complete-image")
    sites.s.enable_snapshot("rs-ci")
    sites.aim("rs-aim", "rs-ci", "rs-dr", size, bs=bs)
    port = free_port()
    conf = os.path.join(work, "rsyncd.conf")
    with open(conf, "w") as f:
        f.write(f"use chroot = no\nuid = root\ngid = root\n[m]\npath = {mirror}\nread only = no\n")
    daemon = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={conf}", f"--port={port}",
                               "--address=127.0.0.1"])
    time.sleep(0.5)
    rng = random.Random(3)
    aim_t, rs_t, aim_b, rs_b = [], [], [], []
    try:
        for _ in range(repeat):
            blocks = rng.sample(range(size // bs), size // bs // 100)
            with open(img, "r+b") as f:
                for b in blocks:
                    data = os.urandom(bs)
                    f.seek(b * bs)
                    f.write(data)
                    sites.s.write("rs", b * bs, data)
            before = sites.s.replication.info("rs-aim")["bytes_sent"]
            t0 = time.perf_counter()
            sites.s.enable_snapshot("rs-ci")
            m = sites.s.replication.issue_marker("rs-aim", "rs-dr-pit")
            assert sites.s.replication.wait(m["id"], 300)["state"] == "applied"
            aim_t.append(time.perf_counter() - t0)
            aim_b.append(sites.s.replication.info("rs-aim")["bytes_sent"] - before)
            t0 = time.perf_counter()
            out = subprocess.run(["rsync", "--inplace", "--no-whole-file", "--stats", img,
                                  f"rsync://127.0.0.1:{port}/m/"], capture_output=True, text=True, check=True).stdout
            rs_t.append(time.perf_counter() - t0)
            sent = int(re.search(r"Total bytes sent: ([\d,]+)", out).group(1).replace(",", ""))
            received = int(re.search(r"Total bytes received: ([\d,]+)", out).group(1).replace(",", ""))
            rs_b.append(sent + received)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait()
    a, r = median(aim_t), median(rs_t)
    return [{"benchmark": "3. 1 % changed: increment + ship + marker applied, time", "aimsnap": f"{a:.2f} s",
             "baseline": f"rsync --inplace {r:.2f} s", "ratio": a / r, "target": "<= 0.5"},
            {"benchmark": "3. 1 % changed: bytes on the wire", "aimsnap": f"{median(aim_b) / MiB:.1f} MiB",
             "baseline": f"rsync {median(rs_b) / MiB:.1f} MiB", "ratio": median(aim_b) / median(rs_b),
             "target": "<= 1.0"}]


# -- 4. journal cost on the write path ---------------------------------------------------------------------
def journal_cost(sites: Sites, size: int, repeat: int, seconds: int) -> list[dict]:
    """fio into a volume with and without an AIM set, twice: each site on a CPU of its own (the
    source node and fio on one, the destination node on the other: two machines, as near as one
    machine gets), then all three sharing every CPU, where the destination's apply competes with
    the source's write path for the same cores (reported beside it, not hidden)."""
    sites.s.create_volume("plain", size)
    sites.s.create_volume("aimed", size)
    sites.aim("aimed-aim", "aimed", "aimed-dr", size)
    every = os.sched_getaffinity(0)
    layouts = [("shared", every, every, every)]
    if len(every) >= 2:
        first, second = sorted(every)[:2]
        layouts.insert(0, ("own", {first}, {first}, {second}))
    rows = []
    for layout, fio_cpus, src_cpus, dst_cpus in layouts:
        pin(sites.src.proc.pid, src_cpus)
        pin(sites.dst.proc.pid, dst_cpus)
        with_aim, without, behind = [], [], []
        for i in range(repeat):
            for name, out in (("plain", without), ("aimed", with_aim))[:: 1 if i % 2 == 0 else -1]:
                out.append(fio_iops(sites.src.nbd_uri(name), "randwrite", seconds, size, fio_cpus))
                if name == "aimed":  # how far the destination was behind when fio stopped
                    behind.append(timed(lambda: sites.caught_up("aimed-aim")))
        a, p = median(with_aim), median(without)
        rows.append({"benchmark": "4. fio 4 KiB randwrite iodepth 16 into an AIM source, " +
                     ("each site on a CPU of its own" if layout == "own" else "both sites and fio sharing all CPUs"),
                     "aimsnap": f"{a:.0f} IOPS (caught up {max(behind):.1f} s after)",
                     "baseline": f"same volume, no AIM set {p:.0f} IOPS", "ratio": a / p,
                     "target": ">= 0.5" if layout == "own" else "(reported)"})
    pin(sites.src.proc.pid, every)
    pin(sites.dst.proc.pid, every)
    return rows


# -- 5. memory during a destination outage --------------------------------------------------------------------
def outage(sites: Sites, work: str, size: int) -> dict:
    sites.s.create_volume("out", size)
    sites.aim("out-aim", "out", "out-dr", size, limit=f"{size // 2}")
    sites.dst.stop()
    img = os.path.join(work, "out.img")
    with open(img, "wb") as f:
        for _ in range(size // (4 * MiB)):
            f.write(os.urandom(4 * MiB))
    subprocess.run(["nbdcopy", img, sites.src.nbd_uri("out")], check=True)  # journal fills, then the bitmap
    info = sites.s.replication.info("out-aim")
    rss = vm_hwm_mib(sites.src.proc.pid)
    sites.dst = start_node(os.path.join(work, "dst"), ports={"api": sites.dst.api.removeprefix("http://"),
                                                            "nbd": sites.dst.nbd, "aim": sites.dst.aim})
    sites.d = RemoteNode(sites.dst.api, sites.dst.token, timeout=600)
    t0 = time.perf_counter()
    sites.caught_up("out-aim")
    resync = time.perf_counter() - t0
    return {"benchmark": f"5. {size // MiB} MiB written during an outage (journal limit {size // 2 // MiB} MiB)",
            "aimsnap": f"source RSS {rss:.0f} MiB, overflowed={info['overflowed']}, resync {resync:.1f} s",
            "baseline": "-", "ratio": rss, "target": "RSS <= 256 MiB"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--fio-seconds", type=int, default=8)
    ap.add_argument("--only", type=int, choices=range(1, 6), default=None, help="Run one part (1-5).")
    args = ap.parse_args()
    size = parse_size(args.size)
    work = tempfile.mkdtemp(prefix="aimsnap-bench-repl-", dir=os.environ.get("AIMSNAP_BENCH_DIR"))
    rows = []
    sites = None
    try:
        sites = Sites(work)
        parts = {1: lambda: [throughput(sites, work, min(size, 512 * MiB), args.repeat)],
                 2: lambda: traffic(sites, size),
                 3: lambda: rsync_vs_aim(sites, work, size, args.repeat),
                 4: lambda: journal_cost(sites, size, args.repeat, args.fio_seconds),
                 5: lambda: [outage(sites, work, min(size, 512 * MiB))]}
        for n, part in parts.items():
            if args.only in (None, n):
                rows.extend(part())
        rss = sites.stop()
        rows.append({"benchmark": "5. peak RSS over 1-5", "aimsnap": f"source {rss['source']:.0f} MiB, "
                     f"destination {rss['destination']:.0f} MiB", "baseline": "-",
                     "ratio": max(rss.values()), "target": "<= 256 MiB each"})
        emit("replication", rows)
    finally:
        for node in (sites.src, sites.dst) if sites else ():
            if node.proc.poll() is None:  # a failed run leaves no node behind
                node.proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
