"""`python -m recorder_tracer.cli`: the `recorder` command."""

from recorder_tracer.cli.app import main

main()
