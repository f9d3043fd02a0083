"""kvm-vol: FreeBSD memory forensics (libkvm semantics) inside Volatility 3.

Importing this package has no side effects on Volatility; ``kvm_vol.volatility``
(imported by the plugin modules installed as ``volatility3.plugins.freebsd``)
registers the layers, stackers, identifier, symbol finder and symbol
directories.
"""

__version__ = "0.1.0"
