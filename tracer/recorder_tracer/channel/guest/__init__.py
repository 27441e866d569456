"""The guest's end of the channel: batches, the backlog, the connection,
and the sources `recorder daemon --forward` adds (trace, metrics, snapshots,
console)."""
