"""Point-cloud modality (ModelNet-40 shape classification): three learned orthogonal views as a 3-channel image.

- ``preprocess``: cleaning, unit-sphere normalization, FPS / random sampling, train augmentation
  (``PointCloudAugment``), test-time ``RotationVoting``, and ``import_open3d``, the one way open3d is imported
  (it needs the packaged libusb).
- ``adapter``: ``PointCloudAdapter``, B x P x 3 -> B x 3 x R x R (C' = 3), paper Eq. 4.
- ``datamodule``: ``PointCloudDataModule``, raw ``.off`` meshes or ``modelnet40_normal_resampled``.
- ``mini``: ``build_mini``, an offline open3d mesh set in the ``.off`` layout.

Importing this package loads the packaged libusb (``preload_libusb``), so a plain ``import open3d`` after it
works on a machine without the system library.
"""

from .adapter import PointCloudAdapter
from .datamodule import PointCloudDataModule
from .mini import build_mini
from .preprocess import PointCloudAugment, RotationVoting, import_open3d, normalize_unit_sphere, preload_libusb

__all__ = [
    "PointCloudAugment",
    "PointCloudAdapter",
    "PointCloudDataModule",
    "RotationVoting",
    "build_mini",
    "import_open3d",
    "normalize_unit_sphere",
    "preload_libusb",
]

preload_libusb()
