"""kvm-vol: FreeBSD memory forensics (libkvm semantics) for Volatility 3.

Two top-level items are installed:
* ``kvm_vol`` - layers, stackers, symbol tools, the forge, the libkvm-style API;
  the repository's ``symbols/`` folder is installed inside it as ``kvm_vol._symbols``;
* ``volatility3.plugins.freebsd`` - thin plugin modules (from
  ``kvm_vol/plugins/freebsd``) placed where Volatility's plugin loader walks,
  so ``vol -f vmcore freebsd.pslist`` works without ``-p``.  No
  ``volatility3/__init__.py`` is shipped.
"""

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build the C translation core (``kvm_vol.core._native``) when a compiler works.

    Any failure (no compiler, no Python headers) is reported as a warning and
    the package installs without the extension: ``kvm_vol.core.engine`` then
    serves every translation from the pure-Python twin, with the same results.
    """

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure means "use the twin"
            self._skip(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._skip(exc)

    @staticmethod
    def _skip(exc):
        import warnings

        warnings.warn(f"kvm-vol: the C core was not built ({exc}); the pure-Python twin will be used")


setup(
    name="kvm-vol",
    version="0.1.0",
    description="FreeBSD kernel memory forensics for Volatility 3 (libkvm semantics)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.8",
    packages=find_packages(include=["kvm_vol", "kvm_vol.*"], exclude=["kvm_vol.plugins", "kvm_vol.plugins.*"])
    + ["kvm_vol._symbols", "volatility3.plugins.freebsd"],
    package_dir={
        "kvm_vol._symbols": "symbols",
        "volatility3.plugins.freebsd": "kvm_vol/plugins/freebsd",
    },
    package_data={"kvm_vol._symbols": ["types/*.json.xz"]},
    install_requires=["volatility3>=2.28.0,<3", "pyelftools>=0.29", "cffi>=1.15", "zstandard>=0.18"],
    extras_require={"test": ["pytest>=7", "jsonschema>=4", "hypothesis>=6"]},
    entry_points={"console_scripts": ["kvm-vol=kvm_vol.cli:main"]},
    cffi_modules=["kvm_vol/core/_build_native.py:ffibuilder"],
    cmdclass={"build_ext": OptionalBuildExt},
)
