"""Letterbox on the GPU: upload uint8 frames, then scale, pad, flip BGR->RGB, normalise and go CHW there.

The host does one memcpy per frame into pinned memory and the PCIe transfer moves uint8 (a
quarter of the float32 bytes); the float work runs as a few device kernels instead of numpy
passes on a CPU that is also decoding every camera. The arithmetic matches the CPU path
(`edge_agent.inference.letterbox`): same geometry, same pad value, division by 255 in float32,
so frames the decoder already scaled give bit-identical inputs; frames that still need scaling go
through bilinear interpolation rounded to uint8 levels, within one level of OpenCV's fixed-point
INTER_LINEAR.

Written with torch so that the same code runs on a CPU tensor in the tests. Not thread-safe: one
inference thread owns an instance, and must synchronise its stream before the next call reuses
the pinned staging slots (the TensorRT runner does).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name

from edge_agent.inference.letterbox import PAD_VALUE, Letterbox

_PAD = PAD_VALUE / 255.0


class GpuLetterbox:
    """Writes a batch of frames into a [N, 3, H, W] tensor on `device`."""

    def __init__(self, max_batch: int, device: torch.device | str) -> None:
        self.max_batch = max_batch
        self.device = torch.device(device)
        self._pinned = self.device.type == "cuda"
        # Pinned uint8 staging per frame shape, one slot per batch position: cameras keep their
        # resolution, so this settles after the first batch from each camera.
        self._staging: dict[tuple[int, ...], torch.Tensor] = {}

    def _slot(self, shape: tuple[int, ...], index: int) -> torch.Tensor:
        buf = self._staging.get(shape)
        if buf is None:
            buf = torch.empty((self.max_batch, *shape), dtype=torch.uint8, pin_memory=self._pinned)
            self._staging[shape] = buf
        return buf[index]

    def upload(self, image: np.ndarray, index: int) -> torch.Tensor:
        """One HWC uint8 frame on the device (asynchronous on the current CUDA stream)."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 uint8 frame, got {image.dtype} {image.shape}")
        staged = self._slot(image.shape, index)
        np.copyto(staged.numpy(), image)
        return staged.to(self.device, non_blocking=True)

    def __call__(self, images: Sequence[np.ndarray], letterboxes: Sequence[Letterbox], out: torch.Tensor,
                 *, bgr: bool = True) -> torch.Tensor:
        """Fill `out[:len(images)]` (float32 or float16, on `device`) and return that view."""
        n = len(images)
        if n > self.max_batch or n != len(letterboxes):
            raise ValueError(f"{n} frames and {len(letterboxes)} letterboxes for a batch of at most "
                             f"{self.max_batch}")
        batch = out[:n]
        batch.fill_(_PAD)
        for i, (image, lb) in enumerate(zip(images, letterboxes, strict=True)):
            if batch.shape[1:] != (3, lb.dst_h, lb.dst_w):
                raise ValueError(f"batch is {tuple(batch.shape)}, letterbox needs (3, {lb.dst_h}, {lb.dst_w})")
            if image.shape[:2] != (lb.src_h, lb.src_w) and image.shape[:2] != (lb.new_h, lb.new_w):
                raise ValueError(f"frame is {image.shape[:2]}, letterbox is for {(lb.src_h, lb.src_w)} "
                                 f"or pre-scaled {(lb.new_h, lb.new_w)}")
            chw = self.upload(image, i).permute(2, 0, 1)
            if bgr:
                chw = chw.flip(0)
            scaled = chw.float()
            if image.shape[:2] != (lb.new_h, lb.new_w):
                scaled = F.interpolate(scaled[None], size=(lb.new_h, lb.new_w), mode="bilinear",
                                       align_corners=False, antialias=False)[0]
                scaled = scaled.round_().clamp_(0, 255)
            batch[i, :, lb.top : lb.top + lb.new_h, lb.left : lb.left + lb.new_w] = scaled / 255.0
        return batch
