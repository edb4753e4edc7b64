"""AppTest of workshop mode on the demo: the ground truth hidden everywhere until the
instructor reveals it (for every session), a wrong passphrase refused, "Check my finding"."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from core.services.server import SERVER
from tests.app.conftest import REPO
from tests.app.test_app import no_exception

PASSPHRASE = "tulip-42"
# What a student must not see while the truth is hidden: slice names, ground-truth columns,
# the slices' definitions and descriptions.
SECRETS = ("marked_sandals", "dark_pullovers", "striped_trousers", "green_coats", "slice_", "Sandals with the white corner",
           "\"marker\" = 'square'", "best group")


@pytest.fixture
def workshop_app(tmp_path, monkeypatch):
    monkeypatch.setenv("BIASLENS_WORKSPACES", str(tmp_path / "none.toml"))
    monkeypatch.setenv("BIASLENS_WORKSHOP", "1")
    monkeypatch.setenv("BIASLENS_INSTRUCTOR_PASSPHRASE", PASSPHRASE)
    monkeypatch.chdir(REPO)
    return lambda: AppTest.from_file(str(REPO / "app.py"), default_timeout=300)


def all_text(at: AppTest) -> str:
    """Every element's protobuf as text (markdown, tables' Arrow bytes, chart specs...)."""
    parts: list[str] = []

    def walk(node) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None:
            parts.append(str(proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return "\n".join(parts)


def assert_hidden(at: AppTest) -> None:
    text = all_text(at)
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, leaked


def unlock(at: AppTest, passphrase: str) -> AppTest:
    at.text_input(key="workshop.passphrase").input(passphrase)
    [b for b in at.button if b.label == "Unlock"][0].click().run()
    no_exception(at)
    return at


def saved_subsets(at: AppTest) -> list[str]:
    """The names of the subsets this session's visitor keeps on the server (any workspace)."""
    data = SERVER.visitors.get(at.session_state["app.visitor"]).data
    return sorted(name for key, subsets in data.items() if key.startswith("subsets:") for name in subsets)


def checked(at: AppTest) -> bool:
    """Whether a finding was checked on some workspace in this session."""
    return any(str(k).startswith("workshop.check:") and at.session_state[k] is not None for k in at.session_state)


def click(at: AppTest, label: str) -> AppTest:
    [b for b in at.button if b.label == label][0].click().run()
    no_exception(at)
    return at.run()


@pytest.mark.slow
def test_hidden_reveal_and_check(workshop_app):
    at = workshop_app().run()  # Overview (builds the demo store on first open)
    no_exception(at)
    assert any("hidden during the workshop" in i.value for i in at.info)
    assert any("Workshop steps (1 of 6 done)" in e.label for e in at.sidebar.expander)
    assert_hidden(at)

    # Cohorts: no slice_ column to list or to filter on
    at.switch_page("pages/cohorts.py").run()
    no_exception(at)
    assert_hidden(at)
    next(t for t in at.text_input if t.label == "WHERE").input("slice_marked_sandals").run()
    no_exception(at)
    assert at.error and "not found" in at.error[0].value  # the column does not exist for a student
    assert "dark_pullovers" not in all_text(at)  # and DuckDB's suggestions name no other slice
    # a cohort saved as a subset (kept in the student's own record on the server in workshop mode)
    next(t for t in at.text_input if t.label == "WHERE").input("label = 'Sandal' AND marker = 'square'").run()
    next(t for t in at.text_input if t.label == "Subset name").input("my sandals")
    click(at, "Save as subset")
    assert saved_subsets(at) == ["my sandals"]

    # Spotlight: the scorecard is replaced by a notice
    at.switch_page("pages/spotlight.py").run()
    at.number_input[1].set_value(1)
    at.number_input[2].set_value(100)
    click(at, "Run")
    assert any("scorecard" in i.value.lower() and "hidden" in i.value for i in at.info)
    assert_hidden(at)

    # Check my finding: a filter that finds marked sandals names the slice; one that does not keeps it hidden
    at.switch_page("pages/workshop.py").run()
    no_exception(at)
    at.radio(key="workshop.source").set_value("A WHERE filter").run()
    at.text_input(key="workshop.where").input("label = 'Pullover'")
    click(at, "Check")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Matches a planted slice"] == "no" and metrics["Slice"] == "(hidden until identified)"
    assert any("A random subset of the same size" in c.value for c in at.caption)
    assert_hidden(at)
    at.radio(key="workshop.source").set_value("A saved subset").run()
    at.selectbox(key="workshop.subset").set_value("my sandals")
    click(at, "Check")
    assert "subset 'my sandals' (249 images)" in " ".join(m.value for m in at.markdown)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Matches a planted slice"] == "yes" and metrics["Slice"] == "marked_sandals"
    assert metrics["Recall"] == "100.0%"
    assert "dark_pullovers" not in all_text(at) and "striped_trousers" not in all_text(at)
    assert checked(at)  # step 6 done

    # AppTest (streamlit 1.67) drops sidebar elements after an app's first run under
    # st.navigation (see test_app.py), so each instructor action is a new session's first run.
    # A wrong passphrase is refused and reveals nothing.
    for wrong in ("tulip-43", "TULIP-42", ""):
        intruder = unlock(workshop_app().run(), wrong)
        assert "workshop.unlocked" not in intruder.session_state
        assert [e.value for e in intruder.sidebar.error] == ["Wrong passphrase."]
        assert not [b for b in intruder.button if b.label == "Reveal the ground truth"]
        assert intruder.session_state["workshop.passphrase"] == ""  # the typed text is not kept
    assert_hidden(workshop_app().run())  # a new student's Overview
    # The right one unlocks this session only.
    teacher = unlock(workshop_app().run(), PASSPHRASE)
    token = teacher.session_state["workshop.unlocked"]
    assert PASSPHRASE not in token and not teacher.sidebar.error
    assert [b for b in teacher.button if b.label == "Reveal the ground truth"]

    def instructor() -> AppTest:
        session = workshop_app()
        session.session_state["workshop.unlocked"] = token
        return session.run()

    # Reveal shows the slices to every session of the server, the student's included.
    assert "marked_sandals" in all_text(click(instructor(), "Reveal the ground truth"))
    at.switch_page("pages/overview.py").run()
    assert "marked_sandals" in all_text(at) and not any("hidden during" in i.value for i in at.info)
    assert not [b for b in at.button if b.label == "Hide the ground truth"]  # the student is not unlocked
    # Hide again: hidden for everyone.
    click(instructor(), "Hide the ground truth")
    assert_hidden(at.run())
    # Reset: hidden, and the student's workshop progress is forgotten on their next rerun.
    click(instructor(), "Reveal the ground truth")
    resetter = instructor()
    resetter.checkbox(key="workshop.reset_subsets").check().run()
    click(resetter, "Reset the workshop")
    at.run()
    assert_hidden(at)
    assert not checked(at)
    assert saved_subsets(at) == []  # deleted
    assert PASSPHRASE not in all_text(at)


def test_the_instructor_switches_workshop_mode_for_everyone(tmp_path, monkeypatch):
    settings = tmp_path / "workspaces.toml"
    settings.write_text(f'[settings]\nworkshop = false\ninstructor_passphrase = "{PASSPHRASE}"\n')
    monkeypatch.setenv("BIASLENS_WORKSPACES", str(settings))
    monkeypatch.delenv("BIASLENS_WORKSHOP", raising=False)
    monkeypatch.delenv("BIASLENS_INSTRUCTOR_PASSPHRASE", raising=False)
    monkeypatch.chdir(REPO)
    student = AppTest.from_file(str(REPO / "app.py"), default_timeout=300).run()
    no_exception(student)
    assert "marked_sandals" in all_text(student)  # workshop mode off: the slices are shown
    assert not any("Workshop steps" in e.label for e in student.sidebar.expander)
    teacher = unlock(AppTest.from_file(str(REPO / "app.py"), default_timeout=300).run(), PASSPHRASE)
    teacher.toggle(key="workshop.mode_toggle").set_value(True).run()
    no_exception(teacher)
    assert_hidden(student.run())  # on for every session at once
    assert any("Workshop steps" in e.label for e in student.sidebar.expander)


def test_no_workshop_controls_without_the_mode(demo_app):
    at = demo_app.run()
    no_exception(at)
    assert not [e for e in at.sidebar.expander if "Workshop" in e.label or e.label == "Instructor"]
    assert "pages/workshop.py" not in all_text(at)


def test_a_checked_finding_stays_with_its_workspace(tmp_path, monkeypatch):
    """A finding checked on one workspace was shown, and scored against a baseline, on the
    next one: a crash when the next was smaller ("A baseline needs a size between 1 and 200"),
    another workspace's result when larger. Found by a hostile-input sweep."""
    from core.data.sources import build_dataset
    from core.models.loading import load_model
    from core.services.workspace import load_workspaces
    from core.store.build import build_store

    settings = tmp_path / "workspaces.toml"
    settings.write_text("".join(
        f'[workspace.demo{n}]\nmodel = {{ kind = "demo" }}\ndataset = {{ kind = "demo", limit = {n} }}\n\n' for n in (300, 200)))
    monkeypatch.setenv("BIASLENS_WORKSPACES", str(settings))
    monkeypatch.setenv("BIASLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BIASLENS_WORKSHOP", "1")
    monkeypatch.setenv("BIASLENS_INSTRUCTOR_PASSPHRASE", PASSPHRASE)
    monkeypatch.chdir(REPO)
    for name in ("demo300", "demo200"):
        ws = load_workspaces().workspaces[name]
        build_store(name, load_model(ws.model, "cpu"), build_dataset(ws.dataset), [], root=tmp_path / "cache")
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=300)
    at.session_state["app.workspace"] = "demo300"
    at.switch_page("pages/workshop.py").run()
    no_exception(at)
    at.radio(key="workshop.source").set_value("A WHERE filter").run()
    at.text_input(key="workshop.where").input("label = 'Sandal'")
    click(at, "Check")
    assert "filter `label = 'Sandal'`" in " ".join(m.value for m in at.markdown)
    at.session_state["app.workspace"] = "demo200"
    at.run()
    no_exception(at)
    assert not any("Your finding" in m.value for m in at.markdown)
    assert [t.value for t in at.title] == ["Workshop"]
    at.session_state["app.workspace"] = "demo300"
    at.run()
    no_exception(at)
    assert any("Your finding" in m.value and "label = 'Sandal'" in m.value for m in at.markdown)
