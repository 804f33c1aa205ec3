"""ONNX export of the graphs: onnx.checker, TensorRT operator list, fp32 islands in fp16, and ONNX
Runtime (CPU) against the torch float32 model, the graphs with dynamic sizes at sizes no power of two
divides. Small random-weight networks."""

import dataclasses

import onnx
import pytest
import torch
from onnx import TensorProto, helper

import idm_rt
from idm_rt.buckets import Bucket
from idm_rt.export.graphs import FP32_OPS, OPSET, export_graph
from idm_rt.export.opcheck import check_graph
from idm_rt.export.parity import relative_error
from idm_rt.export.precision import keep_in_float32

from .helpers import TINY_32

BUCKET = Bucket(32, 48, 1, 2)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return idm_rt.IDM(TINY_32, max_scale=4.0).eval()


@pytest.fixture(scope="module")
def graphs(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    specs = {
        "encoder": ("encoder", None, "fp32"),
        "encoder_block": ("encoder_block", None, "fp32"),
        "conditioner": ("conditioner", None, "fp32"),
        "unet": ("unet", BUCKET, "fp32"),
        "unet16": ("unet", Bucket(32, 32), "fp16"),
        "unet_dynamic": ("unet_dynamic", None, "fp32"),
    }
    return {
        name: export_graph(model, kind, bucket, folder / f"{name}.onnx", prec)
        for name, (kind, bucket, prec) in specs.items()
    }


def _ort(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.slow
def test_every_graph_passes_checker_and_tensorrt_operator_list(graphs):
    for name, path in graphs.items():
        assert check_graph(path, OPSET) == [], name


@pytest.mark.slow
def test_unet_has_static_spatial_shapes_and_dynamic_batch(graphs):
    dims = [
        [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in onnx.load(str(graphs["unet"])).graph.input
    ]
    assert dims[0] == ["batch", 3, 32, 48]
    assert all(d[0] == "batch" for d in dims)
    static = onnx.load(str(graphs["unet16"])).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in static] == [1, 3, 32, 32]


@pytest.mark.slow
def test_implicit_layer_index_tables_are_constants(graphs):
    ops = {n.op_type for n in onnx.load(str(graphs["unet"])).graph.node}
    assert "GridSample" not in ops and "ScatterND" not in ops


@pytest.mark.slow
def test_ort_matches_torch_fp32_per_graph(model, graphs):
    torch.manual_seed(1)
    lr = torch.randn(1, 3, 13, 17)
    feat = _ort(graphs["encoder"]).run(None, {"lr": lr.numpy()})[0]
    assert relative_error([torch.from_numpy(feat)], [model.encoder.features(lr).detach()]) < 1e-5
    rows, cols = torch.tensor([0, 0, 1, 3, 5, 7, 9, 12]), torch.arange(17).repeat_interleave(2)
    got = _ort(graphs["encoder_block"]).run(None, {"feat": feat, "rows": rows.numpy(), "cols": cols.numpy()})[0]
    want = model.encoder.tail(torch.from_numpy(feat)[:, :, rows][:, :, :, cols])
    assert relative_error([torch.from_numpy(got)], [want.detach()]) < 1e-5

    for size in ((32, 48), (19, 7)):
        cond, p = torch.randn(1, 3, *size), torch.tensor([0.3])
        c = model.condition(cond, p)
        got = _ort(graphs["conditioner"]).run(None, {"cond": cond.numpy(), "p": p.numpy()})
        assert relative_error([torch.from_numpy(g) for g in got], [t.detach() for t in c.flat()]) < 1e-5
    cond, p = torch.randn(1, 3, 32, 48), torch.tensor([0.3])
    c = model.condition(cond, p)
    flat = c.flat()

    x, g = torch.randn(1, 3, 32, 48), torch.tensor([0.7])
    session = _ort(graphs["unet"])
    names = [i.name for i in session.get_inputs()]
    for batch in (1, 2):  # both ends of the bucket's batch range
        tensors = [t.detach().repeat(batch, *[1] * (t.dim() - 1)) for t in (x, cond, *flat, g)]
        got = session.run(None, dict(zip(names, (t.numpy() for t in tensors))))[0]
        with torch.no_grad():
            want = model.denoise(
                tensors[0],
                c.__class__(tensors[1], [None, *tensors[2:4]], [None, *tensors[4:6]], [None, *tensors[6:8]]),
                tensors[8],
            )
        assert relative_error([torch.from_numpy(got)], [want]) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("size", [(32, 48), (13, 57), (40, 24), (5, 3)])
def test_dynamic_unet_matches_torch_at_any_size(model, graphs, size):
    """The graph that runs every size no bucket has exactly, at that size: the torch model's eps."""
    from idm_rt.model.unet import query_tables_for

    torch.manual_seed(3)
    cond, p = torch.randn(2, 3, *size), torch.tensor([0.3, 0.9])
    x, g = torch.randn(2, 3, *size), torch.tensor([0.7, 0.2])
    with torch.no_grad():
        c = model.condition(cond, p)
        want = model.denoise(x, c, g)
    tables = [t for four in query_tables_for(size, TINY_32.levels) for t in four]
    session = _ort(graphs["unet_dynamic"])
    feeds = [x, cond, *c.flat(), g, *tables]
    got = session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), feeds)})[0]
    assert relative_error([torch.from_numpy(got)], [want]) < 1e-5


@pytest.mark.parametrize("size", [(48, 48), (37, 100), (7, 5), (300, 520)])
def test_implicit_encoder_graphs_in_blocks_match_torch(tmp_path, size):
    """The features graph, then the block graph over the blocks the runner gives it (with the
    features each reads and the whole image's cell size), plus bicubic: the torch encoder's image,
    also where several blocks meet (300 x 520)."""
    from idm_rt.model.pieces import in_blocks
    from idm_rt.model.tables import resize_tables
    from idm_rt.resize import bicubic_upscale

    torch.manual_seed(4)
    model = idm_rt.IDM(dataclasses.replace(TINY_32, encoder_upsampler="implicit"), max_scale=4.0).eval()
    features, block = (
        export_graph(model, kind, None, tmp_path / f"{kind}.onnx") for kind in ("encoder", "encoder_block")
    )
    assert check_graph(features, OPSET) == [] and check_graph(block, OPSET) == []
    lr = torch.rand(1, 3, max(size[0] // 3, 1), max(size[1] // 3, 1)) * 2 - 1
    with torch.no_grad():
        want = model.encode(lr, size)
    block_session = _ort(block)
    names = [i.name for i in block_session.get_inputs()]
    assert names == ["feat", "rows", "cols", "rel_rows", "rel_cols", "cell"]

    def run_block(*inputs):
        return torch.from_numpy(block_session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})[0])

    feat = torch.from_numpy(_ort(features).run(None, {"lr": lr.numpy()})[0])
    got = in_blocks(run_block, feat, *resize_tables("implicit", tuple(lr.shape[-2:]), size)) + bicubic_upscale(lr, size)
    assert relative_error([got], [want]) < 1e-5


@pytest.mark.slow
def test_fp16_unet_keeps_norm_and_softmax_in_fp32_within_1e_2(model, graphs):
    proto = onnx.load(str(graphs["unet16"]))
    producers = {o: n for n in proto.graph.node for o in n.output}
    islands = [n for n in proto.graph.node if n.op_type in FP32_OPS]
    assert len(islands) >= 4
    for node in islands:
        src = producers.get(node.input[0])
        assert src is not None and src.op_type == "Cast" and src.attribute[0].i == TensorProto.FLOAT, node.name
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    torch.manual_seed(2)
    cond, p, x, g = torch.randn(1, 3, 32, 32), torch.tensor([0.5]), torch.randn(1, 3, 32, 32), torch.tensor([0.6])
    with torch.no_grad():
        c = model.condition(cond, p)
        want = model.denoise(x, c, g)
    session = _ort(graphs["unet16"])
    feeds = [x, cond, *c.flat(), g]
    got = session.run(None, {i.name: t.half().numpy() for i, t in zip(session.get_inputs(), feeds)})[0]
    err = relative_error([torch.from_numpy(got).float()], [want])
    assert 0 < err < 1e-2


def _graph(nodes, inputs, opset=OPSET, initializers=(), out_shape=(1, 4, 2, 2)):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))
    graph = helper.make_graph(nodes, "g", [x, *inputs], [y], initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_operator_check_names_unsupported_operators_and_non_constant_inputs():
    det = _graph([helper.make_node("Det", ["x"], ["y"], name="det")], [], out_shape=(1, 4))
    assert any("Det is not in TensorRT's ONNX operator list" in p for p in check_graph(det, OPSET))
    scale = helper.make_tensor_value_info("s", TensorProto.FLOAT, [4])
    bias = onnx.numpy_helper.from_array(torch.zeros(4).numpy(), "b")
    inorm = _graph(
        [helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"], name="norm")], [scale], initializers=[bias]
    )
    problems = check_graph(inorm, OPSET)
    assert problems == ["norm: TensorRT needs input 1 of InstanceNormalization to be a constant"]
    relu = _graph([helper.make_node("Relu", ["x"], ["y"])], [], opset=13)
    assert check_graph(relu, OPSET) == [f"opset [13] instead of {OPSET}"]
    broken = _graph([helper.make_node("Relu", ["nope"], ["y"])], [])
    assert check_graph(broken, OPSET)[0].startswith("onnx.checker")


def test_keep_in_float32_wraps_only_the_listed_operators():
    x16 = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 3])
    y16 = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 3])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Softmax", ["r"], ["y"])], "g", [x16], [y16]
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    assert keep_in_float32(proto, ("Softmax",)) == 1
    assert [n.op_type for n in proto.graph.node] == ["Relu", "Cast", "Softmax", "Cast"]
    onnx.checker.check_model(proto, full_check=True)
    import numpy as np
    import onnxruntime as ort

    out = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": np.ones((2, 3), np.float16)})[0]
    assert out.dtype == np.float16 and np.allclose(out, 1 / 3, atol=1e-3)


def test_inline_constant_identities_resolves_chains_and_spares_outputs_and_subgraphs():
    from onnx import numpy_helper

    from idm_rt.export.graphs import inline_constant_identities

    w = numpy_helper.from_array(torch.ones(2).numpy(), "w")
    sub = helper.make_graph(
        [helper.make_node("Add", ["x", "id_sub"], ["s"])],
        "then",
        [],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [2])],
    )
    nodes = [
        helper.make_node("Identity", ["w"], ["id1"]),
        helper.make_node("Identity", ["id1"], ["id2"]),
        helper.make_node("Identity", ["x"], ["id_x"]),
        helper.make_node("Identity", ["w"], ["id_out"]),
        helper.make_node("Identity", ["w"], ["id_sub"]),
        helper.make_node("Add", ["id_x", "id2"], ["y"]),
        helper.make_node("If", ["c"], ["z"], then_branch=sub, else_branch=sub),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("y", "id_out", "z")],
        [w],
        value_info=[helper.make_tensor_value_info("id1", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    inline_constant_identities(model)
    onnx.checker.check_model(model, full_check=True)
    left = {n.output[0] for n in model.graph.node if n.op_type == "Identity"}
    assert left == {"id_x", "id_out", "id_sub"}  # not over an initializer; a graph output; read by a subgraph
    add = next(n for n in model.graph.node if n.op_type == "Add")
    assert list(add.input) == ["id_x", "w"] and not model.graph.value_info
