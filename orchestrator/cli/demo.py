"""``aimsnap demo`` and the demo policies' hidden quiesce hook."""

import click

from ..demo.workload import request


@click.command()
@click.option("--seconds", default=30, show_default=True, type=click.IntRange(5, 3600),
              help="How long the workload writes while the policies run.")
@click.option("--keep", type=click.Path(file_okay=False), default=None,
              help="Work in DIR and keep all of it, the nodes' roots included.")
@click.option("--out", type=click.Path(file_okay=False), default="aimsnap-demo", show_default=True,
              help="Without --keep: where the outcome store, the HTML report, the policy file and the logs are left.")
@click.option("--rate", default=300, show_default=True, type=click.IntRange(1, 100000), help="Writes per second.")
@click.option("--seed", default=1, show_default=True)
def demo(seconds: int, keep: str | None, out: str, rate: int, seed: int) -> int:
    """Two nodes on loopback, the demo policies, a write workload, and a verified report."""
    from ..demo.run import DemoFailed, main
    try:
        return main(seconds, keep, out, rate, seed)
    except DemoFailed as e:
        raise click.ClickException(str(e)) from None


@click.command("demo-quiesce", hidden=True)
@click.argument("op", type=click.Choice(["freeze", "thaw"]))
@click.argument("volumes", nargs=-1, required=True)
def demo_quiesce(op: str, volumes: tuple[str, ...]) -> int:
    """The demo policies' quiesce hook: pause (freeze) or resume (thaw) the demo's writes to VOLUMES."""
    try:
        request(op, list(volumes))
    except (RuntimeError, OSError) as e:
        click.echo(f"aimsnap demo-quiesce: {e}", err=True)
        return 1
    return 0


@click.command("demo-check", hidden=True)
@click.option("--fs", "fs_snapshot", default=None, help="The snapshot whose clone holds a file system to check.")
@click.argument("point")
@click.argument("snapshots", nargs=-1, required=True)
def demo_check(fs_snapshot: str | None, point: str, snapshots: tuple[str, ...]) -> int:
    """The demo's DR test check: each clone ($AIMSNAP_NBD_URLS, one per snapshot in order) serves
    exactly its point over NBD; the file system on the --fs one passes contrib/checks/aimsnap-check-fs;
    and each takes a write that leaves its point unchanged."""
    import os
    import urllib.parse

    from engine.client.nbd import NbdClient

    from ..demo.workload import digest
    urls = os.environ.get("AIMSNAP_NBD_URLS", "").split()
    if len(urls) != len(snapshots):
        click.echo(f"aimsnap demo-check: {len(urls)} clone URL(s) for {len(snapshots)} snapshot(s)", err=True)
        return 2
    for url, snap in zip(urls, snapshots):
        parsed = urllib.parse.urlsplit(url)
        clone, origin = NbdClient(parsed.netloc, parsed.path.lstrip("/")), NbdClient(parsed.netloc, f"{snap}@{point}")
        try:
            digests = [digest(_reader(c, url), c.size) for c in (clone, origin)]
            if digests[0] != digests[1]:
                click.echo(f"{snap}@{point}: the clone differs from its point", err=True)
                return 1
            if snap == fs_snapshot and _check_fs(url) != 0:
                return 1
            before = origin.read(0, 4096)[1]
            if clone.write(0, b"dr-test" * 585, flags=1)[0] or origin.read(0, 4096)[1] != before:
                click.echo(f"{snap}@{point}: writing the clone failed or changed the point", err=True)
                return 1
            click.echo(f"{snap}: clone equal to the point, writable, point unchanged")
        finally:
            clone.close()
            origin.close()
    return 0


def _reader(client, url: str):
    """``read(offset, length)`` of an NBD export, raising on an error reply."""
    def read(offset: int, length: int) -> bytes:
        err, data = client.read(offset, length)
        if err:
            raise OSError(err, f"reading {url}")
        return data
    return read


def _check_fs(url: str) -> int:
    """contrib/checks/aimsnap-check-fs on a clone, where this machine can run it (root, FUSE, nbdfuse)."""
    import os
    import shutil
    import subprocess
    from pathlib import Path
    script = Path(__file__).resolve().parents[2] / "contrib" / "checks" / "aimsnap-check-fs"
    missing = os.environ.get("AIMSNAP_DEMO_NO_FS") or (
        "no contrib/checks (not a source checkout)" if not script.exists() else
        "needs root, /dev/fuse and nbdfuse (libnbd-bin)" if os.geteuid() != 0 or not os.path.exists("/dev/fuse")
        or not shutil.which("nbdfuse") else "")
    if missing:
        click.echo(f"file-system check skipped: {missing}")
        return 0
    p = subprocess.run([str(script), url, "--", "sh", "-c", 'cat "$AIMSNAP_MOUNT/hello"'], capture_output=True,
                       text=True, timeout=60)
    if p.returncode == 0:
        read = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
        click.echo(f"file system clean (aimsnap-check-fs: fsck -n), read-only mount reads {read!r}")
    else:
        click.echo(f"aimsnap-check-fs failed (exit {p.returncode}): {p.stderr.strip()[-300:]}", err=True)
    return p.returncode
