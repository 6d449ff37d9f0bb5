"""Mesh checks written independently of gpu_worker.mesh, for tests."""

import numpy as np


def edge_check(faces: np.ndarray, n_vertices: int) -> tuple[bool, bool]:
    """(closed, oriented) computed independently of gpu_worker.mesh: every directed edge
    appears once and its reverse appears once."""
    f = faces.astype(np.int64)
    directed = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    key = directed[:, 0] * n_vertices + directed[:, 1]
    rev = directed[:, 1] * n_vertices + directed[:, 0]
    unique, counts = np.unique(key, return_counts=True)
    once = bool((counts == 1).all())
    paired = bool(np.isin(rev, unique).all())
    undirected = np.unique(np.sort(directed, axis=1), axis=0, return_counts=True)[1]
    return bool((undirected == 2).all()), once and paired
