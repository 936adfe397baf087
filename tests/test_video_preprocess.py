"""Video preprocessing: both tiling layouts against an index-by-index computation, sampling indices, the adapter,
and augmentation that is the same for every frame of a clip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modalities.video.adapter import VideoAdapter
from tests.conftest import compose_config
from modalities.video.preprocess import (
    EvalClipTransform,
    TrainClipTransform,
    as_video,
    eval_indices,
    grid_shape,
    needs_padding,
    tile_frames,
    train_indices,
)


def _frames(batch: int, num_frames: int, height: int, width: int, chans: int = 3) -> torch.Tensor:
    """Frames whose every value is distinct, so any misplaced pixel shows."""
    return torch.arange(batch * num_frames * chans * height * width, dtype=torch.float32).reshape(
        batch, num_frames, chans, height, width
    )


def _grid_by_index(frames: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Paper layout, pixel by pixel: output (Y, X) is pixel (Y mod h, X mod w) of frame (Y div h) * cols + X div w."""
    batch, _, chans, h, w = frames.shape
    out = torch.empty(batch, chans, rows * h, cols * w)
    for b in range(batch):
        for c in range(chans):
            for y_out in range(rows * h):
                for x_out in range(cols * w):
                    frame = (y_out // h) * cols + x_out // w
                    out[b, c, y_out, x_out] = frames[b, frame, c, y_out % h, x_out % w]
    return out


def _raw_reshape_by_index(frames: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Public-code layout, pixel by pixel: output (Y, X) is element Y * (cols w) + X of channel c's N_F x h x w block."""
    batch, _, chans, h, w = frames.shape
    width_out = cols * w
    out = torch.empty(batch, chans, rows * h, width_out)
    for b in range(batch):
        for c in range(chans):
            for y_out in range(rows * h):
                for x_out in range(width_out):
                    flat = y_out * width_out + x_out
                    frame, rest = divmod(flat, h * w)
                    y, x = divmod(rest, w)
                    out[b, c, y_out, x_out] = frames[b, frame, c, y, x]
    return out


@pytest.mark.parametrize("layout, num_frames, rows, cols", [
    *[("grid", *shape) for shape in [(4, None, None), (9, None, None), (6, 2, 3), (6, 3, 2), (8, 2, None),
                                      (1, None, None)]],
    *[("raw_reshape", *shape) for shape in [(4, None, None), (9, None, None), (6, 2, 3), (8, None, 4)]],
])
def test_layouts_match_index_computation(layout, num_frames, rows, cols):
    frames = _frames(2, num_frames, 3, 5)
    r, c = grid_shape(num_frames, rows, cols)
    out = tile_frames(frames, layout, rows, cols)
    assert out.shape == (2, 3, r * 3, c * 5)
    by_index = _grid_by_index if layout == "grid" else _raw_reshape_by_index
    assert torch.equal(out, by_index(frames, r, c))


def test_layouts_differ_and_keep_every_value():
    frames = _frames(1, 4, 2, 2)
    grid, raw = tile_frames(frames, "grid"), tile_frames(frames, "raw_reshape")
    assert not torch.equal(grid, raw)
    # both are permutations of the input within each channel
    for c in range(3):
        expected = frames[:, :, c].flatten().sort().values
        assert torch.equal(grid[:, c].flatten().sort().values, expected)
        assert torch.equal(raw[:, c].flatten().sort().values, expected)
    # grid: the top-left tile is frame 0 untouched; raw_reshape: frame 0's first two rows share the top row
    assert torch.equal(grid[0, :, :2, :2], frames[0, 0])
    assert torch.equal(raw[0, :, 0, :], frames[0, 0].flatten(1)[:, :4])


def test_paper_size_16_frames_of_224_give_896():
    frames = torch.zeros(1, 16, 3, 224, 224)
    for layout in ("grid", "raw_reshape"):
        out = tile_frames(frames, layout)
        assert out.shape == (1, 3, 896, 896)
        assert out.shape[-2] * out.shape[-1] // (224 * 224) == 16  # HW / hw = N_F (Eq. 5)


def test_tiling_errors_name_the_problem():
    with pytest.raises(ValueError, match="8 frames do not make a square mosaic; give rows and cols"):
        tile_frames(torch.zeros(1, 8, 3, 4, 4))
    with pytest.raises(ValueError, match=r"rows x cols must equal the number of frames: 3 x 3 != 8"):
        tile_frames(torch.zeros(1, 8, 3, 4, 4), rows=3, cols=3)
    with pytest.raises(ValueError, match="unknown layout 'spiral'; valid choices: grid, raw_reshape"):
        tile_frames(torch.zeros(1, 4, 3, 4, 4), layout="spiral")
    with pytest.raises(ValueError, match=r"B x N_F x C x h x w frames, got shape \(4, 3, 4, 4\)"):
        tile_frames(torch.zeros(4, 3, 4, 4))


# --- adapter -----------------------------------------------------------------------------------------------


def test_adapter_tiles_clips_and_folds_views_sample_major():
    adapter = VideoAdapter(layout="grid")
    assert adapter.out_chans == 3
    assert not list(adapter.parameters())
    clips = _frames(2, 4, 3, 3)
    assert torch.equal(adapter(clips), tile_frames(clips, "grid"))
    views = torch.stack([clips, clips + 1000.0, clips + 2000.0], dim=1)  # B x V x N_F x 3 x h x w, V = 3
    out = adapter(views)
    assert out.shape == (6, 3, 6, 6)
    assert torch.equal(out[1], tile_frames(clips + 1000.0, "grid")[0])  # sample 0, view 1
    assert torch.equal(out[3], tile_frames(clips, "grid")[1])  # sample 1, view 0


def test_adapter_layout_and_shape_checks():
    raw = VideoAdapter(layout="raw_reshape", rows=2, cols=4)
    clips = _frames(1, 8, 2, 2)
    assert torch.equal(raw(clips), tile_frames(clips, "raw_reshape", 2, 4))
    with pytest.raises(ValueError, match="unknown layout 'mosaic'"):
        VideoAdapter(layout="mosaic")
    with pytest.raises(ValueError, match=r"VideoAdapter expects clips of shape B x N_F x 3 x h x w .* got \(2, 3, 8, 8\)"):
        VideoAdapter()(torch.zeros(2, 3, 8, 8))


def test_frame_difference_tiles_each_frame_with_its_difference_to_the_previous_one():
    adapter = VideoAdapter(layout="grid", rows=2, cols=2, frame_difference=True)
    assert adapter.out_chans == 6 and VideoAdapter().out_chans == 3
    torch.manual_seed(0)
    clips = torch.randn(2, 4, 3, 5, 5)
    out = adapter(clips)
    assert out.shape == (2, 6, 10, 10)
    assert torch.equal(out[:, :3], tile_frames(clips, "grid", 2, 2))  # the RGB tiles are untouched
    difference = out[:, 3:]
    # tile (row, col) of frame t: t = 1 is at (0, 1), t = 3 at (1, 1); frame 0's tile repeats frame 1's difference
    torch.testing.assert_close(difference[:, :, :5, 5:], clips[:, 1] - clips[:, 0])
    torch.testing.assert_close(difference[:, :, 5:, 5:], clips[:, 3] - clips[:, 2])
    torch.testing.assert_close(difference[:, :, :5, :5], clips[:, 1] - clips[:, 0])
    # a static clip has zero difference everywhere, whatever it looks like
    static = clips[:, :1].expand(-1, 4, -1, -1, -1)
    assert torch.count_nonzero(adapter(static)[:, 3:]) == 0
    with pytest.raises(ValueError, match="frame_difference needs clips of at least 2 frames, got 1"):
        VideoAdapter(rows=1, cols=1, frame_difference=True)(torch.zeros(1, 1, 3, 4, 4))


def test_video_configs_declare_the_channels_their_adapter_makes():
    mini = compose_config(["modality=video"])
    assert mini.adapter.frame_difference and mini.data.in_chans == 6
    kinetics = compose_config(["experiment=kinetics400_unireplknet_s"])  # the paper's RGB tiles
    assert not kinetics.adapter.frame_difference and kinetics.data.in_chans == 3


# --- sampling ----------------------------------------------------------------------------------------------


def test_eval_indices_centred_window():
    # 100 frames, 16 x 4 window = 64 frames: starts 0 ... 36, centre 18
    assert eval_indices(100, 16, 4).tolist() == [list(range(18, 18 + 64, 4))]
    assert eval_indices(64, 16, 4).tolist() == [list(range(0, 64, 4))]


def test_eval_indices_multi_clip_evenly_spaced():
    starts = [row[0] for row in eval_indices(100, 16, 4, num_clips=5)]
    assert starts == [0, 9, 18, 27, 36]
    clips = eval_indices(100, 16, 4, num_clips=5)
    assert clips.shape == (5, 16)
    assert (np.diff(clips, axis=1) == 4).all()


def test_train_indices_cover_every_window_position_and_only_those():
    generator = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(400):
        indices = train_indices(20, 4, 2, generator=generator)  # window 8 -> starts 0 ... 12
        assert (np.diff(indices) == 2).all()
        starts.add(int(indices[0]))
    assert starts == set(range(13))


def test_short_video_pads_with_last_frame():
    assert needs_padding(10, 4, 4)  # indices 0, 4, 8, 12 -> 12 is past frame 9
    assert not needs_padding(13, 4, 4)
    assert eval_indices(10, 4, 4).tolist() == [[0, 4, 8, 9]]
    assert train_indices(3, 4, 2).tolist() == [0, 2, 2, 2]
    assert eval_indices(1, 4, 2, num_clips=3).tolist() == [[0, 0, 0, 0]] * 3
    with pytest.raises(ValueError, match="at least one frame"):
        eval_indices(0, 4, 2)


# --- transforms --------------------------------------------------------------------------------------------


def _video(num_frames: int = 6, height: int = 40, width: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 200, size=(num_frames, height, width, 3), dtype=np.uint8)


def test_train_augmentation_is_identical_for_every_frame():
    frame = _video(1)[0]
    video = as_video(np.stack([frame] * 8))
    transform = TrainClipTransform(32, scale=(0.2, 1.0), hflip=0.5, color_jitter=[0.4, 0.4, 0.4, 0.5],
                                   rand_augment={"num_ops": 4, "magnitude": 7}, re_prob=1.0)
    outputs = []
    for seed in range(6):
        torch.manual_seed(seed)
        clip = transform(video)
        assert clip.shape == (8, 3, 32, 32) and clip.dtype == torch.float32 and type(clip) is torch.Tensor
        for t in range(1, 8):
            assert torch.equal(clip[t], clip[0]), f"frame {t} was augmented differently from frame 0 (seed {seed})"
        outputs.append(clip[0])
    assert any(not torch.allclose(outputs[0], other) for other in outputs[1:])  # but it is random per clip


def test_train_crop_and_flip_are_shared_by_distinct_frames():
    # frame t = base + 10 t: a crop / flip / resize shared by all frames keeps frame t - frame 0 uniform per channel
    base = _video(1, seed=1)[0].astype(np.int16)
    video = as_video(np.stack([base + 10 * t for t in range(5)]).astype(np.uint8))
    transform = TrainClipTransform(24, scale=(0.1, 0.5), hflip=0.5, rand_augment=None, re_prob=0.0)
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    for seed in range(5):
        torch.manual_seed(seed)
        clip = transform(video)
        for t in range(1, 5):
            assert torch.allclose(clip[t] - clip[0], (10 * t / 255) / std.expand(3, 24, 24), atol=1e-4)


def test_train_transform_normalizes_with_imagenet_statistics():
    video = as_video(np.full((2, 8, 8, 3), 255, dtype=np.uint8))
    clip = TrainClipTransform(8, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, re_prob=0.0)(video)
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(clip[0, :, 0, 0], expected, atol=1e-5)


def test_eval_three_crops_span_the_long_side():
    # pixel value = column index, so a crop's first column tells where it was taken
    columns = np.broadcast_to(np.arange(48, dtype=np.uint8)[None, None, :, None], (2, 16, 48, 3)).copy()
    crops = EvalClipTransform(16, num_crops=3, mean=(0, 0, 0), std=(1, 1, 1))(as_video(columns))
    assert crops.shape == (3, 2, 3, 16, 16)
    assert [round(float(c[0, 0, 0, 0]) * 255) for c in crops] == [0, 16, 32]
    centre = EvalClipTransform(16, num_crops=1, mean=(0, 0, 0), std=(1, 1, 1))(as_video(columns))
    assert centre.shape == (1, 2, 3, 16, 16) and torch.equal(centre[0], crops[1])
    with pytest.raises(ValueError, match="num_crops must be 1 .* or 3"):
        EvalClipTransform(16, num_crops=2)


def test_eval_resizes_the_short_side():
    crops = EvalClipTransform(16, num_crops=1)(as_video(_video(3, 32, 64)))
    assert crops.shape == (1, 3, 3, 16, 16)


def test_the_mini_recipes_train_augmentation_keeps_the_motion_label():
    """The recipe's train transform (crop, colour jitter, no flip) keeps a rightward / downward motion rightward /
    downward: the augmentation never turns one motion class into another."""
    from tests.conftest import compose_config

    augment = dict(compose_config(["modality=video"]).data.augment)
    assert augment["hflip"] == 0.0 and not augment.get("rand_augment")
    transform = TrainClipTransform(32, **augment)
    for axis in (1, 0):  # x (moving right), then y (moving down)
        frames = np.full((8, 32, 32, 3), 40, dtype=np.uint8)
        for t in range(8):
            start = 4 + 3 * t
            if axis:
                frames[t, 12:20, start:start + 6] = 230
            else:
                frames[t, start:start + 6, 12:20] = 230
        for seed in range(5):
            torch.manual_seed(seed)
            clip = transform(as_video(frames)).mean(1)  # T x h x w, normalized
            profile = clip.mean(2 - axis)  # T x w (axis x) or T x h (axis y)
            weights = (profile - profile.min(1, keepdim=True).values).clamp(min=0)
            position = (weights * torch.arange(32.0)).sum(1) / weights.sum(1)
            assert torch.all(position[1:] > position[:-1]), f"seed {seed}: the motion changed direction"
