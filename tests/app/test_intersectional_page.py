"""AppTest of the Intersectional page: groups of two attributes with their counts, probes per
layer with the errors table, NAP maps with unions, a difference map, the similarity matrix, a
picked channel, and the bad inputs (no attribute columns, too few groups)."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from core.errors import DataError
from core.services.workspace import load_workspaces
from core.ui import intersectional_view as view
from core.ui.method_page import KEPT_CAPTION
from tests.app.conftest import REPO, write_workspaces
from tests.app.test_app import build_tiny, no_exception
from tests.support import digits_arrays, failing_switch

PAGE = "pages/intersectional.py"


@pytest.fixture
def app2(tmp_path, tiny_files, monkeypatch) -> AppTest:
    """The tiny workspaces plus "inter": the same digits with two attributes, tint and parity."""
    _, labels, attributes = digits_arrays(200)
    lines = ["path,label,tint,parity"] + [
        f"images/{label}/{i:04d}.png,{label},{attributes.loc[i, 'tint']},{attributes.loc[i, 'parity']}"
        for i, label in enumerate(labels)
    ]
    (tiny_files / "inter.csv").write_text("\n".join(lines) + "\n")
    model = '{ kind = "entrypoint", entrypoint = "tests.support:make_tiny_cnn", input_size = 16, mean = [0.5, 0.5, 0.5], std = [0.5, 0.5, 0.5] }'
    extra = f'\n[workspace.inter]\ntitle = "Two attributes"\nmodel = {model}\ndataset = {{ kind = "csv", csv = "{tiny_files / "inter.csv"}" }}\n'
    monkeypatch.setenv("BIASLENS_WORKSPACES", str(write_workspaces(tmp_path, tiny_files, extra)))
    monkeypatch.setenv("BIASLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(REPO)
    return AppTest.from_file(str(REPO / "app.py"), default_timeout=240)


def key(name: str) -> str:
    return load_workspaces().workspaces[name].key()


def open_page(at: AppTest) -> AppTest:
    at.switch_page(PAGE).run()
    no_exception(at)
    assert at.title[0].value == "Intersectional"
    return at


def test_groups_probes_maps_and_a_channel(app2):
    at = open_page(build_tiny(app2, "inter"))
    assert not at.error, [e.value for e in at.error]
    assert at.multiselect(key=f"intersectional.columns:{key('inter')}").value == ["tint", "parity"]
    assert any("4 groups over 200 images" in c.value for c in at.caption)
    # probes: two seeds, a few epochs
    at.number_input(key="intersectional.n_seeds").set_value(2)
    at.number_input(key="intersectional.epochs").set_value(5)
    [b for b in at.button if b.label == "Train the probes"][0].click().run()
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    errors = next(d.value for d in at.dataframe if "differs" in d.value.columns)
    assert len(errors) >= 1
    heads = [m.value for m in at.markdown]
    assert any(h.startswith("**Most frequent errors**") for h in heads)
    # NAP maps: 4 groups and their unions (2 rows + 2 columns), then the difference map
    captions = [c for im in at.image for c in im.captions]
    assert sum(c.startswith("n=") for c in captions) == 4
    assert captions.count("union") == 4
    at.selectbox(key="intersectional.compare_b").set_value(at.selectbox(key="intersectional.compare_b").options[-1]).run()
    no_exception(at)
    assert any(" − " in c for im in at.image for c in im.captions)
    # a picked channel shows the images that activate it most
    layer = at.selectbox(key=f"intersectional.nap_layer:{key('inter')}").value
    at.session_state[f"intersectional.channel_pick:{key('inter')}:{layer}"] = {"selection": {"channel": [{"channel": 3}]}}
    at.run()
    no_exception(at)
    assert any(m.value.startswith(f"**Channel 3 of `{layer}`**") for m in at.markdown)
    assert any(m.value.startswith("**Concept patches**") for m in at.markdown)  # as on the Subgroups page
    assert not at.error and not at.warning


def test_a_failed_probe_run_keeps_the_last_good_probes_on_screen(app2, monkeypatch):
    """A run that fails (a BiasLensError) shows why; the last probes that trained stay below it
    under a caption saying so. Before any good run there is only the error, and the NAP maps below
    still work."""
    failing = failing_switch(monkeypatch, view, "probes_for", DataError("The disk is full: free some space."), on=True)
    at = open_page(build_tiny(app2, "inter"))
    at.number_input(key="intersectional.n_seeds").set_value(2)
    at.number_input(key="intersectional.epochs").set_value(5)
    train(at)
    assert [e.value for e in at.error] == ["The probes cannot be trained: The disk is full: free some space."]
    assert KEPT_CAPTION not in [c.value for c in at.caption] and not errors_table(at)  # nothing earlier to keep
    assert sum(c.startswith("n=") for im in at.image for c in im.captions) == 4  # the NAP maps below still drawn

    failing["on"] = False
    train(at)
    assert not at.error and KEPT_CAPTION not in [c.value for c in at.caption]
    good = errors_table(at)
    assert good is not None and len(good) >= 1

    failing["on"] = True
    at.number_input(key="intersectional.epochs").set_value(6)
    train(at)
    assert [e.value for e in at.error] == ["The probes cannot be trained: The disk is full: free some space."]
    assert KEPT_CAPTION in [c.value for c in at.caption]  # labelled as the last good run ...
    kept = errors_table(at)
    assert kept is not None and kept.equals(good)  # ... and it is: the 5-epoch probes
    assert at.number_input(key="intersectional.epochs").value == 6  # the settings stay as typed


def train(at: AppTest) -> None:
    [b for b in at.button if b.label == "Train the probes"][0].click().run()
    no_exception(at)


def errors_table(at: AppTest):
    """The probes' "most frequent errors" table, or None when no probes are shown."""
    return next((d.value for d in at.dataframe if "differs" in d.value.columns), None)


def test_no_attribute_columns_says_which_datasets_have_them(app):
    at = build_tiny(app, "folder")
    open_page(at)
    assert any("no attribute columns" in i.value for i in at.info)


def test_too_few_groups_is_an_error_not_a_traceback(app2):
    at = open_page(build_tiny(app2, "inter"))
    at.number_input(key="intersectional.min_size").set_value(5000).run()
    no_exception(at)
    assert at.error and "cannot be built" in at.error[0].value


@pytest.mark.slow
def test_three_variables_on_the_demo(demo_app):
    at = demo_app.run()  # the demo's store (built on first open, shared by the session)
    no_exception(at)
    demo = load_workspaces().workspaces["demo"].key()
    at.session_state[f"intersectional.columns:{demo}:kept"] = ["tint", "brightness", "marker"]
    open_page(at)
    assert not at.error, [e.value for e in at.error]
    groups = next(c.value for c in at.caption if "groups over" in c.value)
    assert groups.startswith("72 groups over 10,000 images")  # 6 tints x 3 brightness levels x 4 markers
    # one panel per marker, each a tint x brightness grid with its unions as margins
    assert len(at.tabs) >= 3 + 4  # the counts tabs, then the four marker panels
    captions = [c for im in at.image for c in im.captions]
    assert sum(c.startswith("n=") for c in captions) == 72
    assert captions.count("union") == 4 * (6 + 3)
    assert any(" − " in c for c in captions)  # the difference map


def test_the_default_subsets_never_overlap(app, tmp_path):
    """The page used to open on the first two saved subsets and, when they shared images,
    on an error the user had not caused. The default now skips a subset that overlaps those
    already chosen. Overlapping subsets the user picks are still a clear error."""
    from core.services.subsets import SubsetRegistry

    at = build_tiny(app, "folder")
    registry = SubsetRegistry.in_folder(next((tmp_path / "cache").rglob("manifest.json")).parent)
    registry.add("first twenty", list(range(20)), origin="manual")
    registry.add("overlapping", list(range(10, 40)), origin="manual")
    registry.add("later twenty", list(range(100, 120)), origin="manual")
    open_page(at)
    assert not at.error, [e.value for e in at.error]
    assert at.multiselect(key=f"intersectional.subsets:{key('folder')}").value == ["first twenty", "later twenty"]
    assert any("2 groups over 40 images" in c.value for c in at.caption)
    at.multiselect(key=f"intersectional.subsets:{key('folder')}").set_value(["first twenty", "overlapping"]).run()
    no_exception(at)
    assert at.error and "more than one of the chosen subsets" in at.error[0].value  # the user's own choice: a clear error
