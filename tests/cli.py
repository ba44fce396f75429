"""Run the real ``aimsnap`` command in a child process, as an operator would."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass


@dataclass
class Result:
    code: int
    out: bytes
    err: str

    @property
    def text(self) -> str:
        return self.out.decode()

    def json(self):
        return json.loads(self.out)


def aimsnap(*args: str, input: bytes | None = None, env: dict | None = None, timeout: float = 60) -> Result:
    full_env = {**os.environ, **(env or {})}
    p = subprocess.run([sys.executable, "-m", "orchestrator", *args], input=input, capture_output=True,
                       env=full_env, timeout=timeout)
    return Result(p.returncode, p.stdout, p.stderr.decode())
