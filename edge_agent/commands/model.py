"""`edge-agent model`: make precision variants of a model, and pre-build its TensorRT engines."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
from pathlib import Path
from typing import Any, cast

from edge_agent.commands.model_store import add_store_subcommands
from edge_agent.inference.runner import RunnerError
from edge_agent.inference.trt_engine_cache import BuildPolicy

log = logging.getLogger(__name__)

_BUILD_EPILOG = textwrap.dedent("""\
    engine cache:
      Engines live in CACHE_DIR (default: engines/ beside the model), one file per key:
        <name>.<precision>.<key digest>.engine   the serialized TensorRT engine
        <name>.<precision>.<key digest>.json     its metadata: every key field in clear, the
                                                 engine's sha256 and size, build time
        timing-trt<version>-<gpu>-sm<cc>.cache   TensorRT timing cache, shared per GPU model
      The key is: sha256 of the ONNX variant, precision, TensorRT version, GPU name, compute
      capability, batch profile (min 1, opt, max) and input size (min and max H x W).
      At load, the daemon uses the engine whose key matches exactly and whose bytes match its
      metadata. Anything else (another TensorRT, GPU, profile or model version, or a truncated
      file) is rebuilt, and the log says which field differed; with the runner's build policy
      `never` (and with --check here) it is refused with that reason instead. Run this command
      after installing a model, TensorRT or a GPU so that a box never spends minutes building
      on its first frame.

    precision:
      fp32 builds the model file itself; fp16 and int8 build the variants that
      `edge-agent model precision` wrote beside it (<name>.fp16.onnx, <name>.int8.onnx). The
      network is strongly typed: precision comes from the ONNX file (TensorRT 10 and 11 alike).
    """)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("model", help="model versions: signing, store, peers; precision variants, TensorRT engines",
                       description="Sign, store, pull and push model versions; make FP16/INT8 variants of a "
                                   "model and pre-build TensorRT engines.")
    model_sub = p.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)

    prec = model_sub.add_parser(
        "precision", help="make FP16 and INT8 (Q/DQ) ONNX variants, verified on the held-out set",
        description="Write <name>.fp16.onnx and <name>.int8.onnx with manifests beside MODEL. Each "
                    "variant is measured on the held-out synthetic set against the FP32 model and "
                    "written only if its mAP50 drops by at most --max-drop. Runs on CPU; needs `onnx`.")
    prec.add_argument("--model", type=Path, required=True, help="the FP32 ONNX file, with its manifest")
    prec.add_argument("--precision", nargs="+", choices=["fp16", "int8"], default=["fp16", "int8"])
    prec.add_argument("--max-drop", type=float, default=0.01,
                      help="largest accepted held-out mAP50 drop, as a fraction (default 0.01 = 1 point)")
    prec.add_argument("--heldout-images", type=int, default=None,
                      help="held-out images to measure on (default: as many as the manifest's measurement)")
    prec.add_argument("--int8-calibration", choices=["minmax", "percentile", "entropy"], default="percentile",
                      help="how activation ranges are chosen from the calibration frames (default percentile)")
    prec.add_argument("--videos", type=Path, nargs="*", default=None,
                      help="sample videos to take calibration frames from (default: demo/videos/*.mp4)")
    prec.add_argument("--video-every", type=int, default=6, help="use every Nth video frame (default 6)")
    prec.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: all cores)")
    prec.set_defaults(func=run_precision)

    build = model_sub.add_parser(
        "build", help="pre-build TensorRT engines into the engine cache",
        description="Build (or check) the TensorRT engine of MODEL for each precision and GPU, so "
                    "the daemon finds it in the cache at start.",
        epilog=_BUILD_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    build.add_argument("--model", type=Path, required=True, help="the FP32 ONNX file, with its manifest")
    build.add_argument("--precision", nargs="+", choices=["fp32", "fp16", "int8"], default=["fp32"])
    build.add_argument("--gpus", type=_int_list, default=[0], metavar="0,1",
                       help="CUDA device indices, one engine each (default 0)")
    build.add_argument("--max-batch", type=int, default=8, help="largest batch of the profile (default 8)")
    build.add_argument("--opt-batch", type=int, default=None,
                       help="batch size TensorRT tunes for (default: the max batch)")
    build.add_argument("--min-size", type=_hw, default=None, metavar="HxW",
                       help="also accept inputs down to this size (rect mode), e.g. 192x320")
    build.add_argument("--cache-dir", type=Path, default=None,
                       help="engine cache folder (default: engines/ beside the model)")
    build.add_argument("--workspace-mib", type=int, default=1024, help="builder workspace (default 1024)")
    mode = build.add_mutually_exclusive_group()
    mode.add_argument("--force", action="store_true", help="rebuild even if a matching engine is cached")
    mode.add_argument("--check", action="store_true",
                      help="build nothing: exit 1 unless every engine is cached, saying why not")
    build.set_defaults(func=run_build)
    add_store_subcommands(model_sub)  # keygen, sign, import, list, activate, rollback, pull, push


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected GPU indices like 0,1: {text!r}") from exc


def _hw(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected HxW like 192x320: {text!r}") from exc
    return h, w


def run_precision(args: argparse.Namespace) -> int:
    from edge_agent.precision.variants import Precision, VariantSettings, make_variants

    videos = args.videos if args.videos is not None else sorted(Path("demo/videos").glob("*.mp4"))
    settings = VariantSettings(
        heldout_images=args.heldout_images, max_drop=args.max_drop, int8_method=args.int8_calibration,
        videos=tuple(videos), video_every=args.video_every, threads=args.threads,
        command="edge-agent " + " ".join(sys.argv[1:]),
    )
    precisions = cast("list[Precision]", args.precision)
    reference, reports = make_variants(args.model, precisions, settings)
    print(json.dumps({"precision": "fp32", "path": str(args.model), "mAP50": round(reference.map50, 4),
                      "images": reference.images}))
    for report in reports:
        print(json.dumps(report.to_dict()))
    return 0 if all(r.accepted for r in reports) else 1


def run_build(args: argparse.Namespace) -> int:
    from edge_agent.inference.tensorrt_runner import TensorRTSettings, prepare_engine, tensorrt_missing
    from edge_agent.precision.variants import variant_path

    missing = tensorrt_missing()
    if missing:
        print(f"edge-agent model build: {missing}", file=sys.stderr)
        return 2
    policy: BuildPolicy = "never" if args.check else "always" if args.force else "if-missing"
    status = 0
    for precision in args.precision:
        onnx_path = args.model if precision == "fp32" else variant_path(args.model, precision)
        if not onnx_path.is_file():
            print(f"edge-agent model build: {onnx_path} not found; run `edge-agent model precision "
                  f"--model {args.model}` first", file=sys.stderr)
            status = 1
            continue
        for gpu in args.gpus:
            settings = TensorRTSettings(device=gpu, max_batch=args.max_batch, opt_batch=args.opt_batch,
                                        min_hw=args.min_size, cache_dir=args.cache_dir,
                                        workspace_mib=args.workspace_mib, build=policy)
            result: dict[str, Any] = {"model": str(onnx_path), "precision": precision, "gpu": gpu}
            try:
                engine, key, built = prepare_engine(onnx_path, settings)
            except (RunnerError, ValueError) as exc:
                print(json.dumps({**result, "ok": False, "error": str(exc)}))
                status = 1
                continue
            print(json.dumps({**result, "ok": True, "engine": str(engine), "built": built,
                              "gpu_name": key.gpu_name, "tensorrt": key.tensorrt_version}))
    return status
