"""VGG-5 on MNIST, the reference protocol of ``mnist_vgg5.py``, compiled per epoch for an accelerator:
``configs/mnist_vgg5_fast.py[:TOKENS]``, TOKENS comma-separated from a data set of ``mnist_vgg5.py``, a head
('spinal', the default, or 'default'), 'bf16' (bfloat16 compute; float32 otherwise) and 'paper' (the paper's
split: all 60,000 train images, the plateau rule monitoring test accuracy, no validation split).

Reproduces SpinalVGG-5's MNIST recipe: Adam lr 0.005, batch 100, 200 epochs, reference augmentation
(perspective + rotation 10, run on the device), evaluation every epoch, random restart on plateau lr <-
0.005 * U**3. The data are device-resident (``data.device_resident``): each epoch is one compiled
``lax.scan`` over the splits held on the accelerator (docs/TRAINING.md, "Device-resident data"). Epoch
records carry ``epoch_seconds``, ``train_seconds_total`` and ``compile_seconds`` (time to accuracy:
``python -m spinal_jax.bench --config configs/mnist_vgg5_fast.py --modes tta``). Checkpoints every 10
epochs (and the last; a better epoch in between is written to best/ with the next save). On a CPU use
``mnist_vgg5.py``: there a scanned epoch is many times slower than the per-step path.
Measured (``:bf16,paper``, one NVIDIA H200, jax 0.11.2, 2026-11-26): max test accuracy
99.73 % over the 200 epochs; >= 99.5 % after 8 epochs = 7.7 s of training; 200 epochs in 196.8 s of
training (61,000 img/s including augmentation and evaluation), 245.5 s wall with 25 s of compilation.
Command: ``python -m spinal_jax.bench --config configs/mnist_vgg5_fast.py:bf16,paper --modes tta
--target 0.995`` (then in the form ``--tta CONFIG``; ``benchmarks/results/2026-11-26-h200/``).
"""

from ml_collections import ConfigDict

from spinal_jax.config import (
    DTYPE_TOKENS,
    HEADS,
    MNIST_DATASETS,
    base_config,
    choice,
    data_config,
    flag,
    parse_config_arg,
)

ARG_TOKENS = {
    "dataset": choice(MNIST_DATASETS, "mnist"),
    "head": choice(HEADS, "spinal"),
    "dtype": DTYPE_TOKENS,
    "paper": flag("paper"),
}


def get_config(arg: str | None = None) -> ConfigDict:
    args = parse_config_arg(arg, **ARG_TOKENS)
    dataset, head, dtype, paper = args["dataset"], args["head"], args["dtype"], args["paper"]
    c = base_config()
    c.model.name = "vgg5"
    c.model.head = head
    c.data = data_config(
        dataset,
        batch_size=100,
        augment_on="device",
        device_resident=True,
        validation_fraction=0.0 if paper else 0.1,
    )
    c.dtype = dtype
    c.num_epochs = 200
    c.optim.name = "adam"
    c.optim.learning_rate = 0.005
    c.plateau.enabled = True
    c.plateau.power = 3.0
    c.plateau.monitor = "test" if paper else "validation"
    c.checkpoint_every_epochs = 10
    c.log_every_steps = 100
    return c
