"""The fused attention paths of the image encoder (attention_kernels) and float32 precision."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import rel_err

import sam_jax
from sam_jax.modeling import attention_kernels as ak
from sam_jax.modeling import image_encoder as ie
from sam_jax.modeling.sam import abstract_params, image_encoder_forward, mask_decoder_forward
from sam_jax.testing import SMALL, TINY


@pytest.fixture(scope="module")
def tiny_random():
    return sam_jax.init(TINY)


def nchw_to_nhwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(0, 2, 3, 1).numpy()


@pytest.fixture
def count_fused(monkeypatch):
    """Counts the encoder's calls of `fused_attention` (by path) while a test runs."""
    calls: list[str] = []
    real = ak.fused_attention

    def spy(q, k, v, rel_terms, path):
        calls.append(path)
        return real(q, k, v, rel_terms, path)

    monkeypatch.setattr(ak, "fused_attention", spy)
    return calls


@pytest.mark.parametrize("path", ["fused-xla", "fused-xla-bias"])
def test_fused_encoder_matches_reference(small, count_fused, path):
    """Every block (2 windowed with padding, 1 global) through the fused form equals the reference."""
    x = torch.randn(2, 3, SMALL.image_size, SMALL.image_size, generator=torch.Generator().manual_seed(0))
    ref = nchw_to_nhwc(small.ref.image_encoder(x))
    ours = jax.jit(image_encoder_forward)(small.params.with_attention(path), jnp.asarray(nchw_to_nhwc(x)))
    assert count_fused == [path] * SMALL.image_encoder.depth  # traced once: one call per block
    assert rel_err(ours, ref) < 1e-5


def _random_block(dim: int, heads: int, grid: int, use_rel_pos: bool, seed: int) -> dict:
    module = ie.Attention(heads, True, use_rel_pos, (grid, grid))
    params = module.init(jax.random.key(seed), jnp.zeros((1, grid, grid, dim)))
    # init gives zero relative-position tables; draw them like tests/reference.py does.
    keys = iter(jax.random.split(jax.random.key(seed + 1), 8))

    def draw(path: tuple, p: jax.Array) -> jax.Array:
        return 0.5 * jax.random.normal(next(keys), p.shape) if "rel_pos" in jax.tree_util.keystr(path) else p

    params = jax.tree_util.tree_map_with_path(draw, params)
    if use_rel_pos:
        assert params["params"]["rel_pos_h"].shape == (2 * grid - 1, dim // heads)
    return params


@pytest.mark.parametrize(
    ("dim", "heads", "grid", "use_rel_pos", "path"),
    [(256, 4, 64, True, "fused-xla"), (64, 4, 10, False, "fused-xla"), (64, 4, 10, True, "fused-xla-bias")],
    ids=["vit_b-global-block", "no-rel-pos", "bias-form"],
)
def test_fused_block_matches_blocked(dim, heads, grid, use_rel_pos, path):
    """A vit_b-shaped global block (heads of 64, 64 x 64 tokens, 127-long tables; 4 heads of
    vit_b's 12, as the fused XLA form is slow on a CPU) at batch 1: the fused form equals
    today's path, which runs it in blocks of query rows."""
    params = _random_block(dim, heads, grid, use_rel_pos, seed=grid)
    x = jax.random.normal(jax.random.key(3), (1, grid, grid, dim))
    if grid == 64:
        assert ie.query_rows_per_chunk(heads, grid, grid) < grid  # blocks of rows, as in vit_b

    def apply(attention: str) -> jax.Array:
        return jax.jit(ie.Attention(heads, True, use_rel_pos, (grid, grid), attention=attention).apply)(params, x)

    blocked, fused = apply("blocked"), apply(path)
    assert rel_err(fused, blocked) < 1e-5


def test_attention_path_choice_is_static_configuration(tiny_random):
    # This machine has no GPU: float32 and bfloat16 both take today's path.
    assert ak.cuda_compute_capability() is None
    for dtype in (jnp.float32, jnp.bfloat16):
        assert ak.attention_path(dtype, 64, (64, 64), True) == "blocked"
    assert ak.attention_path(jnp.float32, 64, (64, 64), True, "fused-xla") == "fused-xla"
    with pytest.raises(ValueError, match="attention must be one of auto, blocked"):
        tiny_random.with_attention("flash")
    # A choice is part of the params' static structure: each is its own compiled program,
    # and asking for one leaves a program compiled for another as it was.
    forward = jax.jit(image_encoder_forward)
    images = jnp.zeros((1, TINY.image_size, TINY.image_size, 3))
    forward(tiny_random, images)
    compiled = forward._cache_size()  # jit's cache is shared by every wrapper of the function
    forward(tiny_random.with_attention("fused-xla"), images)
    assert forward._cache_size() == compiled + 1
    forward(tiny_random, images)
    assert forward._cache_size() == compiled + 1
    assert jax.tree.structure(tiny_random) != jax.tree.structure(tiny_random.with_attention("fused-xla"))


def test_fused_head_dims():
    # cuDNN: a multiple of 8, at most 256 on Hopper (vit_b / vit_l heads of 64, vit_h of 80).
    assert ak.fused_head_dim(64, (64, 64), True) == 192
    assert ak.fused_head_dim(80, (64, 64), True) == 208
    assert ak.fused_head_dim(64, (14, 14), True) == 96  # 92 padded
    assert ak.fused_head_dim(80, (14, 14), False) == 80


def _dot_precisions(hlo: str) -> list[str]:
    """The operand precisions of every dot_general and convolution in StableHLO text."""
    found = re.findall(r"stablehlo\.dot_general .*?precision = \[(\w+), (\w+)\]", hlo)
    found += re.findall(
        r"stablehlo\.convolution.*?precision_config = \[#stablehlo<precision (\w+)>, #stablehlo<precision (\w+)>\]", hlo
    )
    convolutions = hlo.count("stablehlo.convolution")
    dots = hlo.count("stablehlo.dot_general")
    assert len(found) == dots + convolutions, "a dot or convolution without a precision in the text"
    return [p for pair in found for p in pair]


@pytest.mark.parametrize("path", ["auto", "fused-xla"], ids=["default-path", "fused-xla"])
def test_float32_forward_asks_for_highest_precision(path):
    """XLA would run float32 matmuls in TF32 on NVIDIA GPUs: float32 mode must ask for
    HIGHEST on every dot and convolution; bfloat16 mode keeps the default."""
    params = abstract_params(TINY)
    images = jax.ShapeDtypeStruct((1, TINY.image_size, TINY.image_size, 3), jnp.float32)
    params = params.with_attention(path)
    f32 = jax.jit(image_encoder_forward).lower(params, images).as_text()
    bf16 = jax.jit(image_encoder_forward).lower(params.with_compute_dtype("bfloat16"), images).as_text()
    f32_precisions, bf16_precisions = _dot_precisions(f32), _dot_precisions(bf16)
    assert len(f32_precisions) > 2 * TINY.image_encoder.depth and set(f32_precisions) == {"HIGHEST"}
    assert len(bf16_precisions) == len(f32_precisions) and set(bf16_precisions) == {"DEFAULT"}

    e, c = TINY.embedding_size, TINY.prompt_embed_dim
    emb = jax.ShapeDtypeStruct((1, e, e, c), jnp.float32)
    tokens = jax.ShapeDtypeStruct((1, 3, c), jnp.float32)
    pe = jax.ShapeDtypeStruct((e, e, c), jnp.float32)
    decoder = jax.jit(mask_decoder_forward, static_argnums=5).lower(params, emb, pe, tokens, emb, True).as_text()
    assert set(_dot_precisions(decoder)) == {"HIGHEST"}
