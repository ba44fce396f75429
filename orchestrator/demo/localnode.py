"""Start ``aimsnap node serve`` as a child process on free loopback ports: the demo's two sites, and
the tests' and benchmarks' real nodes."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass
class NodeProc:
    root: str
    proc: subprocess.Popen
    api: str
    nbd: str
    aim: str
    token_file: str
    log_path: str

    @property
    def token(self) -> str:
        with open(self.token_file) as f:
            return f.read().strip()

    def nbd_uri(self, export: str) -> str:
        return f"nbd://{self.nbd}/{export}"

    def cli_env(self) -> dict:
        return {"AIMSNAP_NODE": self.api, "AIMSNAP_TOKEN_FILE": self.token_file}

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()


def start_node(root: str, *, token_file: str | None = None, timeout: float = 20, ports: dict | None = None,
               extra: tuple[str, ...] = (), prefix: tuple[str, ...] = (), new_session: bool = False,
               log_path: str | None = None) -> NodeProc:
    """Start a node on ``root`` and wait until it serves. Its output goes to ``log_path`` (default
    ``ROOT.log``); ``prefix`` runs before the interpreter (a wrapper such as ``unshare``)."""
    root = os.path.abspath(root)
    os.makedirs(root, exist_ok=True)
    info_path = os.path.join(root, "node.json")
    if os.path.exists(info_path):
        os.unlink(info_path)
    ports = ports or {}
    args = [*prefix, sys.executable, "-m", "orchestrator", "node", "serve", "--root", root,
            "--api", ports.get("api", "127.0.0.1:0"), "--nbd", ports.get("nbd", "127.0.0.1:0"),
            "--aim", ports.get("aim", "127.0.0.1:0")]
    if token_file:
        args += ["--token-file", os.path.abspath(token_file)]
    args += list(extra)
    log_path = log_path or f"{root}.log"
    with open(log_path, "ab") as log:  # the child has its own descriptor
        # cwd: the root, so that no module beside the caller (bench/policies.py) shadows a package
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=new_session,
                                cwd=root)
    deadline = time.monotonic() + timeout
    while not os.path.exists(info_path):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            with open(log_path) as f:
                raise RuntimeError(f"node did not start: {f.read()}")
        time.sleep(0.05)
    with open(info_path) as f:
        info = json.load(f)
    return NodeProc(root, proc, info["api"], info["nbd"], info["aim"], info["token_file"], log_path)
