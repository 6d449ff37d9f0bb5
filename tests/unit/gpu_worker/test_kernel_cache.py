"""The Numba kernels compile once after an install; every later process loads them."""

import json
import subprocess
import sys

from gpu_worker import kernel_cache
from gpu_worker.cpu_engine import CpuEngine
from tests.conftest import ROOT

WARM_UP = ("import json; from gpu_worker.cpu_engine import CpuEngine; "
           "print(json.dumps(CpuEngine().warm_up()['kernels']))")


def _warm_up_in_a_new_process() -> dict:
    done = subprocess.run([sys.executable, "-c", WARM_UP], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_kernel_of_the_cpu_engine_is_cached_on_disk():
    CpuEngine().warm_up()
    names = kernel_cache.kernels()
    assert {"gpu_worker.marching._generate", "gpu_worker.mesh._faulty_vertices",
            "gpu_worker.stl._pack"} <= set(names)
    assert kernel_cache.uncached() == []


def test_a_second_process_compiles_nothing():
    first = _warm_up_in_a_new_process()  # compiles only on the first run after an install
    second = _warm_up_in_a_new_process()
    assert second["compiled"] == 0
    assert second["loaded"] == first["compiled"] + first["loaded"] > 10


def test_the_words_say_what_compiled():
    assert kernel_cache.kernel_words({"compiled": 0, "loaded": 11}) == \
        "11 Numba kernels from the cache"
    assert "compiled 3 Numba kernels" in kernel_cache.kernel_words({"compiled": 3, "loaded": 8})
