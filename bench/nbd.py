"""The node's NBD server beside ``nbdkit file`` (a C NBD server from Debian), same load, same run.

* ``nbdcopy`` of 1 GiB into and out of a volume (4 connections), dirty-block tracking on (the
  volume has a complete-image relationship); throughput ratio node / nbdkit (target >= 0.8).
* ``fio`` (nbd engine) 4 KiB random reads and writes at iodepth 16; IOPS ratio (target >= 0.5).
* The node's peak RSS (VmHWM) over the run (target <= 256 MiB).

    python bench/nbd.py [--size 1GiB] [--repeat 3] [--fio-seconds 10]
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from common import emit, fio_iops, free_port, median, timed, vm_hwm_mib

from engine import parse_size  # noqa: E402
from orchestrator.demo.localnode import start_node  # noqa: E402


def start_nbdkit(path: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(["nbdkit", "--foreground", "--ipaddr", "127.0.0.1", "--port", str(port),
                             "--exportname", "v", "file", f"file={path}"], stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"nbd://127.0.0.1:{port}/v"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nbdkit did not start")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--fio-seconds", type=int, default=10)
    args = ap.parse_args()
    size = parse_size(args.size)
    work = tempfile.mkdtemp(prefix="aimsnap-bench-nbd-", dir=os.environ.get("AIMSNAP_BENCH_DIR"))
    node = None
    try:
        src = os.path.join(work, "src.img")
        with open(src, "wb") as f:
            for _ in range(size // (4 << 20)):
                f.write(os.urandom(4 << 20))
        node = start_node(os.path.join(work, "node"))
        env = {**os.environ, **node.cli_env()}
        aimsnap = [os.path.join(os.path.dirname(sys.executable), "aimsnap")]  # not -m: bench/policies.py would shadow
        subprocess.run([*aimsnap, "volume", "create", "v", "--size", str(size)], env=env, check=True,
                       capture_output=True)
        subprocess.run([*aimsnap, "snapshot", "create", "v-ci", "--source", "v", "--type", "complete-image"],
                       env=env, check=True, capture_output=True)
        plain = os.path.join(work, "plain.img")
        with open(plain, "wb") as f:
            f.truncate(size)
        kit, kit_uri = start_nbdkit(plain)
        ours = node.nbd_uri("v")
        out = os.path.join(work, "out.img")
        rows = []
        try:
            for direction in ("into", "out of"):
                times: dict[str, list[float]] = {"aimsnap": [], "nbdkit": []}
                for i in range(args.repeat):
                    for name, uri in (("aimsnap", ours), ("nbdkit", kit_uri))[:: 1 if i % 2 == 0 else -1]:
                        cmd = ["nbdcopy", "-C", "4", src, uri] if direction == "into" else ["nbdcopy", "-C", "4", uri, out]
                        times[name].append(timed(lambda: subprocess.run(cmd, check=True)))
                a, k = median(times["aimsnap"]), median(times["nbdkit"])
                rows.append({"load": f"nbdcopy 1 file {direction} volume", "aimsnap": f"{size / a / 2**20:.0f} MiB/s",
                             "nbdkit": f"{size / k / 2**20:.0f} MiB/s", "ratio": k / a, "target": ">= 0.8"})
            copy_rss = vm_hwm_mib(node.proc.pid)
            for rw in ("randread", "randwrite"):
                iops: dict[str, list[float]] = {"aimsnap": [], "nbdkit": []}
                for i in range(args.repeat):
                    for name, uri in (("aimsnap", ours), ("nbdkit", kit_uri))[:: 1 if i % 2 == 0 else -1]:
                        iops[name].append(fio_iops(uri, rw, args.fio_seconds, size))
                a, k = median(iops["aimsnap"]), median(iops["nbdkit"])
                rows.append({"load": f"fio 4KiB {rw} iodepth 16", "aimsnap": f"{a:.0f} IOPS", "nbdkit": f"{k:.0f} IOPS",
                             "ratio": a / k, "target": ">= 0.5"})
        finally:
            kit.send_signal(signal.SIGTERM)
            kit.wait()
        rss = vm_hwm_mib(node.proc.pid)
        node.stop()
        rows[0]["load"] = rows[0]["load"].replace("1 file", "1 GiB" if size == 1 << 30 else args.size)
        rows[1]["load"] = rows[1]["load"].replace("1 file", "1 GiB" if size == 1 << 30 else args.size)
        emit("nbd", rows)
        emit("nbd-rss", [{"node": "aimsnap node", "peak_rss_MiB_after_copies": copy_rss,
                          "peak_rss_MiB_after_fio": rss, "target": "<= 256"}])
    finally:
        if node is not None and node.proc.poll() is None:  # a failed run leaves no node behind
            node.proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
