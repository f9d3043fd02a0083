"""FreeBSD plugins for Volatility 3, installed by kvm-vol as ``volatility3.plugins.freebsd``.

Like ``volatility3.plugins.linux``, the package path spans every plugin root
so that ``-p`` directories can add or override FreeBSD plugins.
"""

import os

import volatility3.plugins

__path__ = [os.path.join(p, "freebsd") for p in volatility3.plugins.__path__]
