"""AppTest of the "why" views on the tiny workspace: the Filter saliency page's occlusion and
counterfactual check for the picked image (a light run) and for a group of errors (a heavy
run, then cached; a saved subset's errors only), and the occlusion part of the image-details dialog."""

from __future__ import annotations

import pandas as pd

from core.services.subsets import SubsetRegistry
from tests.app.test_app import no_exception
from tests.app.test_saliency_page import built, images, texts  # noqa: F401  (built: a fixture)

IMAGE_BUTTON = "Occlusion and counterfactual check of this image"
GROUP_RUN = "saliency.why_group_run"


def test_image_check_shows_both_maps_the_regions_and_the_table(built):  # noqa: F811
    at = built
    assert "Why: occlusion and counterfactual check" in [s.value for s in at.subheader]
    assert "window 2 px, stride 2 px on the 16 px input (8 x 8 places)" in texts(at)  # the grid, shown before the run
    next(b for b in at.button if b.label == IMAGE_BUTTON).click().run()
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    assert not [b for b in at.button if b.label == IMAGE_BUTTON]  # the button goes once it has run
    captions = images(at)
    assert any(c.startswith("Occlusion, predicted: ") for c in captions)
    assert any(c.startswith("Occlusion, true: ") for c in captions)
    for name in ("occlusion", "input-space saliency", "Grad-CAM", "plain gradient"):
        assert any(c.startswith(f"{name}: ") and c.split(": ")[1] in ("corrected", "still wrong") for c in captions), name
    table = next(d.value for d in at.dataframe if "region hidden" in d.value.columns)
    assert table["region hidden"].tolist() == ["top of occlusion", "top of input-space saliency", "top of Grad-CAM",
                                               "top of plain gradient", "random (same area)"]
    assert (table["errors"] == 1).all()
    at.run()  # cached: no button, the same figures
    assert not [b for b in at.button if b.label == IMAGE_BUTTON]
    assert any(c.startswith("Occlusion, predicted: ") for c in images(at))


def test_group_check_runs_once_with_its_expected_time(built):  # noqa: F811
    at = built
    at.number_input(key="saliency.why_cap").set_value(5).run()
    no_exception(at)
    assert "Expected: about" in texts(at)
    button = next(b for b in at.button if b.key == GROUP_RUN)
    assert button.label == "Check 5 errors"
    button.click().run()
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    assert not [b for b in at.button if b.key == GROUP_RUN]
    assert any(c == "Mean occlusion, predicted class, over 5 errors" for c in images(at))
    assert "aligned as the dataset gives them" in texts(at)
    table = next(d.value for d in at.dataframe if "region hidden" in d.value.columns)
    assert (table["errors"] == 5).all() and all("%" in v for v in table["corrected"])
    at.run()
    assert not [b for b in at.button if b.key == GROUP_RUN]  # computed once, shown from the cache
    assert any(c == "Mean occlusion, predicted class, over 5 errors" for c in images(at))


def test_details_dialog_computes_occlusion_on_its_button(built):  # noqa: F811
    at = built
    picker = next(s for s in at.selectbox if (s.key or "").startswith("detail.pick:"))
    picker.select_index(0).run()
    no_exception(at)
    assert any(m.value.startswith("**Occlusion**") for m in at.markdown)
    button = next(b for b in at.button if (b.key or "").startswith("detail.occlusion:"))
    button.click().run()
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    captions = images(at)
    assert any(c.startswith("Occlusion, predicted: ") for c in captions)
    assert any(c.startswith("Occlusion, true: ") for c in captions)
    assert "Grid: window 2 px, stride 2 px" in texts(at)


def test_a_saved_subset_gives_the_group_its_errors_only(built, tmp_path):  # noqa: F811
    at = built
    store_path = next((tmp_path / "cache").rglob("manifest.json")).parent
    meta = pd.read_parquet(store_path / "meta.parquet")
    wrong = meta.loc[~meta["correct"], "row"].to_numpy()[:3]
    right = meta.loc[meta["correct"], "row"].to_numpy()[:4]
    SubsetRegistry.in_folder(store_path).add("three errors", [*map(int, wrong), *map(int, right)], origin="manual")
    at.run()
    group = next(s for s in at.selectbox if (s.key or "").startswith("saliency.why_group:"))
    assert group.options == ["All misclassified images", "three errors"]
    group.set_value("three errors").run()
    no_exception(at)
    button = next(b for b in at.button if b.key == GROUP_RUN)
    assert button.label == "Check 3 errors"  # the 4 correct images are left out
    button.click().run()
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    assert any(c == "Mean occlusion, true class, over 3 errors" for c in images(at))
    assert "Mean image of the 3 errors" in images(at)
