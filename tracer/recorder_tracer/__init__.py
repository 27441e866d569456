"""recorder's tracer: BPF harvest of recorder probes and the `recorder` CLI."""
