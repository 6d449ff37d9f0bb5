"""Mesh stage: smoothing that keeps the volume, checks and the mesh report (decimation is in
``decimation``).

Meshes are indexed: float32 vertices in patient LPS millimetres, int32 faces wound
counter-clockwise seen from outside (outward normals).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numba
import numpy as np
from scipy import sparse


@dataclass(frozen=True)
class Mesh:
    """vertices: (V, 3) float32 LPS mm; faces: (F, 3) int32, outward winding."""

    vertices: np.ndarray
    faces: np.ndarray


@dataclass(frozen=True)
class Topology:
    """closed: every edge has exactly two faces; oriented: they traverse it in opposite
    directions (so the normals agree); pinched vertices: the faces around a vertex form more
    than one fan (two sheets touching at a point); parts: connected components."""

    closed: bool
    oriented: bool
    parts: int
    boundary_edges: int
    non_manifold_edges: int
    pinched_vertices: int = 0

    @property
    def watertight(self) -> bool:
        """A closed, oriented 2-manifold: what a slicer needs."""
        return self.closed and self.oriented and self.pinched_vertices == 0


@numba.njit(cache=True, nogil=True)
def _corners(faces, nv):  # pragma: no cover - compiled
    """The corners of each vertex, grouped by vertex (a counting sort, CSR): for vertex v,
    ``start[v]:start[v + 1]`` index ``out`` and ``into``, where the face (v, b, c) (in its
    winding order) gives out = b (the half-edge v->b) and into = c (the half-edge c->v)."""
    start = np.zeros(nv + 1, np.int64)
    for t in range(faces.shape[0]):
        for k in range(3):
            start[faces[t, k] + 1] += 1
    for v in range(nv):
        start[v + 1] += start[v]
    fill = start[:-1].copy()
    out = np.empty(start[nv], np.int32)
    into = np.empty(start[nv], np.int32)
    for t in range(faces.shape[0]):
        a, b, c = faces[t, 0], faces[t, 1], faces[t, 2]
        i = fill[a]
        out[i], into[i] = b, c
        fill[a] = i + 1
        i = fill[b]
        out[i], into[i] = c, a
        fill[b] = i + 1
        i = fill[c]
        out[i], into[i] = a, b
        fill[c] = i + 1
    return start, out, into


@numba.njit(parallel=True, cache=True, nogil=True)
def _faulty_vertices(start, out, into):  # pragma: no cover - compiled
    """Per vertex v, True unless its corners close into one fan: from the first corner,
    follow each face's c->v to the corner whose v->c continues it; the walk must come back
    to the first corner after exactly as many steps as v has corners.

    A walk that does visits every corner once, each as the first with its v->b, so the
    half-edges v->b are distinct and each has its reverse once. That at every vertex is
    the same as: each directed edge once, its reverse once (closed, oriented), no vertex
    pinched."""
    nv = start.shape[0] - 1
    faulty = np.zeros(nv, np.bool_)
    for v in numba.prange(nv):
        lo, hi = start[v], start[v + 1]
        if lo == hi:
            continue  # unused vertex
        fault = False
        for e in range(lo, hi):
            if out[e] == v or into[e] == v or into[e] == out[e]:  # a degenerate face
                fault = True
        if not fault:
            e, steps = lo, 0
            while True:
                c = into[e]
                e = -1
                for g in range(lo, hi):
                    if out[g] == c:
                        e = g
                        break
                steps += 1
                if e < 0 or e == lo or steps > hi - lo:
                    break
            fault = e != lo or steps != hi - lo
        faulty[v] = fault
    return faulty


@numba.njit(cache=True, nogil=True)
def _count_parts(faces, nv):  # pragma: no cover - compiled
    """Connected components of the used vertices (union-find with path halving)."""
    parent = np.arange(nv, dtype=np.int32)
    used = np.zeros(nv, np.bool_)
    for t in range(faces.shape[0]):
        a = faces[t, 0]
        used[a] = True
        for k in range(1, 3):
            b = faces[t, k]
            used[b] = True
            ra = a
            while parent[ra] != ra:
                parent[ra] = parent[parent[ra]]
                ra = parent[ra]
            rb = b
            while parent[rb] != rb:
                parent[rb] = parent[parent[rb]]
                rb = parent[rb]
            if ra < rb:
                parent[rb] = ra
            elif rb < ra:
                parent[ra] = rb
    parts = 0
    for v in range(nv):
        if used[v] and parent[v] == v:
            parts += 1
    return parts


def _edge_faults(faces: np.ndarray, nv: int) -> tuple[int, int, bool]:
    """(open edges, non-manifold edges, oriented) by counting undirected and directed edges;
    only for a mesh that failed the fan check, to say what is wrong."""
    f = faces.astype(np.int64)
    a = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    b = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    _, counts = np.unique(np.minimum(a, b) * nv + np.maximum(a, b), return_counts=True)
    directed = np.unique(a * nv + b, return_counts=True)[1]
    return (int((counts == 1).sum()), int((counts > 2).sum()),
            bool((directed == 1).all()) and bool((counts == 2).all()))


def topology(mesh: Mesh) -> Topology:
    """Closed, oriented, 2-manifold and parts, checked from the faces alone (independent of
    how they were made): linear passes in Numba, about 0.05 s for 2 million triangles.

    A vertex passes when its faces form one fan whose edges each occur once in each
    direction; a mesh passes when every used vertex does. Only a mesh that fails is examined
    further, to count its open and non-manifold edges and pinched vertices.
    """
    return _checked(mesh, measure=False)[0]


def _checked(mesh: Mesh, measure: bool) -> tuple[Topology, tuple | None]:
    """The topology, and with ``measure`` (centre, low and high corner, area, volume)."""
    nv = len(mesh.vertices)
    if len(mesh.faces) == 0:
        return Topology(False, False, 0, 0, 0), None
    faces = np.ascontiguousarray(mesh.faces, dtype=np.int32)
    if faces.min() < 0 or faces.max() >= nv:
        raise ValueError("a face refers to a vertex that does not exist")
    vertices = np.ascontiguousarray(mesh.vertices)

    def sequential_passes() -> tuple[int, tuple | None]:
        parts = int(_count_parts(faces, nv))
        if not measure:
            return parts, None
        centre, lo, hi = _centre_and_bounds(vertices)
        return parts, (centre, lo, hi, *_area_and_volume(vertices, faces, centre))

    # the sequential passes run beside the parallel fan check (all release the GIL)
    with ThreadPoolExecutor(1) as pool:
        side = pool.submit(sequential_passes)
        faulty = _faulty_vertices(*_corners(faces, nv))
        parts, measures = side.result()
    if not faulty.any():
        return Topology(True, True, parts, 0, 0), measures
    boundary, non_manifold, oriented = _edge_faults(faces, nv)
    closed = boundary == 0 and non_manifold == 0
    # a vertex whose edges are all fine yet fails the fan walk is pinched
    pinched = int(faulty.sum()) if closed and oriented else 0
    return Topology(closed, oriented and closed, parts, boundary, non_manifold, pinched), measures


@numba.njit(cache=True, nogil=True)
def _area_and_volume(vertices, faces, centre):  # pragma: no cover - compiled
    """Area (mm^2) and signed volume (mm^3) of the triangles, relative to ``centre``;
    summed in face order, so the same mesh gives the same numbers on any machine."""
    area = 0.0
    volume = 0.0
    cx, cy, cz = centre[0], centre[1], centre[2]
    for t in range(faces.shape[0]):
        i, j, k = faces[t, 0], faces[t, 1], faces[t, 2]
        ax = np.float64(vertices[i, 0]) - cx
        ay = np.float64(vertices[i, 1]) - cy
        az = np.float64(vertices[i, 2]) - cz
        bx = np.float64(vertices[j, 0]) - cx
        by = np.float64(vertices[j, 1]) - cy
        bz = np.float64(vertices[j, 2]) - cz
        qx = np.float64(vertices[k, 0]) - cx
        qy = np.float64(vertices[k, 1]) - cy
        qz = np.float64(vertices[k, 2]) - cz
        ux, uy, uz = bx - ax, by - ay, bz - az
        vx, vy, vz = qx - ax, qy - ay, qz - az
        nx, ny, nz = uy * vz - uz * vy, uz * vx - ux * vz, ux * vy - uy * vx
        area += 0.5 * np.sqrt(nx * nx + ny * ny + nz * nz)
        volume += (ax * (by * qz - bz * qy) + ay * (bz * qx - bx * qz)
                   + az * (bx * qy - by * qx)) / 6.0
    return area, volume


@numba.njit(cache=True, nogil=True)
def _centre_and_bounds(vertices):  # pragma: no cover - compiled
    lo = vertices[0].astype(np.float64)
    hi = lo.copy()
    total = np.zeros(3)
    for v in range(vertices.shape[0]):
        for k in range(3):
            x = np.float64(vertices[v, k])
            total[k] += x
            lo[k] = min(lo[k], x)
            hi[k] = max(hi[k], x)
    return total / vertices.shape[0], lo, hi


def _measures(mesh: Mesh, centre: np.ndarray | None = None) -> tuple[float, float]:
    if len(mesh.faces) == 0:
        return 0.0, 0.0
    vertices = np.ascontiguousarray(mesh.vertices)
    if centre is None:
        centre = _centre_and_bounds(vertices)[0]
    # relative to the centroid, to keep the float64 sums well conditioned
    return _area_and_volume(vertices, np.ascontiguousarray(mesh.faces), centre)


def surface_area_mm2(mesh: Mesh) -> float:
    """Total triangle area, mm^2."""
    return float(_measures(mesh)[0])


def enclosed_volume_mm3(mesh: Mesh) -> float:
    """Signed enclosed volume (divergence theorem), mm^3; positive for outward normals."""
    return float(_measures(mesh)[1])


def taubin_smooth(mesh: Mesh, iterations: int = 10, lam: float = 0.5, mu: float = -0.53
                  ) -> Mesh:
    """Taubin lambda/mu smoothing: removes staircase noise without shrinking the model.

    Only positions move; the faces and so the closed topology are unchanged.
    """
    if iterations <= 0:
        return mesh
    f = mesh.faces.astype(np.int64)
    nv = len(mesh.vertices)
    rows = np.concatenate([f[:, 0], f[:, 1], f[:, 2], f[:, 1], f[:, 2], f[:, 0]])
    cols = np.concatenate([f[:, 1], f[:, 2], f[:, 0], f[:, 0], f[:, 1], f[:, 2]])
    adj = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(nv, nv))
    adj.data[:] = 1.0  # duplicates summed to 2 for interior edges; plain adjacency wanted
    degree = np.asarray(adj.sum(axis=1)).ravel()
    degree[degree == 0] = 1.0
    average = sparse.diags(1.0 / degree) @ adj
    v = mesh.vertices.astype(np.float64)
    for _ in range(iterations):
        v = v + lam * (average @ v - v)
        v = v + mu * (average @ v - v)
    return Mesh(v.astype(np.float32), mesh.faces)


@dataclass(frozen=True)
class MeshReport:
    """What a user needs to know about a model (LPS mm)."""

    triangles: int
    vertices: int
    surface_area_mm2: float
    volume_cm3: float
    bbox_min_mm: tuple[float, float, float]
    bbox_max_mm: tuple[float, float, float]
    size_mm: tuple[float, float, float]
    parts: int
    watertight: bool
    boundary_edges: int
    non_manifold_edges: int
    pinched_vertices: int

    def as_dict(self) -> dict:
        return asdict(self)


def report(mesh: Mesh) -> MeshReport:
    """Triangles, vertices, area (mm^2), enclosed volume (cm^3), bounding box (mm), parts."""
    topo, measures = _checked(mesh, measure=True)
    lo = hi = np.zeros(3)
    area = volume = 0.0
    if measures is not None:
        _, lo, hi, area, volume = measures
    return MeshReport(
        triangles=len(mesh.faces), vertices=len(mesh.vertices),
        surface_area_mm2=round(float(area), 3), volume_cm3=round(float(volume) / 1000.0, 4),
        bbox_min_mm=tuple(round(float(x), 3) for x in lo),
        bbox_max_mm=tuple(round(float(x), 3) for x in hi),
        size_mm=tuple(round(float(x), 3) for x in hi - lo), parts=topo.parts,
        watertight=topo.watertight, boundary_edges=topo.boundary_edges,
        non_manifold_edges=topo.non_manifold_edges, pinched_vertices=topo.pinched_vertices)


def combined_report(reports: list[MeshReport]) -> MeshReport:
    """The report of several closed meshes taken together (a multi-segment job's models):
    counts, area and volume summed, the bounding box around them all."""
    boxed = [r for r in reports if r.triangles] or reports  # an empty mesh has no box
    lo = tuple(min(r.bbox_min_mm[a] for r in boxed) for a in range(3))
    hi = tuple(max(r.bbox_max_mm[a] for r in boxed) for a in range(3))
    return MeshReport(
        triangles=sum(r.triangles for r in reports), vertices=sum(r.vertices for r in reports),
        surface_area_mm2=round(sum(r.surface_area_mm2 for r in reports), 3),
        volume_cm3=round(sum(r.volume_cm3 for r in reports), 4), bbox_min_mm=lo,
        bbox_max_mm=hi, size_mm=tuple(round(h - low, 3) for low, h in zip(lo, hi, strict=True)),
        parts=sum(r.parts for r in reports), watertight=all(r.watertight for r in reports),
        boundary_edges=sum(r.boundary_edges for r in reports),
        non_manifold_edges=sum(r.non_manifold_edges for r in reports),
        pinched_vertices=sum(r.pinched_vertices for r in reports))
