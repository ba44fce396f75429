"""Run every benchmark and write bench/RESULTS.md (the README's table is taken from it).

    python bench/run_all.py [--only increment,...]
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHES = {"increment": ["increment.py"], "nbd": ["nbd.py"], "replication": ["replication.py"], "scheduler": ["scheduler.py"],
           "policies": ["policies.py"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=",".join(BENCHES))
    args = ap.parse_args()
    sections = [f"# Benchmark results\n\n{datetime.date.today()} on {platform.node()} "
                f"({os.cpu_count()} cores, Python {platform.python_version()}).\n"]
    for name in args.only.split(","):
        cmd = [sys.executable, *BENCHES[name]]
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        out = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True)
        sys.stdout.write(out.stdout)
        if out.returncode:
            sys.stderr.write(out.stderr)
            sys.exit(f"benchmark {name} failed")
        sections.append(f"## {name}\n\n`python bench/{' '.join(BENCHES[name])}`\n")
        for line in out.stdout.splitlines():
            if line.startswith("RESULT "):
                result = json.loads(line[7:])
                sections.append(_markdown(result["bench"], result["rows"]))
            elif line.startswith(("targets", "warm targets", "cold targets")):
                sections.append(f"- {line}\n")
    with open(os.path.join(HERE, "RESULTS.md"), "w") as f:
        f.write("\n".join(sections))


def _markdown(title: str, rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = [f"### {title}\n", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
