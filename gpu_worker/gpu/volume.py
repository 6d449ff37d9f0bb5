"""Volume stages on the GPU: smoothing and island removal, equal to :mod:`gpu_worker.volume`.

The HU rescale and crop run on the GPU through :mod:`gpu_worker.volume` itself (its functions
take the array module, ``cupy``). Smoothing uses ``gauss_axis`` from ``kernels/gauss.cu``,
which repeats scipy's float64 accumulation order, so smoothed values equal the CPU's bit for
bit. Islands are labelled with ``cupyx.scipy.ndimage.label``; its label numbers are not
scipy's, so parts are renumbered in raster order of their first voxel before the CPU's choice
rule is applied.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from gpu_worker import volume as vol
from gpu_worker.gpu import kernels


def smooth(volume: vol.Volume, sigma_mm: float) -> vol.Volume:
    """:func:`gpu_worker.volume.smooth` for a volume whose data is a CuPy array."""
    import cupy

    if sigma_mm <= 0:
        return volume
    data = volume.data.astype(cupy.float32)  # a copy: the passes ping-pong between two arrays
    spare = cupy.empty_like(data)
    n0, n1, n2 = (np.int32(n) for n in data.shape)
    gauss = kernels.kernel("gauss_axis")
    for axis, sigma in enumerate(vol.smoothing_sigmas(volume, sigma_mm)):
        weights = cupy.asarray(vol.gaussian_weights(sigma))
        gauss(kernels.blocks(data.size), (kernels.THREADS,),
              (data, spare, n0, n1, n2, np.int32(axis), weights, np.int32(len(weights) // 2)))
        data, spare = spare, data
    return replace(volume, data=data)


def keep_parts(data, level: float, keep: str, min_part_mm3: float, voxel_mm3: float,
               drop_in_plane_border: bool = False):
    """:func:`gpu_worker.volume.keep_parts` for CuPy data (the same parts are kept)."""
    import cupy
    from cupyx.scipy import ndimage as cundi

    mask = data >= level
    vol.require_inside(mask, data, level)
    if keep == "all" and min_part_mm3 <= 0 and not drop_in_plane_border:
        return data, vol.PartsReport(-1, -1, int(mask.sum()))
    labels, n = cundi.label(mask, structure=vol.CONNECTIVITY)
    n = int(n)
    sizes = cupy.bincount(labels.ravel(), minlength=n + 1)
    first = cupy.full(n + 1, np.iinfo(np.uint64).max, dtype=cupy.uint64)
    kernels.kernel("label_first")(kernels.blocks(labels.size), (kernels.THREADS,),
                                  (labels, np.int64(labels.size), first))
    # canonical[gpu label] = scipy's label (raster order of the first voxel).
    order = np.argsort(first[1:].get(), kind="stable") + 1
    canonical = np.zeros(n + 1, dtype=np.int64)
    canonical[order] = np.arange(1, n + 1)
    sizes_h = sizes.get()
    canonical_sizes = np.zeros(n + 1, dtype=np.int64)
    canonical_sizes[canonical[1:]] = sizes_h[1:]
    border = (canonical[vol.border_labels(labels, cupy).get()] if drop_in_plane_border
              else np.zeros(0, np.int64))
    kept, report = vol.choose_parts(canonical_sizes, border, keep, min_part_mm3, voxel_mm3)
    kept_gpu = cupy.asarray(kept[canonical])  # indexed by the GPU's labels
    drop = mask & ~kept_gpu[labels]
    return vol.drop_voxels(data, drop, level), report
