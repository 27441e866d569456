"""Builds recorder._core and gives the wheel the probe contract's headers.

Everything else about the package is in pyproject.toml. The core's sources
(probes/src) are compiled into the extension, so `pip install .` needs no
prior `make`, and a Python process carries the same USDT notes and registry
a tracer looks for in C programs. Only the module's init function is
exported: the core's symbols stay hidden, so they never clash with a
librecorder.so the same process may load.

The tracer's BPF programs (recorder_tracer/kernel/bpf/*.c) include the
contract's headers (probes/include/recorder/*.h): build_py copies them into
recorder_tracer/kernel/include/, where an installed tracer finds them (a
checkout, editable install included, reads probes/include itself).
"""

from glob import glob
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

CONTRACT_HEADERS = Path("probes/include/recorder")
INSTALLED_HEADERS = Path("recorder_tracer/kernel/include/recorder")


class BuildWithContract(build_py):
    """build_py, plus the contract headers as package data of the tracer."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return      # the checkout's probes/include is used in place
        target = Path(self.build_lib) / INSTALLED_HEADERS
        self.mkpath(str(target))
        for header in sorted(CONTRACT_HEADERS.glob("*.h")):
            self.copy_file(str(header), str(target / header.name))


setup(
    cmdclass={"build_py": BuildWithContract},
    ext_modules=[
        Extension(
            "recorder._core",
            sources=["pyapi/recorder/_core.c", *sorted(glob("probes/src/*.c"))],
            include_dirs=["probes/include", "probes/src"],
            depends=sorted(glob("probes/include/**/*.h", recursive=True)
                           + glob("probes/src/*.h")),
            extra_compile_args=["-std=gnu11", "-fvisibility=hidden", "-O2",
                                "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-Wno-missing-field-initializers",
                                "-Wno-cast-function-type"],
            libraries=["pthread"],
        ),
    ],
)
