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
