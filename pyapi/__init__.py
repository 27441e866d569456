"""recorder for Python: record into the same C core, fire the same probes.

    import recorder
    net = recorder.topic("net", 64, "Network traffic")
    net.record("sent %d bytes to %s", 42, "example.org")
    recorder.record("net", "closed")        # by name

Run-time topics share the USDT probe recorder:recorder_dynamic; a tracer
arms them one by one (`recorder trace -p PID net`).
"""

from recorder.core import Topic, available, dump, library, record, topic, trace_set

# Load the core now, so a tracer finds it mapped (and its probe) from the
# moment the program imports recorder, before its first topic exists.
library()

__all__ = ["Topic", "available", "dump", "record", "topic", "trace_set"]
