"""Mixed precision at the ONNX level: selected operators of a float16 graph computed in float32."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper, numpy_helper


def keep_in_float32(model: onnx.ModelProto, op_types: tuple[str, ...]) -> int:
    """Wrap every node of ``op_types`` in Casts (float16 -> float32 in, float32 -> float16 out);
    float16 constants it reads (initializers or Constant nodes) get float32 copies, as TensorRT
    needs some of them constant. Returns the number of nodes wrapped."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    inits |= {
        n.output[0]: helper.get_attribute_value(n.attribute[0])
        for n in graph.node
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"
    }
    nodes, wrapped = [], 0
    for node in graph.node:
        if node.op_type not in op_types:
            nodes.append(node)
            continue
        wrapped += 1
        for k, name in enumerate(node.input):
            if not name:
                continue
            fp32 = f"{name}__fp32_{wrapped}"
            init = inits.get(name)
            if init is not None:
                if init.data_type == TensorProto.FLOAT16:
                    graph.initializer.append(
                        numpy_helper.from_array(numpy_helper.to_array(init).astype("float32"), fp32)
                    )
                    node.input[k] = fp32
                continue
            nodes.append(helper.make_node("Cast", [name], [fp32], to=TensorProto.FLOAT, name=f"{fp32}_cast"))
            node.input[k] = fp32
        nodes.append(node)
        for k, name in enumerate(node.output):
            fp32 = f"{name}__fp32"
            node.output[k] = fp32
            nodes.append(helper.make_node("Cast", [fp32], [name], to=TensorProto.FLOAT16, name=f"{fp32}_cast"))
    used = {name for n in nodes for name in n.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(n for n in nodes if n.op_type != "Constant" or n.output[0] in used)
    return wrapped
