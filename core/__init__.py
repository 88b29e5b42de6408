"""plmforge core: plugin contracts, registry, spec, data and the run loop.

Core knows plugin *contracts* only; it never imports a plugin by module name.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("plmforge")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"
