"""Bad input raises ValueError/TypeError naming the argument, before anything is traced."""

from __future__ import annotations

import numpy as np
import pytest

import sam_jax
from sam_jax import predictor

IMAGE = np.zeros((40, 60, 3), np.uint8)


@pytest.fixture
def no_tracing(monkeypatch):
    """Fails the test if any compiled core is reached."""

    def fail(*args, **kwargs):
        raise AssertionError("reached a compiled function before validating input")

    for name in ("encode_padded", "_decode_low_res", "_postprocess"):
        monkeypatch.setattr(predictor, name, fail)


@pytest.mark.parametrize(
    "image,exc,needle",
    [
        (np.zeros((40, 60), np.uint8), ValueError, "image"),
        (np.zeros((40, 60, 4), np.uint8), ValueError, "3 RGB channels"),
        (np.zeros((40, 60, 3), np.float32), TypeError, "uint8"),
        (np.zeros((0, 60, 3), np.uint8), ValueError, "empty"),
        ("picture.png", TypeError, "image"),
        (np.zeros((2, 40, 60, 3), np.uint8), ValueError, "(H, W, 3)"),  # predict takes one image
    ],
)
def test_bad_images(small, no_tracing, image, exc, needle):
    with pytest.raises(exc, match=needle.replace("(", r"\(").replace(")", r"\)")):
        sam_jax.predict(small.params, image, [[1, 2]])


def test_encode_rejects_bad_images(small, no_tracing):
    with pytest.raises(ValueError, match="image"):
        sam_jax.encode(small.params, np.zeros((1, 2, 40, 60, 3), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        sam_jax.encode(small.params, np.zeros((40, 60, 3), np.int64))


BAD_PROMPTS = [
    (dict(), ValueError, "no prompt"),
    (dict(points=[1, 2]), ValueError, "points must have shape"),
    (dict(points=np.zeros((3, 3))), ValueError, "points must have shape"),
    (dict(points=np.zeros((2, 3, 2, 2))), ValueError, "points must have shape"),
    (dict(points=np.zeros((0, 2))), ValueError, "N >= 1"),
    (dict(points=[[np.nan, 1]]), ValueError, "points must be finite"),
    (dict(points=[[np.inf, 1]]), ValueError, "points must be finite"),
    (dict(points=[["a", "b"]]), TypeError, "points must be an array of numbers"),
    (dict(points=[[1, 2]], labels=[1, 0]), ValueError, "labels must have shape"),
    (dict(points=[[1, 2]], labels=[4]), ValueError, "labels must be 1"),
    (dict(points=[[1, 2]], labels=[0.5]), ValueError, "labels must be 1"),
    (dict(labels=[1]), ValueError, "labels were given without points"),
    (dict(box=[1, 2, 3]), ValueError, "box must be 4 numbers"),
    (dict(box=np.zeros((2, 2, 4))), ValueError, "box must be 4 numbers"),
    (dict(box=[1, 2, np.nan, 4]), ValueError, "box must be finite"),
    (dict(mask_input=np.zeros((1, 32, 32))), ValueError, "mask_input must have shape"),
    (dict(mask_input=np.zeros((64, 64))), ValueError, "mask_input must have shape"),
    (dict(mask_input=np.full((1, 64, 64), np.nan)), ValueError, "mask_input must be finite"),
    (dict(points=np.zeros((2, 1, 2)), box=[1, 2, 3, 4]), ValueError, "all batched or all unbatched"),
    (dict(points=np.zeros((2, 1, 2)), box=np.zeros((3, 4))), ValueError, "share their batch size"),
    (dict(points=[[1, 2]], multimask_output="yes"), TypeError, "multimask_output"),
    (dict(points=[[1, 2]], return_logits=1), TypeError, "return_logits"),
]


@pytest.mark.parametrize("kwargs,exc,needle", BAD_PROMPTS, ids=[c[2] for c in BAD_PROMPTS])
def test_bad_prompts_in_predict(small, no_tracing, kwargs, exc, needle):
    with pytest.raises(exc, match=needle):
        sam_jax.predict(small.params, IMAGE, **kwargs)


def test_bad_prompts_in_decode(small):
    emb = sam_jax.encode(small.params, IMAGE)
    with pytest.raises(ValueError, match="points must have shape"):
        sam_jax.decode(small.params, emb, np.zeros((3, 3)))
    with pytest.raises(TypeError, match="embedding must be an ImageEmbedding"):
        sam_jax.decode(small.params, np.zeros((16, 16, 32)), [[1, 2]])


def test_params_must_be_sam_params(no_tracing):
    with pytest.raises(TypeError, match="params must be SamParams"):
        sam_jax.predict({"image_encoder": {}}, IMAGE, [[1, 2]])


def test_embedding_from_another_model(small):
    emb = sam_jax.encode(small.params, IMAGE)
    other = sam_jax.init(sam_jax.SamConfig.from_dict({**small.params.config.to_dict(), "prompt_embed_dim": 64}))
    with pytest.raises(ValueError, match="this model expects"):
        sam_jax.decode(other, emb, [[1, 2]])


def test_load_and_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a sam_jax checkpoint"):
        sam_jax.load(tmp_path)
    with pytest.raises(TypeError, match="path"):
        sam_jax.load(3)
    with pytest.raises(ValueError, match="unknown model type"):
        sam_jax.get_config("vit_q")
    with pytest.raises(ValueError, match="bad override"):
        sam_jax.get_config("vit_b/nonsense=3")
    with pytest.raises(ValueError, match="invalid image encoder: embed_dim must be divisible by num_heads"):
        sam_jax.get_config("vit_b", encoder_num_heads=7)
    with pytest.raises(ValueError, match="invalid SamConfig: image_size 1000 is not a multiple of patch_size 16"):
        sam_jax.get_config("vit_b/image_size=1000")
    assert sam_jax.get_config("vit_b/image_size=512").image_size == 512


@pytest.mark.parametrize(
    "sizes,values,needle",
    [
        (((0, 0), (0, 0)), 0.0, r"embedding.original_size must be \(height, width\), two integers >= 1, got \(0, 0\)"),
        (((40, 60), (0, 64)), 0.0, r"embedding.input_size must be \(height, width\), two integers >= 1"),
        (((40, 60), (43, 9999)), 0.0, r"embedding.input_size \(43, 9999\) exceeds this model's image size 256"),
        (((40, 60), (171, 256)), np.nan, "embedding.image_embedding holds NaN or infinite values"),
        (((40, 60), (171, 256)), np.inf, "embedding.image_embedding holds NaN or infinite values"),
    ],
)
def test_decode_refuses_impossible_embeddings(small, sizes, values, needle):
    emb = sam_jax.encode(small.params, IMAGE)
    assert (emb.original_size, emb.input_size) == ((40, 60), (171, 256))
    contents = emb.image_embedding.at[0, 0, 0].set(values) if values else emb.image_embedding
    with pytest.raises(ValueError, match=f"^{needle}"):
        sam_jax.decode(small.params, predictor.ImageEmbedding(contents, *sizes), [[1, 1]])
