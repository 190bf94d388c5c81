"""Real images that ship inside packages on PyPI, in the dtypes their instruments wrote.

Nothing is downloaded: scikit-image, nibabel and pydicom carry these files in their
wheels. Each entry is ``(array, axes, what it is)``; arrays keep their stored dtype and
byte order (NIfTI's big-endian int16 included).
"""

from __future__ import annotations

import os
from functools import cache

import numpy as np


@cache
def catalogue() -> dict[str, tuple[np.ndarray, str, str]]:
    import nibabel
    import pydicom
    import skimage
    from pydicom.data import get_testdata_file

    skdata = os.path.join(os.path.dirname(skimage.__file__), "data")
    nibdata = os.path.join(os.path.dirname(nibabel.__file__), "tests", "data")

    def png(name):
        import imageio.v3 as iio

        return iio.imread(os.path.join(skdata, name))

    def dicom(name):
        return pydicom.dcmread(get_testdata_file(name)).pixel_array

    def nifti(name):
        return np.asanyarray(nibabel.load(os.path.join(nibdata, name)).dataobj)

    cell = png("cell.png")
    anatomy = nifti("anatomical.nii")  # (x, y, z), big-endian int16
    fmri = nifti("example4d.nii.gz")  # (x, y, z, t) int16
    return {
        "cell uint8": (cell, "yx", "a cell in a light microscope (scikit-image)"),
        "cell int8": ((cell.astype(np.int16) - 128).astype(np.int8), "yx",
                      "the same cell as an MRC mode-0 (int8) image, as cryo-ET writes"),
        "MR uint16": (dicom("examples_overlay.dcm"), "yx", "an MR slice (pydicom)"),
        "CT int16": (dicom("CT_small.dcm"), "yx", "a CT slice (pydicom)"),
        "brain MRI int16 >i2": (np.ascontiguousarray(anatomy.transpose(2, 1, 0)), "zyx",
                                "a brain MRI volume, big-endian (nibabel)"),
        "dose uint32": (dicom("rtdose.dcm"), "zyx", "a radiotherapy dose grid (pydicom)"),
        "fMRI time-lapse int16": (np.ascontiguousarray(fmri.transpose(3, 2, 1, 0)), "tzyx",
                                  "an fMRI time series (nibabel)"),
        "ultrasound RGB time-lapse uint8": (dicom("examples_ybr_color.dcm"), "tyxc",
                                            "a colour ultrasound clip (pydicom)"),
    }
