"""libkvm-style API over kvm-vol's layers: :func:`open` gives a handle on a dump or a live system."""


def open(*args, **kwargs):
    """``kvm_openfiles()``; see :func:`kvm_vol.kvm.handle.open` (imported on first use: it loads Volatility)."""
    from kvm_vol.kvm.handle import open as _open

    return _open(*args, **kwargs)
