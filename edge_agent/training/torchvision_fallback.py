"""Make `torchvision.ops.nms` work when torchvision's compiled ops cannot load.

On PyPI, torchvision wheels are CUDA builds; next to the CPU build of torch their C++ extension
fails to load, and `import torchvision` itself then dies registering a fake kernel for
`torchvision::nms`. Ultralytics' training validator needs `torchvision.ops.nms`, so on such a
machine we define that one operator in pure torch *before* torchvision is imported. Where the
compiled ops load (a matching CUDA install), this module changes nothing.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library: torch.library.Library | None = None  # kept alive: dropping it unregisters the ops


def nms_reference(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS with torchvision's contract: kept indices, highest score first."""
    order = torch.argsort(scores, descending=True)
    boxes = boxes[order].float()
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep: list[int] = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        xx1 = torch.maximum(x1[i], x1[i + 1 :])
        yy1 = torch.maximum(y1[i], y1[i + 1 :])
        xx2 = torch.minimum(x2[i], x2[i + 1 :])
        yy2 = torch.minimum(y2[i], y2[i + 1 :])
        inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
        iou = inter / (areas[i] + areas[i + 1 :] - inter).clamp(min=1e-9)
        suppressed[i + 1 :] |= iou > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)]


def _compiled_ops_load() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    libs = sorted(Path(spec.submodule_search_locations[0]).glob("_C*.so"))
    if not libs:
        return False
    try:
        torch.ops.load_library(str(libs[0]))
    except (OSError, RuntimeError):
        return False
    return True


def install() -> bool:
    """Ensure torchvision imports with a working NMS. Returns True when the fallback is in use."""
    global _library  # noqa: PLW0603 - one process-wide registration, made once
    if _library is not None:
        return True
    if _compiled_ops_load():
        return False
    _library = torch.library.Library("torchvision", "DEF")
    for name, schema in _SCHEMAS.items():
        _library.define(schema)
        _library.impl(name, nms_reference, "CPU")
    import torchvision.extension
    import torchvision.ops.boxes

    # torchvision refuses to call any op when its extension did not load; nms is ours now.
    torchvision.extension._has_ops = lambda: True  # noqa: SLF001
    log.info("torchvision's compiled ops are missing; using a pure-torch NMS for training")
    return True
