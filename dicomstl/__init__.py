"""dicomstl: DICOM series to watertight, printable STL meshes."""

__version__ = "0.1.0"
