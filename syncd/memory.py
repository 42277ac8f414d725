"""What keeps a running daemon small (issue 13: idle RSS <= 75 MB; ``bench/idle_rss.py``).

Two things the code elsewhere cannot say by itself:

- :func:`lean_imports`: two packages whose ``__init__`` imports much more than a
  daemon uses. ``sqlalchemy.ext.asyncio`` imports its sessions and with them the whole
  ORM (~7.7 MiB of RSS; syncd runs Core statements on an ``AsyncEngine`` only);
  ``uvicorn`` imports its command line (click, watchfiles, the reloaders: ~1.8 MiB).
  Each is imported with only the names a daemon takes from it; any other name runs the
  package's own ``__init__`` at its first use, so nothing else changes.
- :func:`release_freed`: after start-up, give the C heap that start-up freed back to
  the system (glibc keeps it otherwise), and take what start-up left alive out of the
  garbage collector's rounds.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lean_imports() -> None:
    """Import the two packages lean (see above). Call before anything imports them."""
    lean_sqlalchemy_asyncio()
    lean_uvicorn()


def lean_sqlalchemy_asyncio() -> bool:
    """``sqlalchemy.ext.asyncio`` with its engine and results, without the ORM."""
    return lean_import(
        "sqlalchemy.ext.asyncio",
        {
            "engine": (
                "AsyncConnection",
                "AsyncEngine",
                "AsyncTransaction",
                "async_engine_from_config",
                "create_async_engine",
                "create_async_pool_from_url",
            ),
            "result": (
                "AsyncMappingResult",
                "AsyncResult",
                "AsyncScalarResult",
                "AsyncTupleResult",
            ),
        },
        then=_greenlet,
    )


def lean_uvicorn() -> bool:
    """``uvicorn`` with its ``Config`` and ``Server``, without its command line."""
    return lean_import(
        "uvicorn", {"_version": ("__version__",), "config": ("Config",), "server": ("Server",)}
    )


def _greenlet() -> None:
    from sqlalchemy.util import concurrency

    concurrency._concurrency_shim._initialize()  # as sqlalchemy.ext.asyncio's __init__ does


def lean_import(
    package: str, eager: Mapping[str, Sequence[str]], then: Callable[[], None] | None = None
) -> bool:
    """Import ``package`` with only the ``eager`` names of its submodules; True if done here.

    The package module is the real one (same spec, ``__path__`` and ``__file__``, its
    submodules import as usual), but its ``__init__`` runs only when a name it does not
    have yet is asked for (``uvicorn.run``, ``sqlalchemy.ext.asyncio.AsyncSession``).
    ``then`` is what the ``__init__`` does besides imports. Nothing is done if the
    package is already imported.
    """
    if package in sys.modules:
        return False
    spec = importlib.util.find_spec(package)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return False
    loader = spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[package] = module
    try:
        for submodule, names in eager.items():
            found = importlib.import_module(f"{package}.{submodule}")
            for name in names:
                if hasattr(found, name):  # if not, the __init__ will find it
                    setattr(module, name, getattr(found, name))
        if then is not None:
            then()
    except Exception:  # a newer release laid out otherwise: import it whole, as usual
        del sys.modules[package]
        return False

    def complete(name: str) -> Any:
        """Any other name: run the package's own ``__init__``, then answer."""
        module.__dict__.pop("__getattr__", None)
        loader.exec_module(module)
        return getattr(module, name)

    module.__getattr__ = complete  # type: ignore[method-assign]
    parent, _, child = package.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)  # as an import would
    return True


#: The garbage collector's youngest generation: collected after this many new objects.
YOUNG_OBJECTS = 10_000


def release_freed() -> None:
    """Collect garbage and hand freed C heap back to the system (glibc's ``malloc_trim``).

    Start-up allocates and frees a few MiB (configuration, migrations check, statement
    compilation); glibc keeps freed memory mapped unless told to trim. A no-op where
    there is no glibc.
    """
    gc.collect()
    # What is alive now lives as long as the daemon: modules, compiled statements,
    # the app. Frozen, the collector's full rounds no longer walk it: ~66,000 objects
    # made each such round 23 ms of a busy event loop, and all collections 5 % of its
    # time under a link load (docs/performance.md, 2026-12-08).
    gc.freeze()
    # A young generation of 10,000 objects instead of 700: under load most collections
    # found little to free, and collecting a fourteenth as often was 3-8 % more links a
    # second (docs/performance.md, 2026-12-08); what waits for them is a few MiB at most.
    gc.set_threshold(YOUNG_OBJECTS, *gc.get_threshold()[1:])
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(ImportError, OSError, AttributeError):
        import ctypes  # here: ~0.3 MiB a SQLite daemon would not load otherwise

        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim  # glibc only: AttributeError on musl
        trim.argtypes = [ctypes.c_size_t]
        trim.restype = ctypes.c_int
        trim(0)
