"""One channel out of a guest: records, metrics, snapshots and console lines
over one connection, on the collector's clock (see docs/channel.md)."""
