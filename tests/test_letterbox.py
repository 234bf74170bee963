"""Letterbox geometry and the write into the batch buffer."""

import numpy as np
import pytest

from edge_agent.inference.letterbox import PAD_VALUE, Letterbox, input_shape, resize_for, write_input


@pytest.mark.parametrize(
    ("src_hw", "dst_hw", "expected"),
    [
        # (new_h, new_w, top, left): odd padding puts the extra pixel at the bottom/right.
        ((720, 1280), (320, 320), (180, 320, 70, 0)),
        ((360, 640), (320, 320), (180, 320, 70, 0)),
        ((1080, 1920), (640, 640), (360, 640, 140, 0)),
        ((480, 640), (320, 320), (240, 320, 40, 0)),
        ((1000, 500), (320, 320), (320, 160, 0, 80)),
        ((719, 1280), (320, 320), (180, 320, 70, 0)),
        ((100, 100), (320, 320), (320, 320, 0, 0)),
        ((720, 1280), (192, 320), (180, 320, 6, 0)),
        ((333, 1000), (320, 320), (107, 320, 106, 0)),
    ],
)
def test_fit_matches_reference_arithmetic(src_hw, dst_hw, expected):
    """Scaled size and padding offsets follow Ultralytics' LetterBox rounding."""
    lb = Letterbox.fit(src_hw, dst_hw)
    assert (lb.new_h, lb.new_w, lb.top, lb.left) == expected


@pytest.mark.parametrize(
    ("src_hw", "target", "rect", "expected"),
    [
        ((720, 1280), (320, 320), False, (320, 320)),
        ((720, 1280), (320, 320), True, (192, 320)),
        ((1080, 1920), (640, 640), True, (384, 640)),
        ((480, 640), (320, 320), True, (256, 320)),
        ((1280, 720), (320, 320), True, (320, 192)),
        ((320, 320), (320, 320), True, (320, 320)),
    ],
)
def test_input_shape_rect_is_smallest_stride_multiple(src_hw, target, rect, expected):
    """Rectangular inputs shrink only the padded side, to a multiple of the stride."""
    assert input_shape(src_hw, target, rect=rect) == expected


def test_boxes_round_trip_to_source_pixels():
    """A box drawn in source pixels, moved into input space and back, lands where it started."""
    lb = Letterbox.fit((720, 1280), (320, 320))
    src = np.array([[100.0, 200.0, 400.0, 500.0], [0.0, 0.0, 1280.0, 720.0]], dtype=np.float32)
    scale = lb.new_w / lb.src_w
    in_input = src * scale + np.array([lb.left, lb.top, lb.left, lb.top], dtype=np.float32)
    np.testing.assert_allclose(lb.boxes_to_source(in_input.copy()), src, atol=1e-3)


def test_boxes_are_clipped_to_the_frame():
    """Boxes reaching into the padding are clipped to the source frame."""
    lb = Letterbox.fit((720, 1280), (320, 320))
    out = lb.boxes_to_source(np.array([[-10.0, 0.0, 330.0, 320.0]], dtype=np.float32))
    np.testing.assert_allclose(out, [[0.0, 0.0, 1280.0, 720.0]])


def test_write_input_layout_padding_and_normalisation():
    """Pixels land RGB-planar and /255 inside the frame area; padding is 114/255 around it."""
    img = np.zeros((720, 1280, 3), dtype=np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 20, 30  # B, G, R
    lb = Letterbox.fit(img.shape[:2], (320, 320))
    dst = np.full((3, 320, 320), -1.0, dtype=np.float32)
    write_input(resize_for(img, lb), lb, dst, bgr=True)
    inside = dst[:, lb.top : lb.top + lb.new_h, :]
    np.testing.assert_array_equal(inside[0], np.float32(30) / np.float32(255))
    np.testing.assert_array_equal(inside[2], np.float32(10) / np.float32(255))
    pad = np.float32(PAD_VALUE) / np.float32(255)
    assert (dst[:, : lb.top] == pad).all()
    assert (dst[:, lb.top + lb.new_h :] == pad).all()
    assert not (dst == -1.0).any(), "every element of the slot is written"


def test_write_input_rgb_source_is_not_flipped():
    """Frames already in RGB (from the decoder) keep their channel order."""
    img = np.zeros((180, 320, 3), dtype=np.uint8)
    img[..., 0] = 200
    lb = Letterbox.fit((180, 320), (192, 320))
    dst = np.empty((3, 192, 320), dtype=np.float32)
    write_input(img, lb, dst, bgr=False)
    assert dst[0, 100, 100] == np.float32(200) / np.float32(255)
    assert dst[2, 100, 100] == 0.0


def test_write_input_rejects_wrong_shapes():
    """A slot or frame of the wrong size is an error that names both shapes."""
    lb = Letterbox.fit((720, 1280), (320, 320))
    with pytest.raises(ValueError, match=r"\(3, 320, 320\)"):
        write_input(np.zeros((180, 320, 3), np.uint8), lb, np.empty((3, 192, 320), np.float32), bgr=True)
    with pytest.raises(ValueError, match=r"\(180, 320, 3\)"):
        write_input(np.zeros((100, 320, 3), np.uint8), lb, np.empty((3, 320, 320), np.float32), bgr=True)
