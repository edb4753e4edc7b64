"""The ActiVis computation graph: fx tracing, store-layer labels, fallback, layout."""

from __future__ import annotations

import warnings

import torch
import torchvision
from torch import nn

from core.demo.model import INPUT_SIZE, DemoCNN
from core.methods.activis.graph import (
    GraphNode,
    ModelGraph,
    is_per_channel,
    model_graph,
    shape_text,
)
from core.models.torchscript import ScriptedModel

STORABLE = ["block", "pool", "fc.0"]


class Tiny(nn.Module):
    """conv -> bn -> relu (one block), a residual conv, pool, flatten, linear -> relu, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Sequential(nn.Linear(8 * 8 * 8, 16), nn.ReLU())
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(x)
        x = x + self.conv2(x)
        x = torch.flatten(self.pool(x), 1)
        return self.head(self.fc(x))


class DataDependent(Tiny):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(x)
        if x.sum() > 0:
            x = x + self.conv2(x)
        x = torch.flatten(self.pool(x), 1)
        return self.head(self.fc(x))


def tiny_graph(model: nn.Module | None = None, depth: int | None = None) -> ModelGraph:
    return model_graph(model or Tiny(), 16, STORABLE, "head", False, depth=depth)


def ids(nodes: list[GraphNode]) -> list[str]:
    return [n.id for n in nodes]


def assert_well_formed(graph: ModelGraph) -> None:
    kinds = {n.id: n.kind for n in graph.nodes}
    assert len(kinds) == len(graph.nodes), "ids are unique"
    for a, b in graph.edges:
        assert {kinds[a], kinds[b]} == {"op", "tensor"}, (a, b)
        assert graph.node(a).x < graph.node(b).x, (a, b)
    for column in graph.frame().groupby("x"):
        ys = sorted(column[1]["y"])
        assert ys == [y - (len(ys) - 1) / 2 for y in range(len(ys))]


def test_tiny_cnn_ops_tensors_and_shapes() -> None:
    graph = tiny_graph()
    assert graph.traced and graph.note == ""
    assert_well_formed(graph)
    ops = [n for n in graph.nodes if n.kind == "op"]
    assert [n.name for n in ops] == [
        "block.0", "block.1", "block.2", "conv2", "add", "pool", "flatten", "fc.0", "fc.1", "head",
    ]  # fmt: skip
    assert [n.op_type for n in ops][:5] == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "add"]
    assert ops[0].id == "op:block.0" and ops[0].module == "block.0" and ops[0].group == "block"
    assert ops[4].module == "" and ops[4].shape is None
    tensors = {n.id: n for n in graph.nodes if n.kind == "tensor"}
    assert list(tensors) == [
        "t:input", "t:block_0", "t:block_1", "t:block_2", "t:conv2", "t:add", "t:pool",
        "t:flatten", "t:fc_0", "t:fc_1", "t:head",
    ]  # fmt: skip
    assert tensors["t:input"].shape == (3, 16, 16) and tensors["t:input"].name == "input"
    assert tensors["t:block_0"].shape == (8, 16, 16)
    assert tensors["t:pool"].shape == (8, 8, 8)
    assert tensors["t:flatten"].shape == (512,)
    assert tensors["t:head"].shape == (4,)
    assert tensors["t:add"].op_type == "add"
    # the residual: block's output feeds both conv2 and the add
    assert ("t:block_2", "op:add") in graph.edges and ("t:conv2", "op:add") in graph.edges
    assert graph.node("t:add").x > graph.node("t:conv2").x


def test_tiny_cnn_store_layers() -> None:
    graph = tiny_graph()
    labelled = {n.layer: n.id for n in graph.nodes if n.layer}
    assert labelled == {
        "block": "t:block_2",  # a non-leaf module: the last value computed inside it
        "pool": "t:pool",
        "fc.0": "t:fc_0",
        "embedding": "t:fc_1",  # the input of the final linear
        "logits": "t:head",
    }
    assert graph.tensor_for_layer("embedding") == graph.node("t:fc_1")
    assert graph.tensor_for_layer("nope") is None
    assert all(n.layer is None for n in graph.nodes if n.kind == "op")


def test_label_ties_prefer_storable_names() -> None:
    graph = model_graph(Tiny(), 16, ["fc", "fc.1"], "head", False)
    assert graph.node("t:fc_1").layer == "fc"  # first storable name wins
    assert graph.layers["fc.1"] == graph.layers["embedding"] == "t:fc_1"
    assert graph.tensor_for_layer("embedding").id == "t:fc_1"
    assert graph.layer_names("t:fc_1") == ["fc", "fc.1", "embedding"]
    # embedding as the output of the final layer coincides with logits: embedding wins
    graph = model_graph(Tiny(), 16, [], "head", True)
    assert graph.node("t:head").layer == "embedding"
    assert graph.layers["logits"] == "t:head"


def test_neighbours_and_nearest_layer() -> None:
    graph = tiny_graph()
    ups, downs = graph.neighbours("t:block_2")
    assert ids(ups) == ["t:block_1"] and ids(downs) == ["t:conv2", "t:add"]
    ups, downs = graph.neighbours("op:add")
    assert ids(ups) == ["t:block_2", "t:conv2"] and ids(downs) == ["t:add"]
    assert graph.neighbours("t:input")[0] == []
    assert graph.neighbours("t:head")[1] == []

    assert graph.nearest_layer("t:block_0").id == "t:block_2"
    assert graph.nearest_layer("t:pool").id == "t:pool"  # itself
    assert graph.nearest_layer("t:add").id == "t:pool"  # tie with block: downstream wins
    assert graph.nearest_layer("op:conv2").id == "t:block_2"
    assert graph.nearest_layer("t:add", among={"block"}).id == "t:block_2"
    assert graph.nearest_layer("t:input", among={"logits"}).id == "t:head"
    assert graph.nearest_layer("t:input", among=set()) is None


def test_frames() -> None:
    graph = tiny_graph()
    frame = graph.frame()
    assert list(frame.columns) == [
        "id", "kind", "name", "op_type", "shape", "layer", "group", "x", "y", "per_channel",
    ]  # fmt: skip
    assert len(frame) == len(graph.nodes)
    row = frame.set_index("id").loc["t:block_0"]
    assert row["shape"] == "8×16×16" and bool(row["per_channel"]) and row["layer"] == ""
    assert not frame.set_index("id").loc["op:block.0", "per_channel"]
    edges = graph.edge_frame()
    assert list(edges.columns) == ["source", "target", "x", "y", "x2", "y2"]
    assert len(edges) == len(graph.edges) and (edges["x2"] > edges["x"]).all()


def test_is_per_channel_and_shape_text() -> None:
    assert is_per_channel((64,)) and is_per_channel((64, 7, 7))
    assert not is_per_channel((197, 768)) and not is_per_channel(())
    assert not is_per_channel(None) and not is_per_channel((1, 2, 3, 4))
    assert shape_text((64, 56, 56)) == "64×56×56" and shape_text(None) == ""


def test_deterministic_and_model_untouched() -> None:
    model = Tiny().train()
    model.block[1].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first, second = tiny_graph(model), tiny_graph(model)
    assert first.nodes == second.nodes and first.edges == second.edges
    assert model.training and not model.block[1].training and model.block[0].training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_depth_collapses_blocks() -> None:
    graph = tiny_graph(depth=1)
    assert graph.traced
    assert_well_formed(graph)
    ops = [n for n in graph.nodes if n.kind == "op"]
    assert [n.id for n in ops] == [
        "op:block", "op:conv2", "op:add", "op:pool", "op:flatten", "op:fc", "op:head",
    ]  # fmt: skip
    assert ops[0].op_type == "Sequential"
    assert graph.tensor_for_layer("block").id == "t:block"
    assert graph.tensor_for_layer("block").shape == (8, 16, 16)
    assert graph.tensor_for_layer("fc.0") is None  # hidden inside the collapsed fc
    assert graph.tensor_for_layer("embedding").id == "t:fc"


def test_data_dependent_control_flow_falls_back() -> None:
    graph = tiny_graph(DataDependent())
    assert not graph.traced
    assert "could not trace" in graph.note and "skip connections" in graph.note
    assert_well_formed(graph)
    ops = [n.name for n in graph.nodes if n.kind == "op"]
    assert ops == ["block.0", "block.1", "block.2", "conv2", "pool", "fc.0", "fc.1", "head"]
    assert graph.node("t:input").shape == (3, 16, 16)
    assert graph.node("t:pool").shape == (8, 8, 8)
    assert graph.tensor_for_layer("block").id == "t:block_2"
    assert graph.tensor_for_layer("embedding").id == "t:fc_1"
    assert graph.tensor_for_layer("logits").shape == (4,)


def test_fallback_depth_and_reused_modules() -> None:
    class Reuse(DataDependent):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.block(x)
            if x.sum() > 0:
                x = self.conv2(self.conv2(x))
            return self.head(self.fc(torch.flatten(self.pool(x), 1)))

    graph = model_graph(Reuse(), 16, STORABLE, "head", False, depth=1)
    assert not graph.traced
    assert [n.id for n in graph.nodes if n.kind == "op"] == [
        "op:block", "op:conv2", "op:conv2#2", "op:pool", "op:fc", "op:head",
    ]  # fmt: skip
    assert graph.node("t:conv2_1").shape == (8, 16, 16)


def test_torchscript_falls_back() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        script = torch.jit.script(Tiny().eval())
    graph = tiny_graph(ScriptedModel(script))
    assert not graph.traced and "TorchScript" in graph.note
    assert_well_formed(graph)
    assert graph.tensor_for_layer("pool").shape == (8, 8, 8)
    assert graph.tensor_for_layer("embedding").id == "t:fc_1"
    # a bare ScriptModule accepts no hooks: the leaf modules without shapes, never an error
    bare = tiny_graph(script)
    assert not bare.traced and "without shapes" in bare.note
    assert bare.tensor_for_layer("block").shape is None
    assert len([n for n in bare.nodes if n.kind == "op"]) == 8


def test_single_layer_model() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    graph = model_graph(model, 8, [], "1", False)
    assert graph.traced
    assert [(n.kind, n.op_type) for n in graph.nodes] == [
        ("tensor", "input"), ("op", "Flatten"), ("tensor", "Flatten"),
        ("op", "Linear"), ("tensor", "Linear"),
    ]  # fmt: skip
    assert [n.layer for n in graph.nodes if n.kind == "tensor"] == [None, "embedding", "logits"]
    assert graph.tensor_for_layer("embedding").shape == (192,)
    assert [n.name for n in graph.nodes if n.kind == "op"][1] == "1"


def test_demo_model() -> None:
    graph = model_graph(
        DemoCNN(), INPUT_SIZE, ["block1", "block2", "block3", "fc1.0"], "head", False
    )
    assert graph.traced
    assert_well_formed(graph)
    assert graph.tensor_for_layer("block1").id == "t:block1_3"
    assert graph.tensor_for_layer("block1").shape == (32, 16, 16)
    assert graph.tensor_for_layer("block3").shape == (128, 4, 4)
    assert graph.tensor_for_layer("fc1.0").id == "t:fc1_0"
    assert graph.tensor_for_layer("embedding").id == "t:fc1_1"
    assert graph.tensor_for_layer("embedding").shape == (128,)
    assert graph.tensor_for_layer("logits").shape == (10,)


def test_resnet18() -> None:
    model = torchvision.models.resnet18()
    layers = ["layer1", "layer2", "layer3", "layer4"]
    graph = model_graph(model, 64, layers, "fc", False)
    assert graph.traced
    assert_well_formed(graph)
    found = {name: graph.tensor_for_layer(name) for name in layers}
    assert found["layer1"].id == "t:layer1_1_relu_1" and found["layer1"].shape == (64, 16, 16)
    assert found["layer4"].shape == (512, 2, 2)
    assert graph.tensor_for_layer("embedding").id == "t:flatten"
    assert graph.node("op:layer1.0.relu#2").module == "layer1.0.relu"  # a module run twice
    adds = [n for n in graph.nodes if n.op_type == "add" and n.kind == "op"]
    assert len(adds) == 8 and {n.group for n in adds} == set(layers)
    # the skip connections make columns two wide somewhere
    assert graph.frame().groupby("x").size().max() == 2


class Tokens(nn.Module):
    """A ViT-like head: a class token (a parameter) joins the patch tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.cls = nn.Parameter(torch.zeros(1, 1, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x)
        n = x.shape[0]
        torch._assert(x.dim() == 4, "images")
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(n, -1, -1), x], dim=1)
        return self.head(x[:, 0])


def test_size_bookkeeping_left_out_and_parameter_ops_placed_near_use() -> None:
    graph = model_graph(Tokens(), 16, ["patch"], "head", False)
    assert graph.traced
    assert_well_formed(graph)
    op_types = [n.op_type for n in graph.nodes if n.kind == "op"]
    assert op_types == ["Conv2d", "flatten", "transpose", "expand", "cat", "getitem", "Linear"]
    assert all(n.shape is not None for n in graph.nodes if n.kind == "tensor")
    assert graph.node("t:cat").shape == (17, 8) and not is_per_channel((17, 8))
    assert graph.node("op:expand").x == graph.node("op:cat").x - 2
    assert graph.tensor_for_layer("embedding").shape == (8,)
