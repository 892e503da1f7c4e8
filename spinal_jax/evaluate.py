"""Re-evaluate a workdir's best (or latest) checkpoint: ``python -m spinal_jax.evaluate --workdir DIR
--split test [--which latest] [--ema]``. Prints accuracy (top-1, top-5), mean loss and the example count
as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
from flax import jax_utils

from spinal_jax import build, checkpoints, sources, steps
from spinal_jax import workdir as workdir_lib
from spinal_jax.errors import UserError, run_cli


def evaluate_workdir(
    workdir: str | Path,
    split: str = "test",
    which: str = "best",
    pipeline: Any = None,
    model: Any = None,
    ema: bool = False,
) -> dict[str, Any]:
    """Evaluate ``which`` ('best' | 'latest') checkpoint of ``workdir`` on every example of ``split``,
    with its EMA weights and statistics when ``ema`` (a UserError when the run kept none).

    The run's ``config.json`` rebuilds its data pipeline and model (unless given).
    """
    workdir = Path(workdir).resolve()
    config = workdir_lib.load_run_config(workdir)
    if pipeline is None:
        from spinal_jax.data import create_input_pipeline

        pipeline = create_input_pipeline(config.data)
    if split not in pipeline.num_examples or pipeline.num_examples[split] == 0:
        raise UserError(f"Split {split!r} is empty or unknown; splits: {sorted(pipeline.num_examples)}.")
    num_classes = config.model.num_classes or pipeline.num_classes
    if model is None:
        model = build.build_model(config, num_classes)
    template, _ = build.build_train_state(
        config, model, pipeline.image_shape, pipeline.steps_per_epoch, pipeline.global_batch_size
    )
    ckpt = checkpoints.Checkpoints(workdir, use_async=False, read_only=True)
    restored = ckpt.restore(template, which=which)
    if restored is None and which == "best":
        restored = ckpt.restore(template, which="latest")
    ckpt.close()
    if restored is None:
        raise UserError(f"No readable checkpoint in {workdir}/best or {workdir}/checkpoints: train first.")
    state, _, _, step = restored
    if ema:
        if not jax.tree.leaves(state.ema):
            raise UserError(
                f"--ema: checkpoint step {step} holds no EMA weights (ema.decay was 0); drop --ema."
            )
        state = steps.ema_view(state)
    p_state = jax_utils.replicate(state)
    result = sources.evaluate_pipeline(steps.pmap_eval_step(), p_state, pipeline, split)
    weights = "ema" if ema else "params"
    return {"workdir": str(workdir), "checkpoint_step": step, "weights": weights, "split": split, **result}


def main() -> None:
    from absl import app, flags, logging

    flags.DEFINE_string("workdir", None, "A training workdir.", required=True)
    flags.DEFINE_string("split", "test", "validation | test | train.")
    flags.DEFINE_enum("which", "best", ["best", "latest"], "Which checkpoint.")
    flags.DEFINE_bool("ema", False, "Evaluate the checkpoint's EMA weights (runs with config.ema.decay > 0).")

    def run(argv: list[str]) -> None:
        del argv
        logging.set_verbosity(logging.ERROR)  # Orbax logs every restore at INFO, read-only mode at WARNING
        f = flags.FLAGS
        result = run_cli(lambda: evaluate_workdir(f.workdir, f.split, f.which, ema=f.ema))
        print(json.dumps(result, indent=2))

    app.run(run)


if __name__ == "__main__":
    main()
