"""FP16 variant: weights and activations in half precision, float32 inputs and outputs.

Keeping the I/O in float32 means every runner and the preprocessing stay as they are; the casts
at both ends cost nothing next to the network. The converter is the one ONNX Runtime ships
(`onnxruntime.transformers.float16`, the maintained copy of onnxconverter-common's), so this
needs no package beyond `onnx`.

ONNX Runtime on a CPU runs most fp16 nodes through inserted casts, i.e. in float32 with fp16-rounded
weights; the accuracy check here therefore sees the weight rounding, and the GPU test module
checks the engine's real fp16 arithmetic against ONNX Runtime on the calibration images.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Ops kept in float32 beyond the converter's own defaults: none. The head's DFL softmax and the
# decode to pixels (values up to 320, 0.25 px steps in fp16) run in fp16 too; the demo model's
# held-out mAP50 is 0.9053 either way.
OP_BLOCK_LIST: tuple[str, ...] = ()


def convert_fp16(src: Path, dst: Path) -> None:
    """Write the FP16 variant of `src` to `dst`."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    converted = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, *OP_BLOCK_LIST],
    )
    _sort_topologically(converted.graph)
    onnx.checker.check_model(converted)
    onnx.save(converted, str(dst))
    log.info("fp16 variant of %s written to %s", src.name, dst)


def _sort_topologically(graph: Any) -> None:
    """Reorder nodes so each comes after the producers of its inputs, in place.

    The converter appends its input casts at the end of the node list; ONNX requires producers
    first, and parsers other than ONNX Runtime's rely on it. Stable: nodes already in order keep
    their relative order.
    """
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            names = ", ".join(n.name for n in pending[:5])
            raise ValueError(f"graph has a cycle or a missing input around: {names}")
        for node in ready:
            available.update(node.output)
        ordered.extend(ready)
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    copies = [type(n)() for n in ordered]
    for copy, node in zip(copies, ordered, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)
