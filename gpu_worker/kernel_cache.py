"""Which Numba kernels a process compiled and which it loaded from the on-disk cache.

Every kernel of the CPU engine is compiled with ``cache=True``: the first process after an
install compiles them (about 10 s on two cores) and writes the machine code beside its module
(``gpu_worker/__pycache__``) or, where the package is not writable (a read-only image), to
``$NUMBA_CACHE_DIR``; every later process loads them in well under a second.
"""

from __future__ import annotations

import sys

from numba.core.registry import CPUDispatcher


def kernels() -> dict[str, CPUDispatcher]:
    """The cached Numba kernels of the ``gpu_worker`` modules imported so far, by name."""
    found = {}
    for name, module in list(sys.modules.items()):
        if not name.startswith("gpu_worker.") or module is None:
            continue
        for attr, value in vars(module).items():
            if isinstance(value, CPUDispatcher) and value.targetoptions.get("inline") is None:
                found[f"{name}.{attr}"] = value
    return found


def uncached() -> list[str]:
    """Kernels that would be compiled again in every process (no ``cache=True``)."""
    return sorted(name for name, k in kernels().items() if type(k._cache).__name__ == "NullCache")


def counts() -> dict[str, int]:
    """{"compiled": specialisations compiled in this process, "loaded": from the cache}."""
    compiled = loaded = 0
    for kernel in kernels().values():
        compiled += sum(kernel.stats.cache_misses.values())
        loaded += sum(kernel.stats.cache_hits.values())
    return {"compiled": compiled, "loaded": loaded}


def kernel_words(counts: dict[str, int]) -> str:
    """``counts`` for a log line or the CLI: "12 kernels from the cache", or what compiled."""
    if counts["compiled"]:
        return (f"compiled {counts['compiled']} Numba kernels (once after an install; "
                f"{counts['loaded']} from the cache)")
    return f"{counts['loaded']} Numba kernels from the cache"
