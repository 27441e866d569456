"""One process whose recorder topics a session armed, and how to read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recorder_tracer.kernel import arm
from recorder_tracer.target.dynamic import DYNAMIC_PROBE
from recorder_tracer.target.memory import ProcessImage, Topic


@dataclass
class ArmedProcess:
    """One traced process: what we attached and how to read its records."""

    pid: int
    comm: str
    image: ProcessImage
    topics: dict[int, Topic]
    attachments: list[arm.Attachment]
    armed_topics: set[str]
    probes: list[Any] = field(default_factory=list)
    site_topics: dict[int, str | None] = field(default_factory=dict)
    runtime_armed: dict[str, Topic] = field(default_factory=dict)
    memory: int | None = None   # /proc/PID/mem of the image we armed
    # Topic ids its registry did not have when looked up: not rebuilt per
    # record (a process can write any id into its entries).
    unknown_topics: set[int] = field(default_factory=set)
    ns_pid: int | None = None   # its pid in its own PID namespace, if another
    # When it exec'd another program (CLOCK_MONOTONIC ns), if it did: an
    # entry older than that is this image's, not the new program's.
    exec_ns: int | None = None

    def topic_at(self, probe_address: int) -> str | None:
        """The topic whose probe fired at `probe_address` (a runtime address):
        the site whose link-time address is page-congruent with it. Also maps
        that file into the image, so a process that already exited can still
        be read from its files."""
        if probe_address in self.site_topics:
            return self.site_topics[probe_address]
        for probe in self.probes:
            base = probe_address - probe.address
            if base >= 0 and base % 4096 == 0:
                self.image.add_file(probe.path, base)
                # The shared probe of run-time topics names none of them.
                name = None if probe.name == DYNAMIC_PROBE else probe.name
                self.site_topics[probe_address] = name
                return name
        return None
