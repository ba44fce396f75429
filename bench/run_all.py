"""Run every benchmark and write bench/RESULTS.md (the README's table is taken from it).

    python bench/run_all.py [--only increment,...]

With ``--only``, the sections of the other benchmarks are kept from the existing file.
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
           "policies": ["policies.py"], "recovery": ["recovery.py"], "scale": ["scale.py"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=",".join(BENCHES))
    args = ap.parse_args()
    header = (f"# Benchmark results\n\nOn {platform.node()} ({os.cpu_count()} cores, Python "
              f"{platform.python_version()}); each section says when it was measured.\n")
    path = os.path.join(HERE, "RESULTS.md")
    kept = _sections(path)
    for name in args.only.split(","):
        sections = [f"## {name}\n\n{datetime.date.today()}: `python bench/{' '.join(BENCHES[name])}`\n"]
        cmd = [sys.executable, *BENCHES[name]]
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        out = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True)
        sys.stdout.write(out.stdout)
        if out.returncode:
            sys.stderr.write(out.stderr)
            sys.exit(f"benchmark {name} failed")
        for line in out.stdout.splitlines():
            if line.startswith("RESULT "):
                result = json.loads(line[7:])
                sections.append(_markdown(result["bench"], result["rows"]))
            elif line.startswith(("targets", "warm targets", "cold targets")):
                sections.append(f"- {line}\n")
        kept[name] = "\n".join(sections)
        with open(path, "w") as f:  # after each benchmark: a later failure keeps what was measured
            f.write("\n".join([header, *(kept[n] for n in BENCHES if n in kept)]))


def _sections(path: str) -> dict[str, str]:
    """The ``## name`` sections of an existing results file."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return {}
    parts = text.split("\n## ")[1:]
    return {p.split("\n", 1)[0].strip(): "## " + p.rstrip("\n") + "\n" for p in parts}


def _markdown(title: str, rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = [f"### {title}\n", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
