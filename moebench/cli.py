"""The click command line. It parses, calls plain functions that return data, and prints.

Exit codes (DESIGN.md): 0 ok, 1 regression found or a case failed, 2 bad input, 3 environment problem.
"""

from __future__ import annotations

import sys

import click

EXIT_BAD_INPUT = 2


class MoebenchGroup(click.Group):
    """Turns the library's ValueErrors (bad spec, bad config, unknown name) into exit 2 with one line."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ValueError as err:
            click.echo(f"moebench: error: {err}", err=True)
            sys.exit(EXIT_BAD_INPUT)


@click.group(cls=MoebenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="moebench")
def cli() -> None:
    """Benchmark and profile Mixture-of-Experts layer designs."""


@cli.command("list")
def list_cmd() -> None:
    """List layer variants, dispatch backends and model presets."""
    from moebench.dispatch import BACKENDS
    from moebench.layers import VARIANTS

    click.echo("variants:")
    for name, cls in VARIANTS.items():
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        click.echo(f"  {name:<14} {doc}")
    click.echo("backends:")
    for name, backend in BACKENDS.items():
        flags = []
        flags.append("dropless" if backend.supports_dropless else "")
        flags.append("capacity" if backend.supports_capacity else "")
        flags.append("graph-capturable" if backend.graph_capturable else "")
        flags.append("host-syncs" if backend.host_syncs else "no-host-sync")
        click.echo(f"  {name:<14} {backend.description}  [{', '.join(f for f in flags if f)}]")


def main() -> None:
    cli(prog_name="moebench")


if __name__ == "__main__":
    main()
