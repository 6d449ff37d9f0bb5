"""Reading synthetic and real series the way the pipeline does: scan, group, choose, decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file

from gpu_worker import decode, dicom_headers
from gpu_worker import series as ser
from gpu_worker.sources import collect_sources


def load(*inputs, series=None, time_point=0):
    found = dicom_headers.scan(collect_sources(inputs))
    dicom_headers.require_images(found)
    stacks = ser.find_series(found)
    stack = ser.choose_series(stacks, series)
    return decode.decode_series(found, stack, time_point), stacks, found


def ramp(k=6, j=5, i=4):
    """Slice z holds the value 100 * z, so the decoded order is visible in the pixels."""
    return (np.arange(k)[:, None, None] * 100 + np.zeros((k, j, i))).astype(np.int16)


def copy_twice(tmp_path: Path, name: str) -> Path:
    for z in range(2):
        ds = pydicom.dcmread(get_testdata_file(name), force=True)
        ds.ImagePositionPatient = [0, 0, z]
        ds.save_as(tmp_path / f"s{z}", enforce_file_format=False)
    return tmp_path
