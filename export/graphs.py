"""The exported graphs of IDM and their ONNX export.

* encoder: ``lr (1,3,h,w) -> feat (1,C,h,w)``, the LR features; runs once per image at the LR
  size, so its sizes are dynamic.
* encoder_block: ``feat (1,C,h',w'), rows (H',), cols (W',) [, rel_rows (H',), rel_cols (W',), cell (2,)]
  -> cond (1,3,H',W')``: the encoder's HR part over one block of at most
  :data:`~idm_rt.model.encoder.BLOCK` (+ halo) pixels a side, given the features it reads; the
  runner loops over the blocks as the torch encoder does (:func:`~idm_rt.model.encoder.in_blocks`)
  and adds the bicubic term itself, so that memory is bounded by the block, not the image. The
  resize is a gather with index tables (and, implicit, relative coordinates and the cell size)
  that the runner computes as the torch model does.
* conditioner: ``cond (1,3,H,W), p (1,) -> shift_i, a1_i, a2_i`` for levels 1..L-1; dynamic sizes,
  batch 1 (it runs once per image and tile, so the runner loops over the batch).
* unet, per bucket: ``x_t, cond, shift_i, a1_i, a2_i, g (B,) -> eps``, the bucket's static shape
  (exact fits: tiles of the bucket's size; the implicit layers' tables are constants).
* unet_dynamic: the same with dynamic sizes, and the implicit layers' query tables as inputs
  (``rows_i, rel_rows_i, cols_i, rel_cols_i``): every other size, at its own size, never padded.

The batch axis of the U-Nets is dynamic when the batch range is. The encoder graphs and the conditioner stay
float32 (they run once per image); the U-Nets are exported in the requested precision.
"""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from idm_rt.backends.engine_dir import graph_inputs, graph_outputs, table_names
from idm_rt.buckets import Bucket
from idm_rt.model import IDM, Conditioning
from idm_rt.model.tables import resize_tables
from idm_rt.model.unet import query_tables_for

from .precision import keep_in_float32
from .winograd import use_winograd

# Opset 17: TensorRT's ONNX parser takes it since TensorRT 8.5 and in every 10.x release (the
# parser supports opsets 9 and above up to the release's maximum, see the ONNX opset guide
# https://docs.nvidia.com/deeplearning/tensorrt/latest/reference/onnx-opset-guide.html).
OPSET = 17

# Reductions that must stay in float32 inside an fp16 U-Net: GroupNorm (exported as
# InstanceNormalization over the groups) and the attention softmax.
FP32_OPS = ("InstanceNormalization", "Softmax")

# How the U-Net's 3x3 convolutions are written: Conv nodes, or Winograd transforms + MatMul.
CONV_MODES = ("direct", "winograd")


class EncoderGraph(nn.Module):
    """The encoder's LR features."""

    def __init__(self, model: IDM):
        super().__init__()
        self.encoder = model.encoder

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(lr)


class EncoderBlockGraph(nn.Module):
    """The encoder's HR part over one block (:meth:`~idm_rt.model.encoder.EDSREncoder.block`)."""

    def __init__(self, model: IDM):
        super().__init__()
        self.encoder = model.encoder

    def forward(self, feat: torch.Tensor, *tables: torch.Tensor) -> torch.Tensor:
        return self.encoder.block(feat, *tables)


class ConditionerGraph(nn.Module):
    """``condition(cond, p)`` with the Conditioning flattened into named outputs."""

    def __init__(self, model: IDM):
        super().__init__()
        self.model = model

    def forward(self, cond: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.condition(cond, p).flat())


class UNetGraph(nn.Module):
    """``denoise(x_t, conditioning, g)`` with the Conditioning passed as flat tensors (and, for the
    dynamic graph, the implicit layers' query tables after g)."""

    def __init__(self, model: IDM, with_tables: bool = False):
        super().__init__()
        self.model = model
        self.n_flat = 3 * (model.config.levels - 1)
        self.with_tables = with_tables

    def forward(self, x_t: torch.Tensor, cond: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        flat, g, tables = rest[: self.n_flat], rest[self.n_flat], rest[self.n_flat + 1 :]
        grouped = [tuple(tables[k : k + 4]) for k in range(0, len(tables), 4)] if self.with_tables else None
        return self.model.unet(x_t, Conditioning.from_flat(cond, list(flat)), g, grouped)


def sample_inputs(
    model: IDM,
    kind: str,
    bucket: Bucket | None,
    batch: int = 1,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    size: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, ...]:
    """Random inputs of graph ``kind`` at ``size`` (default: the bucket's; without a bucket 40 x 24,
    a size no power of two divides); the encoder's LR is a third of it, and so are the features of
    the encoder's block (whose tables go from them to the size); the U-Net's conditioning comes from
    the model itself, as at run time."""
    gen = torch.Generator().manual_seed(seed)
    h, w = size or ((bucket.height, bucket.width) if bucket is not None else (40, 24))
    cond = torch.randn(batch, 3, h, w, generator=gen)
    p = torch.rand(batch, generator=gen)
    lr_size = (max(h // 3, 1), max(w // 3, 1))
    if kind == "encoder":
        return (torch.randn(1, 3, *lr_size, generator=gen),)
    if kind == "encoder_block":
        feat = torch.randn(1, model.config.encoder_feats, *lr_size, generator=gen)
        tables = [torch.from_numpy(t.copy()) for t in resize_tables(model.config.encoder_upsampler, lr_size, (h, w))]
        cell = torch.tensor([lr_size[0] / h, lr_size[1] / w])
        return (feat, *tables, cell) if len(tables) == 4 else (feat, *tables)
    if kind == "conditioner":
        return cond[:1], p[:1]
    with torch.no_grad():
        flat = model.condition(cond, p).flat()
    x_t, g = torch.randn(batch, 3, h, w, generator=gen), torch.rand(batch, generator=gen)
    tensors = tuple(t.to(dtype) for t in (x_t, cond, *flat)) + (g.to(dtype),)
    if kind == "unet_dynamic":
        tensors += tuple(
            t.to(dtype) if t.is_floating_point() else t
            for tables in query_tables_for((h, w), model.config.levels)
            for t in tables
        )
    return tensors


def graph_module(model: IDM, kind: str) -> nn.Module:
    """The wrapper module of graph ``kind`` in eval mode."""
    if kind == "unet_dynamic":
        return UNetGraph(model, with_tables=True).eval()
    graphs = {
        "encoder": EncoderGraph,
        "encoder_block": EncoderBlockGraph,
        "conditioner": ConditionerGraph,
        "unet": UNetGraph,
    }
    return graphs[kind](model).eval()


def io_spec(model: IDM, kind: str, bucket: Bucket | None) -> tuple[list[str], list[str], dict]:
    """Input names, output names and dynamic axes of graph ``kind``."""
    levels = model.config.levels
    names_in, names_out = graph_inputs(kind, model.config), graph_outputs(kind, levels)
    if kind == "encoder":
        return names_in, names_out, {"lr": {2: "lr_h", 3: "lr_w"}, "feat": {2: "lr_h", 3: "lr_w"}}
    if kind == "encoder_block":
        axes = {
            "feat": {2: "feat_h", 3: "feat_w"},
            "rows": {0: "out_h"},
            "cols": {0: "out_w"},
            "rel_rows": {0: "out_h"},
            "rel_cols": {0: "out_w"},
            "cond": {2: "out_h", 3: "out_w"},
        }
        return names_in, names_out, {n: a for n, a in axes.items() if n in names_in + names_out}
    if kind == "conditioner":
        axes = {"cond": {2: "h_0", 3: "w_0"}}
        axes |= {n: {2: f"h_{n.split('_')[1]}", 3: f"w_{n.split('_')[1]}"} for n in names_out if n.startswith("shift")}
        return names_in, names_out, axes
    if kind == "unet":
        dynamic = bucket.dynamic_batch
        return names_in, names_out, ({n: {0: "batch"} for n in names_in + names_out} if dynamic else {})
    axes = {n: {0: "batch"} for n in names_in + names_out if n not in table_names(levels)}
    for n in ("x_t", "cond", "eps"):
        axes[n] |= {2: "h_0", 3: "w_0"}
    for i in range(1, levels):
        axes[f"shift_{i}"] |= {2: f"h_{i}", 3: f"w_{i}"}
        axes |= {
            f"rows_{i}": {0: f"h_{i - 1}"},
            f"rel_rows_{i}": {0: f"h_{i - 1}"},
            f"cols_{i}": {0: f"w_{i - 1}"},
            f"rel_cols_{i}": {0: f"w_{i - 1}"},
        }
    return names_in, names_out, axes


def export_graph(
    model: IDM,
    kind: str,
    bucket: Bucket | None,
    path: Path,
    precision: str = "fp32",
    conv: str = "direct",
    device: str | torch.device = "cpu",
) -> Path:
    """Export graph ``kind`` (:data:`~idm_rt.backends.engine_dir.KINDS`) of ``model`` (for ``bucket``:
    the static U-Net) to ``path`` (written directly: the build writes it under a temp name it records).

    ``precision`` "fp16" applies to the U-Nets only: weights and activations in float16, with the
    :data:`FP32_OPS` computed in float32. ``conv`` "winograd" (float32 U-Net only) computes the
    U-Net's wide 3x3 convolutions as Winograd transforms and products, for ONNX Runtime on a CPU
    (:mod:`export.winograd`); the other graphs run once per image and keep direct convolutions.
    ``device`` is where the graph is traced (the same graph on any device; a float16 trace takes minutes
    on a CPU, seconds on a GPU).
    """
    if conv not in CONV_MODES:
        raise ValueError(f"conv must be one of {CONV_MODES}, not {conv!r}")
    half = precision == "fp16" and kind in ("unet", "unet_dynamic")
    if conv == "winograd" and half:
        raise ValueError("Winograd convolutions are float32 only: their transforms lose too much in float16")
    dtype = torch.float16 if half else torch.float32
    net = copy.deepcopy(model).to(device)
    net.set_kernels("torch")  # the trace records torch operators, never a Triton launch (on a GPU)
    module = graph_module(net, kind)
    batch = bucket.min_batch if kind == "unet" else 1
    args = tuple(t.to(device) for t in sample_inputs(model, kind, bucket, batch))
    with torch.no_grad():
        # Fills the implicit layers' index tables outside the trace, in float32: a float16 call on
        # a CPU takes 100x as long (14 s for the bundled U-Net at 128x128), and the trace makes one.
        module(*args)
    if conv == "winograd" and kind == "unet":
        use_winograd(module, args)
    if half:
        module, args = module.to(dtype), tuple(t.to(dtype) if t.is_floating_point() else t for t in args)
    names_in, names_out, axes = io_spec(model, kind, bucket)
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about the sizes made constant on purpose
        torch.onnx.export(
            module,
            args,
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=names_in,
            output_names=names_out,
            dynamic_axes=axes or None,
            do_constant_folding=True,
        )
    proto = onnx.load_from_string(buf.getvalue())
    inline_constant_identities(proto)
    if half:
        keep_in_float32(proto, FP32_OPS)
    onnx.save(proto, str(path))
    return path


def inline_constant_identities(proto: onnx.ModelProto) -> None:
    """Remove ``Identity`` nodes over initializers (the exporter's way of sharing equal buffers, such
    as the Winograd transforms of convolutions of one width), pointing their users at the
    initializer, so that inputs TensorRT needs constant are initializers. Names that a graph output
    or a subgraph (If, Loop) uses are left alone."""
    graph = proto.graph
    initializers = {i.name for i in graph.initializer}
    keep_names = {o.name for o in graph.output} | _subgraph_inputs(graph)
    alias: dict[str, str] = {}
    for node in graph.node:  # topological order: an Identity of an Identity resolves to the first input
        if node.op_type == "Identity" and node.output[0] not in keep_names:
            source = alias.get(node.input[0], node.input[0])
            if source in initializers:
                alias[node.output[0]] = source
    for node in graph.node:
        for k, name in enumerate(node.input):
            node.input[k] = alias.get(name, name)
    keep = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    del graph.node[:]
    graph.node.extend(keep)
    infos = [v for v in graph.value_info if v.name not in alias]
    del graph.value_info[:]
    graph.value_info.extend(infos)


def _subgraph_inputs(graph: onnx.GraphProto) -> set[str]:
    """Every name the nodes of ``graph``'s subgraphs (at any depth) read."""
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                names |= {i for n in sub.node for i in n.input} | _subgraph_inputs(sub)
    return names
