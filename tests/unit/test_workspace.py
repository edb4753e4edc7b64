"""The workspace file: valid entries load, every problem is reported, the demo stays."""

from pathlib import Path

from core.services.workspace import CONTROL_NAME, CONTROL_WEIGHTS, DEMO_NAME, load_workspaces

BUILTIN = [DEMO_NAME, CONTROL_NAME]  # always present, in this order


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "workspaces.toml"
    path.write_text(text)
    return path


def test_missing_file_gives_demo_only(tmp_path):
    listing = load_workspaces(tmp_path / "none.toml")
    assert list(listing.workspaces) == BUILTIN and not listing.problems


def test_the_control_workspace_is_the_demo_data_with_the_control_weights(tmp_path):
    listing = load_workspaces(tmp_path / "none.toml")
    demo, control = listing.workspaces[DEMO_NAME], listing.workspaces[CONTROL_NAME]
    assert control.dataset == demo.dataset and control.is_demo
    assert control.model.kind == "demo" and control.model.weights == str(CONTROL_WEIGHTS)
    assert CONTROL_WEIGHTS.is_file() and CONTROL_WEIGHTS.with_suffix(".json").is_file()  # committed beside the demo's
    assert control.key() != demo.key()


def test_valid_entry_and_relative_paths(tmp_path):
    path = write(
        tmp_path,
        """
[workspace.mine]
title = "Mine"
batch_size = 16
model = { kind = "torchvision", arch = "resnet18", weights = "w/rn.pt", num_classes = 3 }
dataset = { kind = "imagefolder", root = "images" }
""",
    )
    listing = load_workspaces(path)
    assert not listing.problems
    ws = listing.workspaces["mine"]
    assert ws.title == "Mine" and ws.batch_size == 16
    assert ws.model.weights == str(tmp_path / "w/rn.pt")
    assert ws.dataset.root == str(tmp_path / "images")
    assert list(listing.workspaces)[0] == DEMO_NAME
    assert ws.key() != listing.workspaces[DEMO_NAME].key()


def test_invalid_toml_keeps_demo(tmp_path):
    listing = load_workspaces(write(tmp_path, "[workspace.x\nkind = 1"))
    assert list(listing.workspaces) == BUILTIN
    assert "not valid TOML" in listing.problems[0]


def test_bad_entries_reported_by_name(tmp_path):
    path = write(
        tmp_path,
        """
[workspace.typo]
model = { kind = "torchvision", arh = "resnet18" }
dataset = { kind = "imagefolder", root = "x" }

[workspace.nodata]
model = { kind = "demo" }

[workspace.badbatch]
batch_size = 0
model = { kind = "demo" }
dataset = { kind = "demo" }

[workspace.demo]
model = { kind = "demo" }
dataset = { kind = "demo" }

[workspace.demo-control]
model = { kind = "demo" }
dataset = { kind = "demo" }

[workspace.ok]
model = { kind = "demo" }
dataset = { kind = "demo", split = "train" }
""",
    )
    listing = load_workspaces(path)
    text = "\n".join(listing.problems)
    assert "arh" in text and "[workspace.typo]" in text
    assert "[workspace.nodata] dataset: this key is required" in text
    assert "batch_size" in text
    assert "'demo' is reserved" in text and "'demo-control' is reserved" in text
    assert set(listing.workspaces) == {DEMO_NAME, CONTROL_NAME, "ok"}


def test_hosted_mode_refuses_entry_points(tmp_path, monkeypatch):
    monkeypatch.setenv("BIASLENS_HOSTED", "1")
    path = write(
        tmp_path,
        """
[workspace.code]
model = { kind = "entrypoint", entrypoint = "mypkg:make" }
dataset = { kind = "demo" }
""",
    )
    listing = load_workspaces(path)
    assert listing.hosted
    assert "code" not in listing.workspaces and "hosted" in listing.problems[0]
