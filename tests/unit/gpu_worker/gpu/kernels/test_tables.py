"""The CUDA tables are the CPU's, tested where there is no GPU."""

from __future__ import annotations

from gpu_worker.gpu.kernels import tables
from gpu_worker.marching import TABLES


def test_the_checked_in_cuda_tables_are_the_cpu_tables():
    assert tables.HEADER_PATH.read_text() == tables.render()
    text = tables.render()
    # spot checks against the CPU arrays: case 1 (corner 0 outside) is one triangle 0, 8, 3
    assert TABLES["tri"][1][:3].tolist() == [0, 8, 3]
    assert "__constant__ signed char MC_TRI[256][16]" in text
    assert "__constant__ unsigned char MC_EDGE_AXIS[12] = {0, 1, 0, 1, 0, 1, 0, 1, 2, 2, 2, 2};" \
        in text
