"""Point-cloud modality (ModelNet-40 shape classification): three learned orthogonal views as a 3-channel image.

- ``preprocess``: cleaning, unit-sphere normalization, FPS / random sampling, train augmentation
  (``PointCloudAugment``) and test-time ``RotationVoting``.
- ``adapter``: ``ThreeViewProjector``, B x P x 3 -> B x 3 x R x R (C' = 3), paper Eq. 4.
- ``datamodule``: ``ModelNet40DataModule``, raw ``.off`` meshes or ``modelnet40_normal_resampled``.
- ``mini``: ``build_mini``, an offline open3d mesh set in the ``.off`` layout.
- ``open3d_loader``: ``import_open3d``, the one way open3d is imported (it needs the packaged libusb).

Importing this package loads the packaged libusb (``preload_libusb``), so a plain ``import open3d`` after it
works on a machine without the system library.
"""

from .adapter import ThreeViewProjector
from .datamodule import ModelNet40DataModule
from .mini import build_mini
from .open3d_loader import import_open3d, preload_libusb
from .preprocess import PointCloudAugment, RotationVoting, normalize_unit_sphere

__all__ = [
    "ModelNet40DataModule",
    "PointCloudAugment",
    "RotationVoting",
    "ThreeViewProjector",
    "build_mini",
    "import_open3d",
    "normalize_unit_sphere",
    "preload_libusb",
]

preload_libusb()
