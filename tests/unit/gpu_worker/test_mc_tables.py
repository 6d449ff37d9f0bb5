"""The classic table: provenance and internal consistency."""

import numpy as np
from skimage.measure import _marching_cubes_lewiner_luts as sk_luts
from skimage.measure._marching_cubes_lewiner import _to_array

from gpu_worker.marching import TABLES
from gpu_worker.mc_tables import CORNER_OFFSETS, EDGE_CORNERS, TRIANGLES


def test_table_is_the_classic_one_scikit_image_uses():
    classic = _to_array(sk_luts.CASESCLASSIC)
    assert classic.shape == (256, 16)
    for case in range(256):
        row = [int(e) for e in classic[case] if e >= 0]
        assert list(TRIANGLES[case]) == row, f"case {case} differs"


def test_every_triangle_uses_only_cut_edges_and_every_cut_edge_is_used():
    for case in range(256):
        outside = [(case >> c) & 1 for c in range(8)]
        cut = {e for e, (a, b) in enumerate(EDGE_CORNERS) if outside[a] != outside[b]}
        used = set(TRIANGLES[case])
        assert used == cut, f"case {case}: uses {sorted(used)}, cut {sorted(cut)}"
        assert len(TRIANGLES[case]) % 3 == 0


def test_edge_owner_arrays_match_the_corner_geometry():
    for e, (a, b) in enumerate(EDGE_CORNERS):
        pa, pb = np.array(CORNER_OFFSETS[a]), np.array(CORNER_OFFSETS[b])
        assert np.abs(pa - pb).sum() == 1, "an edge joins neighbouring corners"
        owner = np.minimum(pa, pb)
        assert TABLES["edge_axis"][e] == np.argmax(np.abs(pa - pb))
        assert TABLES["edge_dx"][e] == owner[0]
        assert TABLES["edge_row"][e] == owner[2] * 2 + owner[1]
    assert TABLES["ntri"].max() == 5
