"""The one compiled part of dmfnet: the pcap record walk (optional: without a C compiler
the package installs all the same and walks records with numpy)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "dmfnet.capture._records",
            ["src/dmfnet/capture/_records.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
