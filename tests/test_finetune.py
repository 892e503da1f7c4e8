"""Fine-tuning modes: exact optax updates on the parameters of a real backbone with a fresh head."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from spinal_jax.finetune import finetune_transform, keep_backbone_batch_stats, param_labels
from spinal_jax.models import create_model


def _normal(tree, seed):
    """Standard-normal float32 numpy arrays shaped like ``tree``'s leaves."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32), tree)


@pytest.fixture(scope="module")
def variables():
    """resnet18's variable tree with a spinal head; the values (random) do not matter to the optimisers
    (shapes from jax.eval_shape: initialising the real model costs ~10 s of per-op compilation)."""
    model = create_model("resnet18", 10, head="spinal", spinal_width=16)
    return _normal(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))), 0)


def _grads(params, seed=1):
    return _normal(params, seed)


def _split(tree, head="fc"):
    return {k: v for k, v in tree.items() if k == head}, {k: v for k, v in tree.items() if k != head}


def test_labels(variables):
    labels = param_labels(variables["params"], "fc")
    head, backbone = _split(labels)
    assert set(jax.tree.leaves(head)) == {"head"} and set(jax.tree.leaves(backbone)) == {"backbone"}
    n_head = len(jax.tree.leaves(variables["params"]["fc"]))
    assert jax.tree.leaves(labels).count("head") == n_head == 5  # input/hidden kernel, bias, readout W, b
    with pytest.raises(ValueError, match="No head subtree 'classifier'"):
        param_labels(variables["params"], "classifier")


@pytest.mark.parametrize("mode", ["full", "linear_probe", "separate_lr"])
def test_updates_per_mode(variables, mode):
    params = variables["params"]
    grads = _grads(params)
    head_lr, backbone_lr = 0.1, 0.01
    tx = finetune_transform(
        mode, optax.sgd(head_lr), optax.sgd(backbone_lr) if mode == "separate_lr" else None, head="fc"
    )
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    g_head, g_backbone = _split(grads)
    u_head, u_backbone = _split(updates)
    chex.assert_trees_all_close(u_head, jax.tree.map(lambda g: -head_lr * g, g_head), rtol=1e-6)
    want_lr = {"full": head_lr, "linear_probe": 0.0, "separate_lr": backbone_lr}[mode]
    chex.assert_trees_all_close(u_backbone, jax.tree.map(lambda g: -want_lr * g, g_backbone), rtol=1e-6)
    if mode == "linear_probe":
        assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(u_backbone))


def test_bad_modes():
    with pytest.raises(ValueError, match="Unknown fine-tuning mode 'frozen'"):
        finetune_transform("frozen", optax.sgd(0.1), head="fc")
    with pytest.raises(ValueError, match="'separate_lr' needs backbone_tx"):
        finetune_transform("separate_lr", optax.sgd(0.1), head="fc")
    with pytest.raises(ValueError, match="'linear_probe' freezes the backbone"):
        finetune_transform("linear_probe", optax.sgd(0.1), optax.sgd(0.1), head="fc")


def test_keep_backbone_batch_stats(variables):
    old = variables["batch_stats"]
    new = jax.tree.map(lambda x: x + 1.0, old)
    kept = keep_backbone_batch_stats(new, old, "fc")
    chex.assert_trees_all_equal(kept, old)  # resnet18's spinal head (no BN) has no stats
    vgg_like = {"classifier": {"bn_0": {"mean": jnp.ones(3)}}, "features_1": {"mean": jnp.zeros(3)}}
    moved = jax.tree.map(lambda x: x + 1.0, vgg_like)
    kept = keep_backbone_batch_stats(moved, vgg_like, "classifier")
    chex.assert_trees_all_equal(kept["classifier"], moved["classifier"])
    chex.assert_trees_all_equal(kept["features_1"], vgg_like["features_1"])


def test_training_imports_stay_free_of_torch_and_tensorflow():
    """What the trainer imports (models, pretrained, finetune, convert) loads neither torch nor TF."""
    import subprocess
    import sys

    code = (
        "import sys, spinal_jax.models, spinal_jax.pretrained, spinal_jax.finetune, spinal_jax.convert\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'tensorflow') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_convert_module_entry_point_reports_missing_file(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "spinal_jax.convert", str(tmp_path / "none.pth"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "error: No weights file at" in result.stderr
