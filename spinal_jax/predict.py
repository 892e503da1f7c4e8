"""Classify image files with a trained run's checkpoint.

    python -m spinal_jax.predict --workdir runs/mnist_cnn digit.png photo.jpg bitmaps.npy
    python -m spinal_jax.predict --workdir runs/mnist_cnn --checkpoint 4220 --top 3 --json digit.png

Prints the top-5 (``--top K``) classes of each image with their probabilities (the softmax of the
logits), or one JSON document with ``--json``::

    {"workdir": str, "checkpoint": "best" | "latest" | "step", "checkpoint_step": int,
     "weights": "params" | "ema", "image_shape": [H, W, C],
     "predictions": [{"file": str, "row": int | null,
                      "top": [{"label": int, "class": str, "probability": float}, ...]}, ...]}

The run's ``config.json`` rebuilds the model and its data pipeline (the data set must be prepared where
``config.data`` points, as for ``python -m spinal_jax.evaluate``). Every image goes through the data
set's own evaluation transform (the pipeline's decoding, its eval resize or resize + centre crop to
``image_shape``, and its mean / std normalisation). Class names come from the prepared data set's
metadata; where they do not match the model's class count, classes are named by their index.

Inputs and channels:

- image files (anything PIL reads: PNG, JPEG, ...; any size) are converted as the pipeline converts the
  data set's images, with PIL's ``convert`` (as torchvision users do): ``'L'`` for 1-channel models
  (RGB to luma, ITU-R 601-2), ``'RGB'`` for 3-channel ones (grayscale replicated); an alpha channel is
  dropped, not composited;
- ``.npy`` arrays (recognised by their header, whatever the file name) of uint8 pixels: ``(784,)`` or
  ``(N, 784)`` (Quick Draw ``numpy_bitmap`` rows, 28x28 grayscale), ``(H, W)`` (one grayscale image),
  ``(H, W, C)`` (one image) or ``(N, H, W, C)``, with C = 1 or 3; they are encoded as PNG and decoded by
  the same pipeline code as image files. Other channel counts (an RGBA array, C = 4) and other dtypes
  are refused.

``--checkpoint``: ``best`` (default; the latest checkpoint when the run has no best yet), ``latest``,
or a step number held in ``checkpoints/`` or ``best/``. ``--ema`` uses the checkpoint's EMA weights and
statistics (refused when it holds none). Bad input (a workdir without a run, a missing step, an
unreadable file, a file that is no image, a refused array) is one line ``error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image, UnidentifiedImageError

from spinal_jax import build, checkpoints
from spinal_jax import workdir as workdir_lib
from spinal_jax.errors import UserError, run_cli

NPY_MAGIC = b"\x93NUMPY"
QUICKDRAW_SIDE = 28
BATCH = 64  # images per forward pass


# -- the run: config, pipeline, checkpoint ------------------------------------------------------------


def load_config(workdir: Path) -> ml_collections.ConfigDict:
    """The ``config.json`` of the run in ``workdir``; a UserError when there is no run there."""
    if not workdir.is_dir():
        raise UserError(
            f"--workdir {workdir} is not a directory: give the workdir of a spinal_jax training run."
        )
    return workdir_lib.load_run_config(workdir)


def parse_checkpoint(which: str) -> str | int:
    """``'best'``, ``'latest'`` or a step number (int)."""
    if which in ("best", "latest"):
        return which
    if which.isdigit():
        return int(which)
    raise UserError(f"--checkpoint={which!r}: give best, latest or a step number.")


def restore_step(ckpt: checkpoints.Checkpoints, template: Any, step: int) -> Any:
    """The train state of checkpoint ``step`` (from ``checkpoints/``, else ``best/``), verified first.

    Unlike :meth:`Checkpoints.restore` it never moves a damaged checkpoint aside: the step was asked for.
    """
    for manager in (ckpt.latest, ckpt.best):
        if step not in manager.all_steps():
            continue
        step_dir = Path(manager.directory) / str(step)
        problem = checkpoints.verify(step_dir)
        if problem is not None:
            raise UserError(f"Checkpoint {step_dir} is damaged: {problem}; choose another --checkpoint.")
        args = ocp.args.Composite(state=ocp.args.StandardRestore(checkpoints.state_to_host(template)))
        try:
            restored = manager.restore(step, args=args)
        except Exception as err:  # shapes or structure of another model
            raise UserError(
                f"Checkpoint {step_dir} cannot be restored onto the model of config.json ({str(err)[:200]})."
            ) from err
        return checkpoints.state_from_host(template, restored.state)
    steps = sorted(set(ckpt.latest.all_steps()) | set(ckpt.best.all_steps()))
    raise UserError(
        f"{ckpt.workdir} has no checkpoint of step {step}; its steps: {steps or 'none'} "
        "(or use --checkpoint best / latest)."
    )


def restore_state(workdir: Path, template: Any, which: str | int) -> tuple[Any, str, int]:
    """``(state, which checkpoint was used, its step)``; ``'best'`` falls back to the latest one."""
    ckpt = checkpoints.Checkpoints(workdir, use_async=False, read_only=True)
    try:
        if isinstance(which, int):
            return restore_step(ckpt, template, which), "step", which
        for kind in ("best", "latest") if which == "best" else ("latest",):
            restored = ckpt.restore(template, which=kind)
            if restored is not None:
                return restored[0], kind, restored[3]
    finally:
        ckpt.close()
    raise UserError(f"No readable checkpoint in {workdir}/best or {workdir}/checkpoints: train first.")


def select_variables(state: Any, ema: bool, step: int) -> tuple[dict[str, Any], str]:
    """``(variables, which)``: the trained ``params`` and ``batch_stats``, or with ``ema`` their moving
    average (``state.ema``; a UserError when the run kept none)."""
    if not ema:
        return {"params": state.params, "batch_stats": state.batch_stats}, "params"
    if not jax.tree.leaves(state.ema):
        raise UserError(
            f"--ema: checkpoint step {step} holds no EMA weights (the run was trained with ema.decay=0); "
            "drop --ema."
        )
    return dict(state.ema), "ema"


# -- reading files into the pipeline's evaluation transform ----------------------------------------------


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror or err}).") from err


def npy_images(path: Path, data: bytes) -> list[np.ndarray]:
    """The uint8 images of a ``.npy`` file: ``[(H, W) or (H, W, C)]``, C in 1 or 3 (module docstring)."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise UserError(f"{path}: not a readable .npy array ({err}).") from err
    if array.dtype != np.uint8:
        raise UserError(f"{path}: a {array.dtype} array; give uint8 pixels (0-255).")
    side = QUICKDRAW_SIDE
    if array.ndim in (1, 2) and array.shape[-1] == side * side:  # Quick Draw rows
        return list(array.reshape(-1, side, side))
    if array.ndim == 2:
        return [array]
    images = [array] if array.ndim == 3 else list(array) if array.ndim == 4 else None
    if images is None or array.shape[-1] not in (1, 3):
        raise UserError(
            f"{path}: a {array.shape} array; give (784,) or (N, 784) Quick Draw rows, an (H, W) grayscale "
            "image, or (H, W, C) / (N, H, W, C) images with C = 1 (grayscale) or 3 (RGB)."
        )
    return [image[..., 0] if image.shape[-1] == 1 else image for image in images]


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 ``(H, W)`` or ``(H, W, 3)`` as PNG (lossless), for the pipeline's decoder."""
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def decode(pipeline: Any, path: Path, encoded: bytes) -> np.ndarray:
    """The pipeline's decoding (channel conversion included) -> uint8 ``(H, W, C)``."""
    try:
        return pipeline.decode(encoded)
    except UnidentifiedImageError as err:
        raise UserError(f"{path}: not an image (PNG, JPEG, ... as PIL reads them) nor a .npy array.") from err
    except Image.DecompressionBombError as err:
        raise UserError(f"{path}: too large an image for PIL to decode safely ({err}).") from err
    except (OSError, ValueError, SyntaxError) as err:  # truncated or damaged image data
        raise UserError(f"{path}: a damaged image ({err}).") from err


def load_file(pipeline: Any, path: Path) -> tuple[list[np.ndarray], bool]:
    """The images of one file, each uint8 ``(H, W, C)`` in the model's channels, before resizing, and
    whether the file is a ``.npy`` array."""
    data = read_bytes(path)
    if data.startswith(NPY_MAGIC):
        return [decode(pipeline, path, png_bytes(image)) for image in npy_images(path, data)], True
    return [decode(pipeline, path, data)], False


def preprocess(pipeline: Any, images: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 ``(H, W, C)`` images -> the eval transform's float32 ``(N, *pipeline.image_shape)``."""
    resized = [pipeline.eval_image(image) for image in images]
    return pipeline.normalize(np.stack(resized))


def load_inputs(pipeline: Any, files: Sequence[str | Path]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Every image of ``files`` preprocessed ``(N, H, W, C)`` float32, and ``{'file', 'row'}`` for each
    (``row``: the index inside a ``.npy`` file, None for image files)."""
    images, sources = [], []
    for name in files:
        path = Path(name)
        loaded, is_array = load_file(pipeline, path)
        images.extend(loaded)
        sources.extend({"file": str(path), "row": i if is_array else None} for i in range(len(loaded)))
    if not images:
        raise UserError("No images: give image files (PNG, JPEG, ...) or .npy arrays holding at least one.")
    return preprocess(pipeline, images), sources


# -- the model ----------------------------------------------------------------------------------------


def probabilities(apply: Callable[..., jax.Array], variables: Any, images: np.ndarray) -> np.ndarray:
    """Softmax of the logits ``(N, classes)`` float32, in batches of ``BATCH`` (the last one padded)."""
    batch = min(BATCH, len(images))
    forward = jax.jit(lambda v, x: jax.nn.softmax(apply(v, x, train=False).astype(jnp.float32), axis=-1))
    out = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        padded = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        out.append(np.asarray(forward(variables, padded))[: len(chunk)])
    return np.concatenate(out)


def top_classes(probs: np.ndarray, k: int, class_names: Sequence[str]) -> list[list[dict[str, Any]]]:
    """Per row of ``probs (N, classes)``: the ``k`` most probable classes, most probable first (ties:
    the lower index first), as ``{'label', 'class', 'probability'}``."""
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    return [
        [{"label": int(c), "class": class_names[c], "probability": float(p[c])} for c in row]
        for p, row in zip(probs, order, strict=True)
    ]


def predict_files(
    workdir: str | Path,
    files: Sequence[str | Path],
    checkpoint: str = "best",
    top: int = 5,
    ema: bool = False,
) -> dict[str, Any]:
    """Classify ``files`` with ``workdir``'s checkpoint; returns the JSON document of the module docstring."""
    from spinal_jax.data import create_input_pipeline

    if top < 1:
        raise UserError(f"--top={top}: give at least 1.")
    which = parse_checkpoint(checkpoint)
    workdir = Path(workdir).resolve()
    config = load_config(workdir)
    pipeline = create_input_pipeline(config.data, local_device_count=1, process_index=0, process_count=1)
    images, sources = load_inputs(pipeline, files)
    num_classes = config.model.num_classes or pipeline.num_classes
    model = build.build_model(config, num_classes)
    template, _ = build.build_train_state(
        config, model, pipeline.image_shape, pipeline.steps_per_epoch, pipeline.global_batch_size
    )
    state, used, step = restore_state(workdir, template, which)
    variables, weights = select_variables(state, ema, step)
    probs = probabilities(model.apply, variables, images)
    names = pipeline.class_names if len(pipeline.class_names) == num_classes else range(num_classes)
    tops = top_classes(probs, min(top, num_classes), [str(n) for n in names])
    return {
        "workdir": str(workdir),
        "checkpoint": used,
        "checkpoint_step": step,
        "weights": weights,
        "image_shape": list(pipeline.image_shape),
        "predictions": [{**source, "top": t} for source, t in zip(sources, tops, strict=True)],
    }


def format_text(result: dict[str, Any]) -> str:
    """The human-readable form: a header, then per image its name and one ``class  probability`` line each."""
    header = f"checkpoint step {result['checkpoint_step']} ({result['checkpoint']}, {result['weights']})"
    lines = [f"{result['workdir']}: {header}"]
    for pred in result["predictions"]:
        lines.append(pred["file"] + ("" if pred["row"] is None else f"[{pred['row']}]"))
        width = max(len(t["class"]) for t in pred["top"])
        lines.extend(f"  {t['class']:<{width}}  {t['probability']:.4f}" for t in pred["top"])
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m spinal_jax.predict``; returns 0 (a UserError exits with status 2 via ``run_cli``)."""
    parser = argparse.ArgumentParser(prog="python -m spinal_jax.predict", description=__doc__.split("\n")[0])
    parser.add_argument(
        "files", nargs="+", metavar="FILE", help="image files (PNG, JPEG, ...) or .npy arrays"
    )
    parser.add_argument("--workdir", required=True, help="the workdir of a training run")
    parser.add_argument("--checkpoint", default="best", help="best (default), latest or a step number")
    parser.add_argument("--top", type=int, default=5, help="how many classes per image (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    args = parser.parse_args(argv)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax: every restore at INFO, read-only mode at WARNING
    result = predict_files(args.workdir, args.files, args.checkpoint, args.top, args.ema)
    print(json.dumps(result, indent=2) if args.json else format_text(result))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
