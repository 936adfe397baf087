"""Point-cloud adapter of UniRepLKNet (paper Eq. 4): B x P x 3 points -> B x 3 x R x R three-view projections.

"We use a series of conv layers to generate three-view projections ... H = W = 224, C' = 3." Read here as:

1. normalize every cloud to the unit sphere;
2. learn a feature per point with shared 1-D convs (kernel 1, i.e. a per-point MLP);
3. scatter the point features onto three orthogonal view planes, XY, YZ and XZ, at the pixels given by the
   quantized in-plane coordinates (an s x s splat per point, max or sum per pixel), all views and all points at
   once with ``scatter_reduce`` (no loop over points, no compiled extension);
4. refine every view with 2-D convs, each view with its own weights: a depthwise k x k conv (spreads the
   splats; depthwise keeps it cheap at R = 224), then a 1 x 1 conv down to one channel per view.

Max (and, up to float rounding, sum) per pixel ignores the order of the points, so the output does too. The
feature carries the out-of-plane coordinate (depth), which a plain occupancy image would lose.
"""

from __future__ import annotations

from types import MappingProxyType

import torch
from torch import nn

from modalities.pointcloud.preprocess import normalize_unit_sphere

# (column axis, row axis) of each view plane; output channel k is view k
VIEWS = ((0, 1), (1, 2), (0, 2))  # XY, YZ, XZ
REDUCTIONS = MappingProxyType({"max": "amax", "sum": "sum", "mean": "mean"})  # option -> scatter_reduce name


def pixel_indices(points: torch.Tensor, resolution: int) -> torch.Tensor:
    """Quantize coordinates in [-1, 1] to pixel indices in [0, resolution - 1] (clamped): ``(..., 3)`` long."""
    return ((points + 1.0) * (0.5 * resolution)).floor().clamp(0, resolution - 1).long()


class PointCloudAdapter(nn.Module):
    """B x P x 3 points -> B x 3 x R x R maps, one channel per orthogonal view (XY, YZ, XZ).

    Args:
        resolution: R, the side of every view (224 in the paper).
        feature_dim: width F of the learned per-point features (and of each view before the refinement).
        splat_size: every point writes an s x s pixel square centred on its pixel (s = 1: a single pixel).
        reduce: how the points falling on one pixel combine: ``max``, ``sum`` or ``mean``.
        hidden_dim: width of the first per-point conv (default: feature_dim).
        refine_kernel: kernel of the 2-D conv that refines every view (0 skips it; the 1x1 output conv stays).
        normalize: map every cloud to the unit sphere first; False expects coordinates already in [-1, 1]
            (points outside are clamped to the border pixels).
    """

    def __init__(
        self,
        resolution: int = 224,
        feature_dim: int = 32,
        splat_size: int = 1,
        reduce: str = "max",
        hidden_dim: int | None = None,
        refine_kernel: int = 3,
        normalize: bool = True,
    ):
        super().__init__()
        if reduce not in REDUCTIONS:
            raise ValueError(f"unknown reduce {reduce!r}; valid choices: {', '.join(REDUCTIONS)}")
        if resolution < 1 or feature_dim < 1 or splat_size < 1:
            raise ValueError(
                "resolution, feature_dim and splat_size must be positive, "
                f"got {resolution}, {feature_dim}, {splat_size}"
            )
        if refine_kernel < 0 or (refine_kernel and refine_kernel % 2 == 0):
            raise ValueError(f"refine_kernel must be 0 or odd, got {refine_kernel}")
        self.resolution = resolution
        self.feature_dim = feature_dim
        self.splat_size = splat_size
        self.reduce = reduce
        self.normalize = normalize
        self.out_chans = len(VIEWS)
        hidden = hidden_dim or feature_dim
        views = len(VIEWS)

        # shared 1-D convs over the points: B x 3 x P -> B x F x P
        self.point_encoder = nn.Sequential(
            nn.Conv1d(3, hidden, 1, bias=False), nn.BatchNorm1d(hidden), nn.GELU(),
            nn.Conv1d(hidden, feature_dim, 1, bias=False), nn.BatchNorm1d(feature_dim), nn.GELU(),
        )
        # per-view 2-D convs (groups = views): B x 3F x R x R -> B x 3 x R x R
        refine: list[nn.Module] = []
        if refine_kernel:
            refine += [
                # depthwise: a spatial filter per view and feature (cheap at R = 224)
                nn.Conv2d(views * feature_dim, views * feature_dim, refine_kernel, padding=refine_kernel // 2,
                          groups=views * feature_dim, bias=False),
                nn.BatchNorm2d(views * feature_dim),
                nn.GELU(),
            ]
        refine.append(nn.Conv2d(views * feature_dim, views, 1, groups=views))
        self.view_refiner = nn.Sequential(*refine)

        # pixel offsets of the s x s splat, e.g. s = 3 -> -1, 0, 1; s = 2 -> 0, 1
        offsets = torch.arange(splat_size) - (splat_size - 1) // 2
        grid = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), dim=-1).reshape(-1, 2)  # S x (row, col)
        self.register_buffer("splat_offsets", grid, persistent=False)
        self.register_buffer("view_axes", torch.tensor(VIEWS), persistent=False)  # 3 x (col axis, row axis)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """B x P x 3 -> B x 3 x R x R."""
        if points.dim() != 3 or points.shape[-1] != 3:
            raise ValueError(f"expected a B x P x 3 batch of points, got shape {tuple(points.shape)}")
        points = points.float()
        if self.normalize:
            points = normalize_unit_sphere(points)                 # B x P x 3, inside the unit sphere
        features = self.point_encoder(points.transpose(1, 2))      # B x F x P
        views = self.project(points, features)                     # B x 3 x F x R x R
        views = views.flatten(1, 2)                                # B x 3F x R x R (view-major channels)
        return self.view_refiner(views)                            # B x 3 x R x R

    def project(self, points: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Scatter per-point features onto the three view planes.

        Args:
            points: B x P x 3 coordinates in [-1, 1].
            features: B x F x P, one feature vector per point.
        Returns:
            B x 3 x F x R x R; pixels no point reaches are 0. View k has its column from coordinate
            ``VIEWS[k][0]`` and its row from ``VIEWS[k][1]``, pixel ``floor((c + 1) / 2 * R)``.
        """
        batch, channels, num_points = features.shape
        views, res = len(VIEWS), self.resolution
        cells = pixel_indices(points, res)                                        # B x P x 3
        cols = cells[..., self.view_axes[:, 0]]                                   # B x P x 3 (one per view)
        rows = cells[..., self.view_axes[:, 1]]                                   # B x P x 3
        # every point covers S = s x s pixels around its own
        rows = rows.unsqueeze(-1) + self.splat_offsets[:, 0]                      # B x P x 3 x S
        cols = cols.unsqueeze(-1) + self.splat_offsets[:, 1]                      # B x P x 3 x S
        inside = (rows >= 0) & (rows < res) & (cols >= 0) & (cols < res)
        # splat pixels that fall off the plane go to one spare slot (index R*R), dropped below
        flat = torch.where(inside, rows * res + cols, res * res)                  # B x P x 3 x S
        flat = flat.permute(0, 2, 1, 3).reshape(batch, views, 1, -1)              # B x 3 x 1 x (P*S)
        index = flat.expand(-1, -1, channels, -1)                                 # B x 3 x F x (P*S)
        values = features.unsqueeze(1).unsqueeze(-1)                              # B x 1 x F x P x 1
        values = values.expand(-1, views, -1, -1, self.splat_offsets.shape[0])    # B x 3 x F x P x S
        values = values.reshape(batch, views, channels, -1)                       # B x 3 x F x (P*S)
        planes = features.new_zeros(batch, views, channels, res * res + 1)
        planes = planes.scatter_reduce(3, index, values, reduce=REDUCTIONS[self.reduce], include_self=False)
        return planes[..., : res * res].unflatten(-1, (res, res))                 # B x 3 x F x R x R

    def extra_repr(self) -> str:
        return (
            f"resolution={self.resolution}, feature_dim={self.feature_dim}, splat_size={self.splat_size}, "
            f"reduce={self.reduce!r}, normalize={self.normalize}, out_chans={self.out_chans}"
        )
