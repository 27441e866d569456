"""The `recorder` command line: thin click commands over the library."""

import click


@click.group()
def main() -> None:
    """recorder: a flight-recorder tracer for recorder topics and USDT probes."""


if __name__ == "__main__":
    main()
