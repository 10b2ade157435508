"""`sam_jax.nnx`: NNX modules over the same arrays as `SamParams`, computing the same bits as
the functional core, differentiable through `nnx.split`/`merge`, trainable with
`nnx.Optimizer` (the example of docs/training.md, run as written)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import sam_jax
import sam_jax.nnx
from sam_jax.checkpoint import flatten_weights
from sam_jax.config import TinyViTConfig
from sam_jax.modeling import sam as core
from sam_jax.testing import TINY

ROOT = Path(__file__).resolve().parents[1]
# Every component class in two models: ViT with SAM's decoder; TinyViT with SAM-HQ's.
TINY_VIT_HQ = dataclasses.replace(
    TINY,
    image_encoder=TinyViTConfig(
        embed_dims=(8, 16, 16, 16), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 2), window_sizes=(4,) * 4
    ),
    mask_decoder="hq",
)


def prompts(config: sam_jax.SamConfig) -> dict[str, jax.Array]:
    """Two images' inputs and one prompt each: points (with a background one), a box, a mask."""
    s, m = config.image_size, config.low_res_mask_size
    keys = jax.random.split(jax.random.key(3), 2)
    return {
        "images": jax.random.normal(keys[0], (2, s, s, 3)),
        "points": jnp.array([[[10.0, 20.0], [30.0, 41.0]], [[5.0, 6.0], [50.0, 7.0]]]),
        "labels": jnp.array([[1, 0], [1, 1]]),
        "boxes": jnp.array([[4.0, 5.0, 40.0, 33.0], [0.0, 0.0, 63.0, 63.0]]),
        "masks": jax.random.normal(keys[1], (2, m, m, 1)),
    }


KINDS = {
    "vit": TINY,
    "vit-hq": dataclasses.replace(TINY, mask_decoder="hq"),
    "tiny_vit": dataclasses.replace(TINY_VIT_HQ, mask_decoder="sam"),
    "tiny_vit-hq": TINY_VIT_HQ,
}


def nnx_forward(params: sam_jax.SamParams, x: dict[str, jax.Array], multimask: bool) -> tuple:
    """Each NNX module's outputs on `x`, and the whole model's."""
    m = sam_jax.nnx.to_nnx(params)
    emb, early = m.image_encoder(x["images"])
    sparse, dense, pe = m.prompt_encoder(x["points"], x["labels"], x["boxes"], x["masks"])
    hq_only = params.config.hq and not multimask
    decoded = m.mask_decoder(emb, pe, sparse, dense, multimask, early, hq_token_only=hq_only)
    return emb, early, sparse, dense, pe, decoded, m(x["images"], x["points"], x["labels"], multimask_output=multimask)


def core_forward(params: sam_jax.SamParams, x: dict[str, jax.Array], multimask: bool) -> tuple:
    """The same through the functional core."""
    emb, early = core.encoder_outputs(params, x["images"])
    sparse, dense, pe = core.prompt_encoder_forward(params, x["points"], x["labels"], x["boxes"], x["masks"])
    hq_only = params.config.hq and not multimask
    decoded = core.mask_decoder_forward(params, emb, pe, sparse, dense, multimask, early, hq_only)
    emb2, early2 = core.encoder_outputs(params, x["images"])  # the whole model encodes again
    p_sparse, p_dense, p_pe = core.prompt_encoder_forward(params, x["points"], x["labels"])
    whole = core.mask_decoder_forward(params, emb2, p_pe, p_sparse, p_dense, multimask, early2)
    return emb, early, sparse, dense, pe, decoded, whole


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_nnx_modules_lower_to_the_functional_core_s_program(kind):
    """The same program, operation for operation, precision included (hence the same bits
    on any backend): the NNX modules run the core's linen modules on the same arrays."""
    config = KINDS[kind]
    params = core.abstract_params(config)
    x = jax.eval_shape(lambda: prompts(config))
    # Multimask off also selects SAM-HQ's HQ mask alone: once is enough.
    for multimask in (True, False) if kind == "tiny_vit-hq" else (True,):

        def program(forward: Callable[..., tuple], multimask: bool = multimask) -> str:
            return jax.jit(lambda p, x: forward(p, x, multimask)).lower(params, x).as_text()

        assert program(nnx_forward) == program(core_forward), (kind, multimask)


def test_nnx_model_holds_the_same_arrays_and_its_gradients_are_the_core_s():
    params = core.init_params(TINY, 1)
    model = sam_jax.nnx.to_nnx(params)

    # The same arrays, at the same paths, both ways: nothing was copied.
    state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    for name in core.COMPONENTS:
        for path, leaf in flatten_weights(params.weights[name]):
            node = state[name]
            for key in path.split("/"):
                node = node[key]
            assert node is leaf, f"{name}/{path}"
    back = sam_jax.nnx.from_nnx(model)
    assert jax.tree.structure(back) == jax.tree.structure(params)  # config and static fields too
    assert all(a is b for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True))

    # Gradients through nnx.split / nnx.merge against jax.grad on SamParams.
    x = prompts(TINY)
    graphdef, state = nnx.split(model)

    def loss(logits: jax.Array, iou: jax.Array) -> jax.Array:
        return jnp.mean(jnp.tanh(logits) ** 2) + jnp.mean(iou**2)

    def nnx_loss(state: nnx.State) -> jax.Array:
        return loss(*nnx.merge(graphdef, state)(x["images"], x["points"], x["labels"], boxes=x["boxes"]))

    def core_loss(params: sam_jax.SamParams) -> jax.Array:
        emb, _ = core.encoder_outputs(params, x["images"])
        sparse, dense, pe = core.prompt_encoder_forward(params, x["points"], x["labels"], x["boxes"])
        return loss(*core.mask_decoder_forward(params, emb, pe, sparse, dense, True))

    grad = jax.jit(lambda s, p: (jax.value_and_grad(nnx_loss)(s), jax.value_and_grad(core_loss)(p)))
    (nnx_value, nnx_grads), (core_value, core_grads) = grad(state, params)
    assert float(nnx_value) == float(core_value)
    nnx_grads = nnx.to_pure_dict(nnx_grads)
    for name in core.COMPONENTS:
        grads = dict(flatten_weights(core_grads.weights[name]))
        assert any(np.abs(np.asarray(g)).max() > 0 for g in grads.values()), name
        for path, g in flatten_weights(nnx_grads[name]):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(grads[path]), err_msg=f"{name}/{path}")

    # The functional API takes the NNX model as it takes SamParams (`check_params`).
    image = np.random.default_rng(0).integers(0, 256, (40, 52, 3), np.uint8)
    ours, theirs = (sam_jax.encode(p, image, prepare=False) for p in (model, params))
    np.testing.assert_array_equal(np.asarray(ours.image_embedding), np.asarray(theirs.image_embedding))


def test_the_nnx_fine_tuning_example_of_the_docs_lowers_the_loss():
    text = (ROOT / "docs/training.md").read_text()
    code = text.split("## In a Flax NNX model", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(code, "docs/training.md", "exec"), scope)
    losses, trained = scope["losses"], scope["params"]
    assert losses[-1] < 0.9 * losses[0], losses
    start = sam_jax.load("tiny-shapes")
    changed = {
        name: [
            not np.array_equal(a, b)
            for a, b in zip(jax.tree.leaves(trained.weights[name]), jax.tree.leaves(start.weights[name]), strict=True)
        ]
        for name in core.COMPONENTS
    }
    assert not any(changed["image_encoder"])  # frozen
    assert any(changed["mask_decoder"]) and any(changed["prompt_encoder"])
