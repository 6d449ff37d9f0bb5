"""Write small synthetic DICOM series with pydicom, for tests that need known geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

#: Patient data planted in every synthetic file; tests check it never leaks.
PATIENT_NAME = "DOE^JANE^SECRET"
PATIENT_ID = "PID-8675309"


def lps_grid(shape_kji, row_dir, col_dir, spacing_ij, origins) -> np.ndarray:
    """(K, J, I, 3) LPS mm position of every voxel centre."""
    _k, j, i = shape_kji
    row_dir = np.asarray(row_dir, float)
    col_dir = np.asarray(col_dir, float)
    origins = np.asarray(origins, float)
    jj, ii = np.mgrid[:j, :i]
    plane = ii[..., None] * spacing_ij[0] * row_dir + jj[..., None] * spacing_ij[1] * col_dir
    return origins[:, None, None, :] + plane[None]


def sphere_hu(grid: np.ndarray, centre, radius: float, ramp_mm: float) -> np.ndarray:
    """int16 HU: +1000 inside the sphere, -1000 outside, a linear ramp across its surface.

    The level 0 HU lies exactly on the sphere, so marching cubes recovers it closely.
    """
    d = np.linalg.norm(grid - np.asarray(centre, float), axis=-1)
    frac = np.clip(0.5 + (radius - d) / ramp_mm, 0.0, 1.0)
    return np.round(-1000 + 2000 * frac).astype(np.int16)


def write_series(folder: Path, hu: np.ndarray, row_dir=(1, 0, 0), col_dir=(0, 1, 0),
                 spacing_ij=(1.0, 1.0), origins=None, modality="CT", slope=1.0,
                 intercept=-1024.0, series_uid=None, description="SYNTHETIC",
                 shuffle_names: bool = True, seed: int = 0) -> list[Path]:
    """Write ``hu`` (K, J, I) as one file per slice; file names and InstanceNumbers are
    shuffled so that only ImagePositionPatient gives the right order."""
    folder.mkdir(parents=True, exist_ok=True)
    k = hu.shape[0]
    if origins is None:
        normal = np.cross(row_dir, col_dir)
        origins = [np.asarray(normal, float) * z for z in range(k)]
    stored = np.round((hu.astype(np.float64) - intercept) / slope).astype(np.int16)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    rng = np.random.default_rng(seed)
    order = rng.permutation(k) if shuffle_names else np.arange(k)
    paths = []
    for z in range(k):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage if modality == "CT" else MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.PatientName = PATIENT_NAME
        ds.PatientID = PATIENT_ID
        ds.Modality = modality
        ds.SeriesDescription = description
        ds.InstanceNumber = int(order[z]) + 1
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in origins[z]]
        ds.PixelSpacing = [f"{spacing_ij[1]:.6f}", f"{spacing_ij[0]:.6f}"]
        ds.SliceThickness = "1.0"
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        if modality == "CT":
            ds.RescaleSlope = f"{slope:g}"
            ds.RescaleIntercept = f"{intercept:g}"
        ds.PixelData = stored[z].tobytes()
        path = folder / f"IMG{int(order[z]):04d}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def pydicom_uid_of(folder: Path) -> str:
    """The SeriesInstanceUID of the first file in a folder written by write_series."""
    import pydicom

    return str(pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
               .SeriesInstanceUID)
