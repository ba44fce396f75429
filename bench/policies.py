"""Load, validate and compile 10,000 policies across 100 files and plan the next 10 fires of
each, beside plain jsonschema validation of the same documents in the same run.

    python bench/policies.py [--files 100] [--per-file 100] [--repeat 3]
"""

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone

import yaml
from common import emit, median, topology

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import jsonschema  # noqa: E402

from orchestrator.schedule.compile import compile_jobs  # noqa: E402
from policies.schema import schema  # noqa: E402
from policies.validate import load_policies  # noqa: E402

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]
CRONS = ["H/10 8-18 * * mon-fri", "*/5 * * * *", "30 2 * * *", "H H * * *", "0 */4 * * *"]


def write_files(work: str, files: int, per_file: int) -> list[str]:
    rng = random.Random(1)
    paths = []
    for f in range(files):
        lines = topology(f"prod{f}", f"dr{f}")
        for i in range(per_file):
            lines += [f"  - name: p{f}-{i}", "    kind: auto-marker", f"    node: prod{f}", "    aim_set: a"]
            if rng.random() < 0.5:
                lines.append(f"    every: {rng.choice(['5m', '15m', '1h', '90m', '1d'])}")
            else:
                lines.append(f"    cron: \"{rng.choice(CRONS)}\"")
            lines += [f"    timezone: {rng.choice(ZONES)}", "    marker: {destination_snapshot: v-dr-pit}",
                      "    retain: {last: 8, hourly: 24, min: 2}"]
        path = os.path.join(work, f"p{f:03d}.yaml")
        with open(path, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        paths.append(path)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--per-file", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="aimsnap-bench-pol-")
    try:
        paths = write_files(work, args.files, args.per_file)
        docs = [yaml.load(open(p), Loader=yaml.CSafeLoader) for p in paths]
        validator = jsonschema.Draft202012Validator(schema())
        start = datetime(2026, 3, 28, tzinfo=timezone.utc)
        plain, full, plan_only = [], [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            for d in docs:
                assert not list(validator.iter_errors(d))
            plain.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            jobs = compile_jobs(load_policies(paths))
            t1 = time.perf_counter()
            fires = sum(len(j.trigger.fire_times(start, 10)) for j in jobs)
            full.append(time.perf_counter() - t0)
            plan_only.append(time.perf_counter() - t1)
        n = args.files * args.per_file
        assert len(jobs) == n and fires == 10 * n
        p, f = median(plain), median(full)
        emit("policies", [{"policies": n, "files": args.files, "pipeline_s": f, "of_which_plan_s": median(plan_only),
                           "plain_jsonschema_s": p, "ratio": f / p, "target": "<= 3x and <= 3 s"}])
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
