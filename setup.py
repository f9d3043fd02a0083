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
    install_requires=["volatility3>=2.28.0,<3", "pyelftools>=0.29", "cffi>=1.15"],
    extras_require={"test": ["pytest>=7", "jsonschema>=4", "hypothesis>=6"]},
    entry_points={"console_scripts": ["kvm-vol=kvm_vol.cli:main"]},
)
