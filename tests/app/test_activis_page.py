"""AppTest of the ActiVis page on the tiny workspace: the graph and its panels, class rows by
default, adding cohort / subset / image / predicted-class rows, sorting, stacked nodes, adding a
linear layer to the store, and the bad inputs (an empty query, a subset from another store,
more than 50 rows, a node that is not per-channel, a single-layer model)."""

from __future__ import annotations

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.methods import ActivationMatrix
from core.services.subsets import SubsetRegistry
from core.services.workspace import load_workspaces
from tests.app.conftest import REPO, write_workspaces
from tests.app.test_app import build_tiny, no_exception

PAGE = "pages/activis.py"


def key(name: str = "tiny") -> str:
    return load_workspaces().workspaces[name].key()


def open_page(at: AppTest) -> AppTest:
    at.switch_page(PAGE).run()
    no_exception(at)
    return at


def widget(items, label: str):
    found = [w for w in items if w.label == label]
    assert found, f"no widget labelled {label!r}: {[w.label for w in items]}"
    return found[0]


def rows_of(at: AppTest) -> list[dict]:
    return at.session_state[f"activis.rows:{key()}"]


def matrix_names(at: AppTest) -> list[str]:
    return widget(at.multiselect, "Matrix rows" + f" ({len(rows_of(at))} of at most 50)").value


def press(at: AppTest, label: str) -> AppTest:
    """Click a button; run again after it, since a click that ends in st.rerun() leaves AppTest a partial tree."""
    widget(at.button, label).click().run()
    no_exception(at)
    return at.run()


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


@pytest.fixture
def page(app) -> AppTest:
    build_tiny(app)
    return open_page(app)


def test_page_renders_with_one_row_per_class_and_the_embedding_open(page):
    at = page
    assert at.title[0].value == "ActiVis"
    assert [r["kind"] for r in rows_of(at)] == ["class"] * 10
    assert matrix_names(at) == [f"class {d}" for d in range(10)]
    assert at.session_state[f"activis.open:{key()}"] == ["embedding"]
    assert any("of 12 neurons" in c.value for c in at.caption)  # the tiny CNN's 12-d embedding
    assert any("t-SNE of" in c.value for c in at.caption)
    assert not errors(at)


def test_matrix_values_are_the_class_means_of_the_store(page, tmp_path):
    """The panel's matrix is S^T A of the store: each class row is the class's mean embedding."""
    from core.ui import activis_view

    at = page
    store_path = next((tmp_path / "cache").rglob("manifest.json")).parent
    from core.store.read import open_store

    store = open_store(store_path)
    meta = store.meta()
    members = [np.flatnonzero(meta["label_idx"].to_numpy() == c) for c in range(10)]
    fitted = ActivationMatrix().fit(activis_view.activations(store, "embedding", "mean"), members)
    expected = np.stack([np.asarray(store.embedding(), dtype=np.float64)[m].mean(0) for m in members])
    np.testing.assert_allclose(fitted.means_, expected, rtol=1e-5, atol=1e-6)
    assert not errors(at)


def test_adding_cohort_subset_predicted_and_image_rows(page, tmp_path):
    at = page
    widget(at.text_input, "WHERE (as on the Cohorts page)").input("label = '3'")
    widget(at.text_input, "Row name (optional)").input("threes")
    press(at, "Add the cohort row")
    no_exception(at)
    assert rows_of(at)[-1] == {"kind": "query", "value": "label = '3'", "name": "threes"}
    assert "cohort: threes" in matrix_names(at)
    # a saved subset (saved in the store's folder, as any page would)
    store_path = next((tmp_path / "cache").rglob("manifest.json")).parent
    SubsetRegistry.in_folder(store_path).add("first ten", list(range(10)), origin="manual")
    at.run()
    widget(at.selectbox, "Subset").set_value("first ten")
    press(at, "Add the subset row")
    no_exception(at)
    from core.store.read import open_store

    predicted = int(open_store(store_path).meta()["pred_idx"].mode()[0])  # a class the tiny model predicts
    widget(at.selectbox, "Predicted class").set_value(predicted)
    press(at, "Add the predicted-class row")
    widget(at.number_input, "Image (store row)").set_value(7)
    press(at, "Add the image row")
    no_exception(at)
    names = matrix_names(at)
    assert names[-3:] == ["subset: first ten", f"predicted {predicted}", "image #7"]
    assert not errors(at)
    # the matrix caption lists each row's size: the subset has 10 images, the image 1
    assert any("subset: first ten (10)" in c.value and "image #7 (1)" in c.value for c in at.caption)
    # removing a row from the list removes it from the matrix
    widget(at.multiselect, f"Matrix rows ({len(names)} of at most 50)").unselect(f"predicted {predicted}").run()
    assert f"predicted {predicted}" not in matrix_names(at)


def test_an_instance_click_adds_and_a_second_click_removes(page):
    """A click on a square of the instance panel toggles the image as a matrix row."""
    at = page
    chart = f"activis.instances:{key()}"
    at.session_state[chart] = {"selection": {"square": [{"row": 12}]}}
    at.run()
    no_exception(at)
    assert rows_of(at)[-1] == {"kind": "instance", "value": 12}
    at.session_state[chart] = {"selection": {"square": []}}  # the same square clicked again
    at.run()
    assert all(r["kind"] != "instance" for r in rows_of(at))


def test_a_box_on_the_projection_is_saved_as_a_subset(page, tmp_path):
    at = page
    at.session_state[f"activis.projection_chart:{key()}:embedding"] = {
        "selection": {"box": {"x": [-1e9, 1e9], "y": [-1e9, 1e9]}, "point": []}}
    at.run()
    no_exception(at)
    assert any("200 images in the box" in m.value for m in at.markdown)  # every projected image (200 in all)
    widget(at.text_input, "Subset name").input("all projected")
    widget(at.button, "Save as subset").click().run()
    no_exception(at)
    store_path = next((tmp_path / "cache").rglob("manifest.json")).parent
    saved = SubsetRegistry.in_folder(store_path).get("all projected")
    assert len(saved) == 200 and saved.origin == "activis"


def test_sorting_by_a_row_and_stacked_nodes(page):
    at = page
    widget(at.selectbox, "Sort neurons by").set_value("class 2").run()
    no_exception(at)
    assert not errors(at)
    # open a second node below the first: the stored block2, then the tiny CNN's hidden linear layer
    widget(at.multiselect, "Open panels (or click the graph's tensors)").select("block2").run()
    no_exception(at)
    assert at.session_state[f"activis.open:{key()}"] == ["embedding", "block2"]
    assert any("of 16 neurons" in c.value for c in at.caption)  # block2 has 16 channels
    assert len([r for r in at.radio if r.label == "Pool over space"]) == 1  # block2 pools, the embedding does not
    widget(at.radio, "Pool over space").set_value("max").run()
    no_exception(at)
    assert not errors(at)


def test_a_storable_linear_layer_is_added_from_its_panel(page):
    at = page
    widget(at.multiselect, "Open panels (or click the graph's tensors)").select("fc1").run()
    assert any("`fc1` is not in the store yet" in i.value for i in at.info)
    press(at, "Add `fc1` to the store")
    no_exception(at)
    at.run()
    no_exception(at)
    assert not any("not in the store yet" in i.value for i in at.info)
    assert any("of 12 neurons" in c.value for c in at.caption)  # fc1's 12 outputs, now a matrix


def test_an_empty_query_and_a_broken_query_are_refused(page):
    at = page
    widget(at.text_input, "WHERE (as on the Cohorts page)").input("label = 'no such class'")
    widget(at.button, "Add the cohort row").click().run()
    no_exception(at)
    assert any("has no images" in e for e in errors(at))
    assert all(r["kind"] == "class" for r in rows_of(at))
    widget(at.text_input, "WHERE (as on the Cohorts page)").input("label = ")
    widget(at.button, "Add the cohort row").click().run()
    no_exception(at)
    assert any("was not added" in e for e in errors(at))


def test_a_subset_from_another_store_is_named_and_left_out(page, tmp_path):
    at = page
    store_path = next((tmp_path / "cache").rglob("manifest.json")).parent
    registry = SubsetRegistry.in_folder(store_path)
    registry.add("ok", [1, 2, 3], origin="manual")
    at.run()
    widget(at.selectbox, "Subset").set_value("ok")
    press(at, "Add the subset row")
    # the file now says the subset holds rows this store does not have (saved for a bigger store)
    registry.remove("ok")
    registry.add("ok", [1, 5000], origin="manual")
    at.run()
    no_exception(at)
    assert any("is damaged (row 5000 is beyond the store's 200 images)" in w.value and "saved for another workspace" in w.value
               for w in at.warning)
    assert "subset: ok" in matrix_names(at)  # still listed, so it can be removed
    assert not errors(at)


def test_more_than_fifty_rows_are_refused_with_the_count(page):
    at = page
    at.session_state[f"activis.rows:{key()}"] = [{"kind": "instance", "value": i} for i in range(50)]
    at.run()
    widget(at.number_input, "Image (store row)").set_value(60)
    widget(at.button, "Add the image row").click().run()
    no_exception(at)
    assert any("51 rows" in e and "at most 50" in e for e in errors(at))
    assert len(rows_of(at)) == 50


def test_a_node_that_is_not_per_channel_or_inside_a_block_offers_the_nearest(page):
    at = page
    widget(at.segmented_control, "Detail").set_value("Every operator").run()
    no_exception(at)
    graph_key = f"activis.graph_chart:{key()}:Every operator"
    at.session_state[graph_key] = {"selection": {"node": [{"id": "t:block1_0"}]}}  # the first conv's output
    at.run()
    no_exception(at)
    assert any("inside a block" in w.value for w in at.warning)
    press(at, "Open the nearest node that has a panel: `block1`")
    no_exception(at)
    assert "block1" in at.session_state[f"activis.open:{key()}"]


def test_a_single_layer_model(tmp_path, tiny_files, monkeypatch):
    """A model that is one linear layer: the graph, the embedding (the flattened pixels) and logits panels work."""
    extra = (
        '\n[workspace.flat]\ntitle = "One layer"\n'
        'model = { kind = "entrypoint", entrypoint = "tests.support:make_single_linear", input_size = 16, '
        "mean = [0.5, 0.5, 0.5], std = [0.5, 0.5, 0.5] }\n"
        f'dataset = {{ kind = "csv", csv = "{tiny_files / "manifest.csv"}" }}\n'
    )
    monkeypatch.setenv("BIASLENS_WORKSPACES", str(write_workspaces(tmp_path, tiny_files, extra)))
    monkeypatch.setenv("BIASLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(REPO)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=240)
    build_tiny(at, "flat")
    open_page(at)
    # the embedding is the linear layer's input, the 768 flattened pixels: a wide layer shows its top 200
    assert any("200 of 768 neurons (the top 200 by the sorting row)" in c.value for c in at.caption)
    widget(at.radio, "Top neurons by").set_value("variance").run()
    assert any("200 of 768 neurons (the top 200 by variance across rows)" in c.value for c in at.caption)
    widget(at.multiselect, "Open panels (or click the graph's tensors)").select("logits").run()
    no_exception(at)
    assert any("of 10 neurons" in c.value for c in at.caption)
    assert not errors(at)


def test_hosted_torchscript_model_draws_its_module_tree_and_says_how_to_add_a_layer(tmp_path, tiny_files, monkeypatch):
    """TorchScript cannot be traced by torch.fx: the page draws the module tree with a note; a
    hosted visitor cannot extend the store and is told the command the server's owner runs."""
    from core.__main__ import main
    from tests.app.test_hosted import _app, _scripted_workspace

    workspaces = _scripted_workspace(tmp_path, tiny_files)
    monkeypatch.setenv("BIASLENS_CACHE", str(tmp_path / "cache"))
    assert main(["--file", str(workspaces), "build", "scripted", "--layers", "block1"]) == 0
    at = _app(monkeypatch, tmp_path, workspaces, "1")
    at.session_state["app.workspace"] = "scripted"
    at.run()
    open_page(at)
    assert any("module tree" in i.value for i in at.info)
    widget(at.multiselect, "Open panels (or click the graph's tensors)").select("block2").run()
    no_exception(at)
    assert any("`block2` is not in this server's store" in i.value for i in at.info)
    assert "python -m core" not in " ".join(i.value for i in at.info)  # no operator commands for visitors
    assert not [b for b in at.button if b.label.startswith("Add `")]
    assert not errors(at)
