"""The controller's own flight recorder: its steps, in its own topics.

`recorder trace -p $(pgrep -f 'recorder trace') 'tracer_.*'` shows what a
running controller is doing; a crash dump of the controller shows its last
steps. Records cost a few microseconds from Python and nothing when the
core library is missing.
"""

from __future__ import annotations

import recorder

ARM = recorder.topic("tracer_arm", 256, "Probes the controller attached and detached")
SESSION = recorder.topic("tracer_session", 128, "Trace sessions: targets, start, stop")
PROCS = recorder.topic("tracer_procs", 128, "Processes followed: exec and exit")
