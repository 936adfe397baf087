"""Tests of the point-cloud adapter (PointCloudAdapter, paper Eq. 4) and the point-cloud preprocessing."""

import math

import pytest
import torch

from modalities.pointcloud import PointCloudAugment, RotationVoting, PointCloudAdapter
from modalities.pointcloud.adapter import VIEWS, pixel_indices
from modalities.pointcloud.preprocess import (
    drop_non_finite,
    farthest_point_sample,
    is_degenerate,
    normalize_unit_sphere,
    random_rotation,
    rotation_about_axis,
    sample_points,
)


def cloud(batch: int = 2, points: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, points, 3, generator=torch.Generator().manual_seed(seed))


# --- projector -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("resolution, splat, reduce", [(32, 1, "max"), (24, 3, "sum"), (16, 2, "mean")])
def test_projector_output_shape_and_out_chans(resolution, splat, reduce):
    projector = PointCloudAdapter(resolution=resolution, feature_dim=8, splat_size=splat, reduce=reduce)
    out = projector(cloud())
    assert projector.out_chans == 3
    assert out.shape == (2, 3, resolution, resolution) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("reduce", ["max", "sum", "mean"])
def test_projector_ignores_point_order(reduce):
    projector = PointCloudAdapter(resolution=32, feature_dim=8, splat_size=2, reduce=reduce).eval()
    points = cloud(points=300)
    shuffled = points[:, torch.randperm(300, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        # max is exact; sum / mean differ only by float rounding of the additions
        torch.testing.assert_close(projector(shuffled), projector(points), rtol=0, atol=1e-5)


def test_projector_train_mode_batch_statistics_also_ignore_point_order():
    projector = PointCloudAdapter(resolution=16, feature_dim=4).train()
    points = cloud(points=128)
    torch.testing.assert_close(projector(points.flip(1)), projector(points), rtol=0, atol=1e-5)


def test_gradients_reach_every_parameter_and_the_points():
    projector = PointCloudAdapter(resolution=16, feature_dim=4, splat_size=2)
    points = cloud(points=64).requires_grad_(True)
    projector(points).square().mean().backward()
    for name, param in projector.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert points.grad is not None and points.grad.abs().sum() > 0  # through the point features


def test_single_point_lands_on_the_expected_pixel_in_each_view():
    resolution = 10
    projector = PointCloudAdapter(resolution=resolution, feature_dim=2, normalize=False)
    point = torch.tensor([[[0.5, -0.5, 0.25]]])  # x, y, z
    # pixel floor((c + 1) / 2 * R): x -> 7, y -> 2, z -> 6
    expected = {  # view: (row, col)
        0: (2, 7),  # XY: column from x, row from y
        1: (6, 2),  # YZ: column from y, row from z
        2: (6, 7),  # XZ: column from x, row from z
    }
    features = torch.tensor([[[3.0], [5.0]]])  # B x F x P
    planes = projector.project(point, features)  # B x 3 x F x R x R
    assert planes.shape == (1, 3, 2, resolution, resolution)
    for view, (row, col) in expected.items():
        hit = planes[0, view, 0].nonzero().tolist()
        assert hit == [[row, col]], f"view {VIEWS[view]}"
        assert planes[0, view, :, row, col].tolist() == [3.0, 5.0]
    assert planes.abs().sum() == 3 * (3.0 + 5.0)  # nothing anywhere else


def test_splat_covers_a_square_and_is_cut_at_the_border():
    projector = PointCloudAdapter(resolution=8, feature_dim=1, splat_size=3, normalize=False)
    corner = torch.tensor([[[-1.0, -1.0, -1.0]]])  # pixel (0, 0) in every view
    centre = torch.tensor([[[0.0, 0.0, 0.0]]])     # pixel (4, 4)
    ones = torch.ones(1, 1, 1)
    assert projector.project(corner, ones)[0, 0, 0].sum() == 4  # 3 x 3 around (0, 0), cut to 2 x 2
    hit = projector.project(centre, ones)[0, 0, 0]
    assert hit.sum() == 9 and hit[3:6, 3:6].sum() == 9


def test_max_keeps_the_largest_feature_and_sum_adds():
    points = torch.tensor([[[0.1, 0.1, 0.1], [0.11, 0.11, 0.9]]])  # same XY pixel, different depth
    features = torch.tensor([[[2.0, -1.0]]])
    for reduce, value in (("max", 2.0), ("sum", 1.0), ("mean", 0.5)):
        projector = PointCloudAdapter(resolution=8, feature_dim=1, reduce=reduce, normalize=False)
        xy = projector.project(points, features)[0, 0, 0]
        row, col = pixel_indices(points[0, 0], 8)[[1, 0]].tolist()
        assert xy[row, col] == value, reduce


def test_projector_normalizes_scale_and_position():
    projector = PointCloudAdapter(resolution=16, feature_dim=4).eval()
    points = cloud(points=100)
    with torch.no_grad():
        torch.testing.assert_close(projector(points * 7.0 + 3.0), projector(points), rtol=0, atol=1e-5)


def test_projector_rejects_bad_shapes_and_options():
    with pytest.raises(ValueError, match="B x P x 3"):
        PointCloudAdapter(resolution=8)(torch.zeros(2, 10, 4))
    with pytest.raises(ValueError, match="unknown reduce 'median'"):
        PointCloudAdapter(reduce="median")
    with pytest.raises(ValueError, match="refine_kernel must be 0 or odd"):
        PointCloudAdapter(refine_kernel=2)


def test_projector_feeds_the_backbone():
    from core import create_backbone

    projector = PointCloudAdapter(resolution=32, feature_dim=4)
    backbone = create_backbone("unireplknet_test", in_chans=projector.out_chans, num_classes=5)
    assert backbone(projector(cloud())).shape == (2, 5)


# --- preprocessing -------------------------------------------------------------------------------------------


def test_normalize_unit_sphere():
    points = cloud(points=50) * 4 + 2
    normalized = normalize_unit_sphere(points)
    torch.testing.assert_close(normalized.mean(dim=1), torch.zeros(2, 3), rtol=0, atol=1e-6)
    torch.testing.assert_close(normalized.norm(dim=-1).amax(dim=1), torch.ones(2))
    same = normalize_unit_sphere(torch.full((10, 3), 0.7))  # all points identical: the origin, not NaN
    assert torch.equal(same, torch.zeros(10, 3))


def test_cleaning_and_degenerate_clouds():
    points = torch.tensor([[0.0, 0, 0], [float("nan"), 0, 0], [1, 1, 1], [0, float("inf"), 0]])
    kept, dropped = drop_non_finite(points)
    assert dropped == 2 and kept.tolist() == [[0, 0, 0], [1, 1, 1]]
    assert is_degenerate(torch.full((5, 3), 2.0)) and is_degenerate(torch.empty(0, 3))
    assert not is_degenerate(kept)


def test_sampling_to_n_points():
    points = cloud(batch=1, points=500)[0]
    fps = farthest_point_sample(points, 64)
    assert fps.shape == (64, 3)
    assert torch.equal(fps, farthest_point_sample(points, 64))  # deterministic
    assert torch.equal(fps[0], points[0])  # starts at index 0
    # FPS spreads out: its smallest pairwise distance beats that of the first 64 points
    def min_gap(x):
        return torch.pdist(x).min()
    assert min_gap(fps) > min_gap(points[:64])
    random = sample_points(points, 64, "random", torch.Generator().manual_seed(0))
    assert random.shape == (64, 3) and len(torch.unique(random, dim=0)) == 64
    few = sample_points(points[:10], 64, "fps", torch.Generator().manual_seed(0))  # fewer than requested
    assert few.shape == (64, 3) and torch.equal(few[:10], points[:10])
    assert set(map(tuple, few.tolist())) == set(map(tuple, points[:10].tolist()))
    with pytest.raises(ValueError, match="unknown sampling 'grid'"):
        sample_points(points, 8, "grid")
    with pytest.raises(ValueError, match="empty cloud"):
        sample_points(points[:0], 8)


def test_rotations_are_rotations():
    generator = torch.Generator().manual_seed(0)
    for mode in ("so3", "up", "none"):
        rotation = random_rotation(mode, up_axis=2, generator=generator)
        torch.testing.assert_close(rotation @ rotation.T, torch.eye(3), rtol=0, atol=1e-5)
        assert torch.det(rotation) == pytest.approx(1.0, abs=1e-5)
    up = random_rotation("up", up_axis=1, generator=generator)
    assert up[1].tolist() == [0.0, 1.0, 0.0]  # the up axis stays put
    quarter = rotation_about_axis(math.pi / 2, 2)
    torch.testing.assert_close(torch.tensor([1.0, 0, 0]) @ quarter.T, torch.tensor([0.0, 1, 0]), rtol=0, atol=1e-6)


def test_augmentation_ranges():
    points = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    generator = torch.Generator().manual_seed(0)
    scale_only = PointCloudAugment(rotation="none", translate=None, jitter_sigma=0.0)
    for _ in range(50):
        factors = scale_only(points, generator)[0]
        assert ((factors >= 2 / 3) & (factors <= 3 / 2)).all()
    shift_only = PointCloudAugment(rotation="none", scale=None, jitter_sigma=0.0)
    for _ in range(50):
        shift = shift_only(points, generator) - points
        torch.testing.assert_close(shift[0], shift[1])
        assert (shift.abs() <= 0.2 + 1e-6).all()
    jitter_only = PointCloudAugment(rotation="none", scale=None, translate=None, jitter_sigma=0.01, jitter_clip=0.02)
    noise = jitter_only(torch.zeros(1000, 3), generator)
    assert noise.abs().max() <= 0.02 and 0.005 < noise.std() < 0.015
    rotate_only = PointCloudAugment(rotation="so3", scale=None, translate=None, jitter_sigma=0.0)
    rotated = rotate_only(points, generator)
    torch.testing.assert_close(rotated.norm(dim=1), points.norm(dim=1))
    with pytest.raises(ValueError, match="unknown rotation mode 'yaw'"):
        PointCloudAugment(rotation="yaw")


def test_rotation_voting():
    points = cloud(points=20)
    votes = RotationVoting(num_votes=4, mode="up", up_axis=2)(points)
    assert len(votes) == 4 and torch.equal(votes[0], points)
    torch.testing.assert_close(votes[1][..., 2], points[..., 2])  # about z: z unchanged
    torch.testing.assert_close(votes[2][..., :2], -points[..., :2], rtol=0, atol=1e-5)  # half a turn
    so3 = RotationVoting(num_votes=3, mode="so3")(points)
    assert len(so3) == 3 and torch.equal(so3[0], points)
    torch.testing.assert_close(so3[2].norm(dim=-1), points.norm(dim=-1))
    with pytest.raises(ValueError, match="num_votes must be at least 1"):
        RotationVoting(num_votes=0)
