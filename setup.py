"""Builds recorder._core: the Python extension with the C core compiled in.

Everything else about the package is in pyproject.toml. The core's sources
(probes/src) are compiled into the extension, so `pip install .` needs no
prior `make`, and a Python process carries the same USDT notes and registry
a tracer looks for in C programs. Only the module's init function is
exported: the core's symbols stay hidden, so they never clash with a
librecorder.so the same process may load.
"""

from glob import glob

from setuptools import Extension, setup

setup(
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
