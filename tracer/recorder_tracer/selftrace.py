"""The controller's own flight recorder: its steps, in its own topics.

`recorder trace -p $(pgrep -f 'recorder trace') 'tracer_.*'` shows what a
running controller is doing; a crash dump of the controller shows its last
steps. A record costs about a hundred nanoseconds (recorder._core).
"""

from __future__ import annotations

from recorder import Recorder

ARM = Recorder("tracer_arm", 256, "Probes the controller attached and detached")
SESSION = Recorder("tracer_session", 128, "Trace sessions: targets, start, stop")
PROCS = Recorder("tracer_procs", 128, "Processes followed: exec and exit")
