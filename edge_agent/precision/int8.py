"""INT8 variant as explicit Q/DQ: what TensorRT 10 and 11 both build from, with no calibrator on the box.

Post-training static quantization with ONNX Runtime in QDQ format, in the form TensorRT accepts:
signed int8, symmetric activations and weights (zero point 0), per-channel weights, float biases
(TensorRT's DequantizeLayer takes no int32 input). Only convolutions are quantized: they are
where the time goes, and leaving Sigmoid/Mul (SiLU), Concat, Resize and the head's decode in
float keeps the accuracy that matters; TensorRT fuses DQ -> Conv -> SiLU -> Q into int8 kernels.
The DFL convolution (a fixed 0..15 projection, 16 input channels, 1 output) stays float: its
weights are bin indices, and int8 would round them.

Calibration frames are what the cameras see: the model's calibration images and frames decoded
from the sample videos, letterboxed exactly as the runtime does. The held-out scenes are never
used here: they are what the variant is judged on.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from edge_agent.inference.letterbox import Letterbox, resize_for, write_input

log = logging.getLogger(__name__)

CalibrationMethod = Literal["minmax", "percentile", "entropy"]
# The DFL projection: a 1x1 conv from reg_max (16) bins to one distance, with fixed weights.
_DFL_WEIGHT_SHAPE = (1, 16, 1, 1)


def video_frames(path: Path, every: int) -> list[np.ndarray]:
    """Every `every`-th frame of a video file as BGR uint8 (decoded with PyAV, as the cameras are)."""
    import av

    frames = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % every == 0:
                frames.append(frame.to_ndarray(format="bgr24"))
    return frames


def letterboxed(images: Sequence[np.ndarray], input_hw: tuple[int, int]) -> np.ndarray:
    """[N, 3, H, W] float32 inputs, preprocessed exactly as the runtime's Detector does it."""
    out = np.empty((len(images), 3, *input_hw), np.float32)
    for slot, img in zip(out, images, strict=True):
        lb = Letterbox.fit(img.shape[:2], input_hw)
        write_input(resize_for(img, lb), lb, slot, bgr=True)
    return out


def calibration_inputs(image_files: Sequence[Path], videos: Sequence[Path], input_hw: tuple[int, int],
                       *, every: int = 6) -> np.ndarray:
    """The calibration set: still images plus every `every`-th frame of each video."""
    images = []
    for path in image_files:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"cannot read calibration image {path}")
        images.append(img)
    for video in videos:
        images.extend(video_frames(video, every))
    if not images:
        raise ValueError("no calibration frames: give calibration images or sample videos")
    log.info("int8 calibration on %d frames (%d images, %d videos)", len(images), len(image_files),
             len(videos))
    return letterboxed(images, input_hw)


class _FrameReader:
    """ONNX Runtime's CalibrationDataReader protocol over preprocessed frames, one per batch."""

    def __init__(self, input_name: str, inputs: np.ndarray) -> None:
        self._input_name = input_name
        self._inputs = inputs
        self._iter: Iterator[np.ndarray] = iter(())
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        frame = next(self._iter, None)
        return None if frame is None else {self._input_name: frame[None]}

    def rewind(self) -> None:
        self._iter = iter(self._inputs)


def dfl_conv_names(model: Any) -> list[str]:
    """Names of the DFL projection convolutions (kept in float)."""
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    return [n.name for n in model.graph.node
            if n.op_type == "Conv" and len(n.input) > 1 and shapes.get(n.input[1]) == _DFL_WEIGHT_SHAPE]


def quantize_int8(src: Path, dst: Path, inputs: np.ndarray, *, method: CalibrationMethod = "percentile",
                  exclude: Sequence[str] = ()) -> None:
    """Write the Q/DQ INT8 variant of `src` to `dst`, calibrated on `inputs` [N, 3, H, W]."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod as OrtMethod
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    model = onnx.load(str(src))
    input_name = model.graph.input[0].name
    excluded = [*dfl_conv_names(model), *exclude]
    ort_method = {"minmax": OrtMethod.MinMax, "percentile": OrtMethod.Percentile,
                  "entropy": OrtMethod.Entropy}[method]
    extra: dict[str, Any] = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "QuantizeBias": False,  # TensorRT dequantizes no int32 tensors; biases stay float
        "CalibTensorRangeSymmetric": True,
    }
    # The calibrator prints progress to stdout, where `edge-agent model precision` writes its JSON.
    with tempfile.TemporaryDirectory(prefix="edge-agent-int8-") as tmp, contextlib.redirect_stdout(sys.stderr):
        # The calibrator writes an augmented copy of the model next to the one it is given.
        staged = Path(tmp) / "model.onnx"
        onnx.save(model, str(staged))
        try:
            quantize_static(
                str(staged), str(dst), _FrameReader(input_name, inputs),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=["Conv"],
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                calibrate_method=ort_method,
                extra_options=extra,
            )
        except ValueError as exc:
            if method == "minmax":
                raise
            # A constant activation (an untrained model has them) leaves a histogram no range.
            raise ValueError(f"{method} calibration failed ({exc}); try the minmax method") from exc
    log.info("int8 variant of %s written to %s (%s calibration, %d frames, float: %s)", src.name, dst,
             method, len(inputs), ", ".join(excluded) or "-")
