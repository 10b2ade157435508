"""The mask decoder written as an ONNX graph from our weights (opset 17), with the reference
`SamOnnxModel`'s interface and options (`sam_jax.export.interface`).

Why a graph of our own rather than a JAX-to-ONNX converter: the reference interface sizes
its `masks` output from the *values* of `orig_im_size`, which no traced JAX function can
express (JAX shapes are static or symbolic in input shapes), and the converter for JAX
that is maintained today (jax2onnx 0.17) wrote graphs onnxruntime refused for this
decoder (an `If` branch for the mask flag, mixed float/double types); it also pins an
older orbax-checkpoint than the package uses. The graph is the reference decoder's
arithmetic, op for op (plain per-head attention; the speed paths of
`sam_jax.modeling.cross_attention` are for XLA), and the tests hold it to our decoder and to
the reference's own ONNX export. A SAM-HQ model's graph is segment_anything_hq's
`SamOnnxModel` (its inputs, `HQExportOptions`): SAM's graph plus the HQ token's mask.

Requires the `onnx` package (the `export` extra).
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from sam_jax.export.interface import (
    HQ_INPUT_NAMES,
    INPUT_NAMES,
    MASK_THRESHOLD,
    SINGLE_MASK_POINTS,
    SINGLE_MASK_REWEIGHT,
    STABILITY_SCORE_OFFSET,
    AnyExportOptions,
    HQExportOptions,
    input_names,
    resolve_options,
)
from sam_jax.modeling.prompt_encoder import LAYER_NORM_2D_EPS
from sam_jax.modeling.sam import SamParams
from sam_jax.modeling.transformer import DECODER_LN_EPS

OPSET = 17


class GraphBuilder:
    """Nodes and constants of an ONNX graph, each op's output named automatically."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def _name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def const(self, value: Any, dtype: Any = np.float32) -> str:
        """A constant tensor (an initializer)."""
        from onnx import numpy_helper

        name = self._name("const")
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def ints(self, *values: int) -> str:
        return self.const(np.asarray(values, np.int64), np.int64)

    def op(self, op_type: str, *inputs: str, outputs: int = 1, name: str | None = None, **attrs: Any) -> Any:
        """Adds a node; returns its output name (a list of names when `outputs` > 1)."""
        from onnx import helper

        outs = [name] if name is not None else [self._name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs[0] if outputs == 1 else outs

    # ------------------------------------------------------------------ layers

    def linear(self, x: str, p: dict[str, Any]) -> str:
        return self.op("Add", self.op("MatMul", x, self.const(p["kernel"])), self.const(p["bias"]))

    def layer_norm(self, x: str, p: dict[str, Any], eps: float) -> str:
        """LayerNorm over the last axis (torch `nn.LayerNorm`, exported as the reference's)."""
        return self.op(
            "LayerNormalization", x, self.const(p["scale"]), self.const(p["bias"]), axis=-1, epsilon=float(eps)
        )

    def layer_norm_2d(self, x: str, p: dict[str, Any], eps: float = LAYER_NORM_2D_EPS) -> str:
        """The reference `LayerNorm2d` on NCHW, as it computes it: over the channel axis."""
        u = self.op("ReduceMean", x, axes=[1], keepdims=1)
        d = self.op("Sub", x, u)
        s = self.op("ReduceMean", self.op("Mul", d, d), axes=[1], keepdims=1)
        y = self.op("Div", d, self.op("Sqrt", self.op("Add", s, self.const(eps))))
        scale, bias = (self.const(np.asarray(p[k]).reshape(-1, 1, 1)) for k in ("scale", "bias"))
        return self.op("Add", self.op("Mul", scale, y), bias)

    def gelu(self, x: str) -> str:
        """Exact GELU: x/2 (1 + erf(x / sqrt 2))."""
        erf = self.op("Erf", self.op("Mul", x, self.const(1 / math.sqrt(2))))
        return self.op("Mul", self.op("Mul", x, self.const(0.5)), self.op("Add", erf, self.const(1.0)))

    def mlp(self, x: str, p: dict[str, Any], layers: int) -> str:
        """`layers` linear layers with ReLU between (reference `MLP`, `MLPBlock` with ReLU)."""
        for i in range(layers):
            x = self.linear(x, p[f"layers_{i}"])
            x = x if i == layers - 1 else self.op("Relu", x)
        return x

    def attention(self, q: str, k: str, v: str, p: dict[str, Any], heads: int) -> str:
        """The reference `Attention`: (1, Nq, C), (1, Nk, C) -> (1, Nq, C), heads as an axis."""
        inner = np.asarray(p["q_proj"]["kernel"]).shape[1]
        d = inner // heads
        split = self.ints(1, -1, heads, d)
        qh = self.op("Transpose", self.op("Reshape", self.linear(q, p["q_proj"]), split), perm=[0, 2, 1, 3])
        kt = self.op("Transpose", self.op("Reshape", self.linear(k, p["k_proj"]), split), perm=[0, 2, 3, 1])
        vh = self.op("Transpose", self.op("Reshape", self.linear(v, p["v_proj"]), split), perm=[0, 2, 1, 3])
        logits = self.op("Div", self.op("MatMul", qh, kt), self.const(math.sqrt(d)))
        out = self.op("MatMul", self.op("Softmax", logits, axis=-1), vh)
        out = self.op("Reshape", self.op("Transpose", out, perm=[0, 2, 1, 3]), self.ints(1, -1, inner))
        return self.linear(out, p["out_proj"])

    def conv(self, x: str, p: dict[str, Any], stride: int, padding: int = 0) -> str:
        """torch `Conv2d` of NCHW x from our (kh, kw, in, out) kernel."""
        kernel = np.transpose(p["kernel"], (3, 2, 0, 1))  # (kh, kw, in, out) -> OIHW
        pads: dict[str, Any] = {"pads": [padding] * 4} if padding else {}  # at 0, the attribute's default
        return self.op("Conv", x, self.const(kernel), self.const(p["bias"]), strides=[stride, stride], **pads)

    def conv_transpose(self, x: str, p: dict[str, Any]) -> str:
        """torch `ConvTranspose2d(kernel_size=2, stride=2)` of NCHW x (`ConvTranspose2x2`'s weights)."""
        kernel = np.transpose(p["kernel"], (2, 3, 0, 1))  # (2, 2, in, out) -> (in, out, 2, 2)
        return self.op(
            "ConvTranspose", x, self.const(kernel), self.const(p["bias"]), strides=[2, 2], kernel_shape=[2, 2]
        )

    def resize(self, x: str, leading: str, size: str) -> str:
        """torch `F.interpolate(bilinear, align_corners=False)` of NCHW x to (N, C) `leading` +
        (h, w) `size` (int64 tensors)."""
        sizes = self.op("Concat", leading, size, axis=0)
        return self.op(
            "Resize",
            x,
            "",  # no roi
            "",  # no scales: sizes
            sizes,
            mode="linear",
            coordinate_transformation_mode="pytorch_half_pixel",
        )

    def stability_score(self, masks: str, threshold: float, offset: float) -> str:
        """Reference `calculate_stability_score` over the last two axes."""
        axes = self.ints(-2, -1)

        def count(t: float) -> str:
            above = self.op("Cast", self.op("Greater", masks, self.const(t)), to=1)  # float
            return self.op("ReduceSum", above, axes, keepdims=0)

        return self.op("Div", count(threshold + offset), count(threshold - offset))


def _numpy_tree(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _numpy_tree(v) for k, v in tree.items()}
    return np.asarray(tree, np.float32)


def _dense_pe(params: SamParams) -> np.ndarray:
    """(E * E, C) positional encoding of the embedding grid, from our prompt encoder."""
    from sam_jax.modeling.sam import prompt_encoder_forward

    e = params.config.embedding_size
    _, _, pe = prompt_encoder_forward(params, jnp.zeros((1, 1, 2), jnp.float32), jnp.ones((1, 1), jnp.int32))
    return np.asarray(pe, np.float32).reshape(e * e, -1)


def hq_mask(g: GraphBuilder, params: SamParams, upscaled: str, queries: str) -> str:
    """The HQ token's low-res mask (segment_anything_hq `MaskDecoderHQ.predict_masks`):
    (1, 1, 4E, 4E) logits from SAM's upscaled image tokens (1, C/8, 4E, 4E), through
    `embedding_maskfeature`, plus the HQ features of the `image_embeddings` and
    `interm_embeddings` inputs (as its `SamOnnxModel.forward`: the first of the latter,
    and the image embedding without the dense prompt), read by the HQ token of the
    transformer's output `queries`."""
    cfg = params.config
    dw = _numpy_tree(params.weights["mask_decoder"])
    c, low = cfg.prompt_embed_dim, cfg.low_res_mask_size
    emb_in, interm_in = HQ_INPUT_NAMES[:2]
    early = g.op("Transpose", g.op("Gather", interm_in, g.const(0, np.int64), axis=0), perm=[0, 3, 1, 2])  # NCHW

    def fuse(x: str, name: str) -> str:  # ConvTranspose, LayerNorm2d, GELU, ConvTranspose
        x = g.gelu(g.layer_norm_2d(g.conv_transpose(x, dw[f"{name}_0"]), dw[f"{name}_1"]))
        return g.conv_transpose(x, dw[f"{name}_3"])

    hq_features = g.op("Add", fuse(emb_in, "embedding_encoder"), fuse(early, "compress_vit_feat"))
    x = g.gelu(g.layer_norm_2d(g.conv(upscaled, dw["embedding_maskfeature_0"], 1, 1), dw["embedding_maskfeature_1"]))
    features = g.op("Add", g.conv(x, dw["embedding_maskfeature_3"], 1, 1), hq_features)
    token = g.op("Gather", queries, g.const(1 + cfg.num_mask_tokens, np.int64), axis=1)
    hyper = g.op("Unsqueeze", g.mlp(token, dw["hf_mlp"], 3), g.ints(1))
    mask = g.op("MatMul", hyper, g.op("Reshape", features, g.ints(1, c // 8, low * low)))
    return g.op("Reshape", mask, g.ints(1, 1, low, low))


def select_hq_masks(g: GraphBuilder, masks: str, scores: str, t: int, options: HQExportOptions) -> tuple[str, str]:
    """segment_anything_hq `SamOnnxModel.forward`'s choice: (1, T + 1, L, L) low-res logits,
    the HQ mask last, and (1, T or T + 1) scores -> (1, 1, L, L) and (1, 1): SAM's single
    output, or its multimask output with the best score, plus the HQ mask (or the HQ mask
    alone); SAM's mask's score.

    Args:
        t: SAM's mask token count (`SamConfig.num_mask_tokens`).
    """

    def outputs(x: str, start: int, stop: int) -> str:
        return g.op("Slice", x, g.ints(start), g.ints(stop), g.ints(1))

    if options.multimask_output:
        multi_scores = outputs(scores, 1, t)
        best = g.op("ArgMax", multi_scores, axis=1, keepdims=0)  # the first of equal scores, as torch.max
        scores = g.op("Gather", multi_scores, best, axis=1)
        masks_sam = g.op("Gather", outputs(masks, 1, t), best, axis=1)
    else:
        scores, masks_sam = outputs(scores, 0, 1), outputs(masks, 0, 1)
    masks_hq = outputs(masks, t, t + 1)
    return (masks_hq if options.hq_token_only else g.op("Add", masks_sam, masks_hq)), scores


def build_decoder(params: SamParams, options: AnyExportOptions | None = None) -> Any:
    """The decoder as an `onnx.ModelProto` (interface and options: `sam_jax.export`).

    Args:
        params: the model; only the prompt encoder and mask decoder weights are read.
        options: `sam_jax.export.ExportOptions`, or `HQExportOptions` for a SAM-HQ model
            (`resolve_options`); None: the defaults.
    Returns:
        A checked `onnx.ModelProto`, opset 17.
    """
    import onnx
    from onnx import TensorProto, helper

    cfg = params.config
    options = resolve_options(cfg, options)
    pw, dw = _numpy_tree(params.weights["prompt_encoder"]), _numpy_tree(params.weights["mask_decoder"])
    c, e, s, low = cfg.prompt_embed_dim, cfg.embedding_size, cfg.image_size, cfg.low_res_mask_size
    heads, t = cfg.decoder_num_heads, cfg.num_mask_tokens
    g = GraphBuilder()
    emb_in, coords_in, labels_in, mask_in, has_mask_in, size_in = INPUT_NAMES

    # Prompt encoder (reference `SamOnnxModel._embed_points`, `_embed_masks`).
    coords = g.op("Div", g.op("Add", coords_in, g.const(0.5)), g.const(float(s)))
    coords = g.op("Sub", g.op("Mul", coords, g.const(2.0)), g.const(1.0))
    phase = g.op(
        "Mul",
        g.op("MatMul", coords, g.const(pw["pe_layer"]["positional_encoding_gaussian_matrix"])),
        g.const(2 * np.pi),
    )
    sparse = g.op("Concat", g.op("Sin", phase), g.op("Cos", phase), axis=-1)
    labels = g.op("Unsqueeze", labels_in, g.ints(-1))

    def where_label(value: float) -> str:
        return g.op("Cast", g.op("Equal", labels, g.const(value)), to=1)

    sparse = g.op("Mul", sparse, g.op("Sub", g.const(1.0), where_label(-1.0)))
    sparse = g.op("Add", sparse, g.op("Mul", g.const(pw["not_a_point_embed"]["embedding"]), where_label(-1.0)))
    for i in range(4):
        table = g.const(pw[f"point_embeddings_{i}"]["embedding"])
        sparse = g.op("Add", sparse, g.op("Mul", table, where_label(float(i))))

    x = g.gelu(g.layer_norm_2d(g.conv(mask_in, pw["mask_downscaling_0"], 2), pw["mask_downscaling_1"]))
    x = g.gelu(g.layer_norm_2d(g.conv(x, pw["mask_downscaling_3"], 2), pw["mask_downscaling_4"]))
    mask_embedding = g.conv(x, pw["mask_downscaling_6"], 1)
    no_mask = g.const(pw["no_mask_embed"]["embedding"].reshape(1, c, 1, 1))
    dense = g.op(
        "Add",
        g.op("Mul", has_mask_in, mask_embedding),
        g.op("Mul", g.op("Sub", g.const(1.0), has_mask_in), no_mask),
    )

    # Two-way transformer (reference `MaskDecoder.predict_masks`, `TwoWayTransformer`).
    hq_token = [dw["hf_token"]["embedding"]] if cfg.hq else []
    output_tokens = np.concatenate([dw["iou_token"]["embedding"], dw["mask_tokens"]["embedding"], *hq_token])[None]
    tokens = g.op("Concat", g.const(output_tokens), sparse, axis=1)
    src = g.op("Add", emb_in, dense)
    keys = g.op("Transpose", g.op("Reshape", src, g.ints(1, c, e * e)), perm=[0, 2, 1])
    key_pe = g.const(_dense_pe(params)[None])
    queries, tw = tokens, dw["transformer"]
    block_eps = cfg.decoder_layer_norm_eps  # the final norm keeps torch's default, as the reference
    for i in range(cfg.decoder_depth):
        p = tw[f"layers_{i}"]
        if i == 0:  # skip_first_layer_pe
            queries = g.attention(queries, queries, queries, p["self_attn"], heads)
        else:
            q = g.op("Add", queries, tokens)
            queries = g.op("Add", queries, g.attention(q, q, queries, p["self_attn"], heads))
        queries = g.layer_norm(queries, p["norm1"], block_eps)
        q, k = g.op("Add", queries, tokens), g.op("Add", keys, key_pe)
        queries = g.op("Add", queries, g.attention(q, k, keys, p["cross_attn_token_to_image"], heads))
        queries = g.layer_norm(queries, p["norm2"], block_eps)
        queries = g.layer_norm(
            g.op("Add", queries, g.mlp(queries, {"layers_0": p["mlp"]["lin1"], "layers_1": p["mlp"]["lin2"]}, 2)),
            p["norm3"],
            block_eps,
        )
        q, k = g.op("Add", queries, tokens), g.op("Add", keys, key_pe)
        keys = g.op("Add", keys, g.attention(k, q, queries, p["cross_attn_image_to_token"], heads))
        keys = g.layer_norm(keys, p["norm4"], block_eps)
    q, k = g.op("Add", queries, tokens), g.op("Add", keys, key_pe)
    queries = g.op("Add", queries, g.attention(q, k, keys, tw["final_attn_token_to_image"], heads))
    queries = g.layer_norm(queries, tw["norm_final_attn"], DECODER_LN_EPS)

    # Masks from the mask tokens and the upscaled image tokens; IoU from the IoU token.
    iou_token = g.op("Gather", queries, g.const(0, np.int64), axis=1)
    src = g.op("Reshape", g.op("Transpose", keys, perm=[0, 2, 1]), g.ints(1, c, e, e))

    x = g.gelu(g.layer_norm_2d(g.conv_transpose(src, dw["output_upscaling_0"]), dw["output_upscaling_1"]))
    upscaled = g.gelu(g.conv_transpose(x, dw["output_upscaling_3"]))
    hyper = []
    for i in range(t):
        token = g.op("Gather", queries, g.const(1 + i, np.int64), axis=1)
        hyper.append(g.op("Unsqueeze", g.mlp(token, dw[f"output_hypernetworks_mlps_{i}"], 3), g.ints(1)))
    hyper_in = g.op("Concat", *hyper, axis=1)
    masks = g.op("MatMul", hyper_in, g.op("Reshape", upscaled, g.ints(1, c // 8, low * low)))
    masks = g.op("Reshape", masks, g.ints(1, t, low, low))
    scores = g.mlp(iou_token, dw["iou_prediction_head"], cfg.iou_head_depth)
    if cfg.hq:
        masks = g.op("Concat", masks, hq_mask(g, params, upscaled, queries), axis=1)

    # Options and post-processing (reference `SamOnnxModel.forward`).
    if options.use_stability_score:
        scores = g.stability_score(masks, MASK_THRESHOLD, STABILITY_SCORE_OFFSET)
    if isinstance(options, HQExportOptions):
        masks, scores = select_hq_masks(g, masks, scores, t, options)
    elif options.return_single_mask:
        n = g.op("Cast", g.op("Gather", g.op("Shape", coords_in), g.const(1, np.int64)), to=1)
        reweight = np.zeros((1, t), np.float32)
        reweight[0, 0] = SINGLE_MASK_REWEIGHT
        bias = g.op("Mul", g.op("Sub", n, g.const(SINGLE_MASK_POINTS)), g.const(reweight))
        best = g.op("ArgMax", g.op("Add", scores, bias), axis=1, keepdims=0)
        masks, scores = g.op("Gather", masks, best, axis=1), g.op("Gather", scores, best, axis=1)
    leading = g.op("Slice", g.op("Shape", masks), g.ints(0), g.ints(2))
    up = g.resize(masks, leading, g.ints(s, s))
    longest = g.op("ReduceMax", size_in, keepdims=1)
    scaled = g.op("Mul", g.op("Div", g.const(float(s)), longest), size_in)
    prepadded = g.op("Cast", g.op("Floor", g.op("Add", scaled, g.const(0.5))), to=7)  # int64
    up = g.op("Slice", up, g.ints(0, 0), prepadded, g.ints(2, 3))
    masks_out = g.resize(up, leading, g.op("Cast", size_in, to=7))
    outputs: dict[str, str] = {"masks": masks_out, "iou_predictions": scores, "low_res_masks": masks}
    if options.return_extra_metrics:
        outputs["stability_scores"] = g.stability_score(masks_out, MASK_THRESHOLD, STABILITY_SCORE_OFFSET)
        above = g.op("Cast", g.op("Greater", masks_out, g.const(MASK_THRESHOLD)), to=7)
        outputs["areas"] = g.op("ReduceSum", above, g.ints(-2, -1), keepdims=0)
    names = options.output_names()
    for out_name in names:  # give the graph outputs their names
        g.op("Identity", outputs[out_name], name=out_name)

    m: int | str = 1 if cfg.hq else "num_masks"  # SAM-HQ's returns one mask
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    early = [] if cfg.early_features_shape is None else [cfg.early_features_shape]
    inputs = [
        helper.make_tensor_value_info(emb_in, f32, [1, c, e, e]),
        # SAM-HQ's encoder features (L, 1, E, E, D): the reference's export fixes L to the
        # encoder's global-attention blocks; only the first is read, so any L >= 1 is taken.
        *[helper.make_tensor_value_info(HQ_INPUT_NAMES[1], f32, ["num_interm", 1, *shape]) for shape in early],
        helper.make_tensor_value_info(coords_in, f32, [1, "num_points", 2]),
        helper.make_tensor_value_info(labels_in, f32, [1, "num_points"]),
        helper.make_tensor_value_info(mask_in, f32, [1, 1, low, low]),
        helper.make_tensor_value_info(has_mask_in, f32, [1]),
        helper.make_tensor_value_info(size_in, f32, [2]),
    ]
    shapes: dict[str, tuple[int, list[Any]]] = {
        "masks": (f32, [1, m, "height", "width"]),
        "iou_predictions": (f32, [1, m]),
        "low_res_masks": (f32, [1, m, low, low]),
        "stability_scores": (f32, [1, m]),
        "areas": (i64, [1, m]),
    }
    outs = [helper.make_tensor_value_info(k, shapes[k][0], shapes[k][1]) for k in names]
    assert [i.name for i in inputs] == list(input_names(cfg))
    graph = helper.make_graph(g.nodes, "sam_jax_decoder", inputs, outs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="sam-jax")
    onnx.checker.check_model(model)
    return model


def export_onnx(params: SamParams, options: AnyExportOptions | None = None) -> bytes:
    """The decoder as a serialized ONNX model (arguments as `build_decoder`)."""
    return build_decoder(params, options).SerializeToString()
