"""Dataset sources and image reading: odd images load as RGB, bad input gives clear errors."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.data.celeba import CelebADataset
from core.data.folders import ImageFolderDataset
from core.data.images import is_probably_image, load_rgb
from core.data.manifest import CsvManifestDataset
from core.data.sources import ArrayDataset, DatasetSpec, build_dataset, limit_dataset
from core.errors import DataError


def save(path: Path, im: Image.Image, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format=fmt)
    return path


def rgb(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (8, 6)) -> Image.Image:
    return Image.new("RGB", size, color)


def make_folder(root: Path, per_class: dict[str, int]) -> Path:
    """An ImageFolder tree with ``per_class[name]`` small PNGs in each class folder."""
    for k, (name, n) in enumerate(per_class.items()):
        for i in range(n):
            save(root / name / f"{i:03d}.png", rgb((40 * k, 10 * i, 100)))
    return root


# ---------------------------------------------------------------- load_rgb


def test_grayscale_and_one_bit_become_gray_rgb(tmp_path: Path) -> None:
    gray = load_rgb(save(tmp_path / "g.png", Image.new("L", (5, 4), 77)))
    assert gray.mode == "RGB" and gray.size == (5, 4)
    assert gray.getpixel((0, 0)) == (77, 77, 77)
    bits = load_rgb(save(tmp_path / "b.png", Image.new("1", (3, 3), 1)))
    assert bits.mode == "RGB" and bits.getpixel((1, 1)) == (255, 255, 255)


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    im = Image.new("RGBA", (3, 1))
    im.putpixel((0, 0), (255, 0, 0, 255))  # opaque red
    im.putpixel((1, 0), (0, 0, 255, 0))  # fully transparent
    im.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black
    out = load_rgb(save(tmp_path / "a.png", im))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 0, 0)
    assert out.getpixel((1, 0)) == (255, 255, 255)
    assert all(120 <= c <= 135 for c in out.getpixel((2, 0)))


def test_gray_alpha_and_palette_with_transparency(tmp_path: Path) -> None:
    la = Image.new("LA", (2, 2), (0, 0))
    assert load_rgb(save(tmp_path / "la.png", la)).getpixel((0, 0)) == (255, 255, 255)

    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 128, 0] + [255, 0, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 1  # palette index 1 (red) is transparent
    out = load_rgb(save(tmp_path / "p.png", pal))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (0, 128, 0)
    assert out.getpixel((1, 0)) == (255, 255, 255)


def test_sixteen_bit_range_is_stretched_not_clipped(tmp_path: Path) -> None:
    values = np.linspace(0, 4000, 17 * 31).reshape(31, 17).astype(np.uint16)
    path = save(tmp_path / "d.png", Image.fromarray(values))
    assert Image.open(path).mode.startswith("I")
    out = np.asarray(load_rgb(path))
    assert out.shape == (31, 17, 3) and out.dtype == np.uint8
    assert out.min() == 0 and out.max() == 255
    gray = out[..., 0].ravel().astype(int)
    assert (np.diff(gray) >= 0).all()  # order preserved
    assert 120 <= gray[len(gray) // 2] <= 135  # 2000 of 0..4000 lands mid-gray


def test_float_cmyk_and_odd_sizes(tmp_path: Path) -> None:
    f = Image.fromarray(np.array([[-1.0, 0.5], [2.0, np.nan]], dtype=np.float32))
    out = np.asarray(load_rgb(save(tmp_path / "f.tiff", f)))
    assert out[0, 0, 0] == 0 and out[1, 0, 0] == 255 and out[1, 1, 0] == 0
    cmyk = load_rgb(save(tmp_path / "c.jpg", Image.new("CMYK", (17, 31), (0, 0, 0, 0))))
    assert cmyk.mode == "RGB" and cmyk.size == (17, 31)
    assert min(cmyk.getpixel((8, 8))) > 240  # no ink = white
    thin = load_rgb(save(tmp_path / "t.png", Image.new("L", (1, 9), 5)))
    assert thin.size == (1, 9) and thin.mode == "RGB"


def test_constant_sixteen_bit_image(tmp_path: Path) -> None:
    path = save(tmp_path / "k.png", Image.fromarray(np.full((4, 4), 900, np.uint16)))
    assert np.asarray(load_rgb(path)).min() == 255


@pytest.mark.parametrize(
    "content",
    [b"just some notes, not a picture\n", b""],
    ids=["text", "empty"],
)
def test_non_image_file_raises_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"Cannot read image '.*photo\.jpg'.*Fix or remove"):
        load_rgb(path)
    ok, reason = is_probably_image(path)
    assert not ok and "not a recognised image" in reason


def test_truncated_and_missing_images_raise(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert is_probably_image(path)[0]  # the header alone looks fine...
    with pytest.raises(DataError, match="Cannot read image .*cut.png"):
        load_rgb(path)  # ...but the pixels are not all there
    with pytest.raises(DataError, match="file not found"):
        load_rgb(tmp_path / "nope.png")


# ---------------------------------------------------------------- ImageFolder


def test_image_folder_indexes_classes_and_skips_non_images(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", {"dog": 2, "cat": 3})
    save(root / "cat" / "sub" / "gray.png", Image.new("L", (7, 5), 9))
    (root / "cat" / "notes.txt").write_text("hello")
    (root / "dog" / "fake.jpg").write_text("not really a jpeg")
    (root / "dog" / ".DS_Store").write_bytes(b"\x00\x01")
    (root / ".hidden").mkdir()
    (root / "README.md").write_text("about")

    ds = ImageFolderDataset(root)
    assert ds.name == "data"
    assert ds.classes == ["cat", "dog"]
    assert ds.ids[:4] == ["cat/000.png", "cat/001.png", "cat/002.png", "cat/sub/gray.png"]
    assert ds.labels.tolist() == [0, 0, 0, 0, 1, 1]
    assert ds.attributes.shape == (6, 0) and isinstance(ds.attributes.index, pd.RangeIndex)
    assert ds.ground_truth.shape == (6, 0)
    skipped = dict(ds.skipped)
    assert set(skipped) == {"README.md", "cat/notes.txt", "dog/fake.jpg"}
    assert "not a recognised image" in skipped["dog/fake.jpg"]
    img = ds.load_image(3)
    assert img.mode == "RGB" and img.size == (7, 5)


def test_image_folder_bad_roots(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing")
    (tmp_path / "file.png").write_text("x")
    with pytest.raises(DataError, match="is not a folder"):
        ImageFolderDataset(tmp_path / "file.png")
    flat = tmp_path / "flat"
    save(flat / "a.png", rgb())
    with pytest.raises(DataError, match="no class sub-folders"):
        ImageFolderDataset(flat)


def test_empty_and_single_class_datasets_are_rejected(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "b" / "x.txt").parent.mkdir()
    (empty / "b" / "x.txt").write_text("x")
    with pytest.raises(DataError, match="no usable images.*x.txt"):
        build_dataset(DatasetSpec("imagefolder", root=str(empty)))
    single = make_folder(tmp_path / "single", {"only": 3})
    with pytest.raises(DataError, match="single class \\('only'\\)"):
        build_dataset(DatasetSpec("imagefolder", root=str(single)))


def test_fingerprint_tracks_file_changes(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", {"a": 2, "b": 2})
    spec = DatasetSpec("imagefolder", root=str(root))
    first = build_dataset(spec)
    fp = first.fingerprint()
    assert fp == first.fingerprint() == build_dataset(spec).fingerprint()

    target = root / "b" / "001.png"
    before = os.stat(target).st_mtime_ns
    save(target, rgb((1, 2, 3)))
    os.utime(target, ns=(before + 10**9, before + 10**9))  # coarse-clock file systems
    assert build_dataset(spec).fingerprint() != fp
    assert first.fingerprint() != fp  # re-stats the files, no stale cache
    target.unlink()
    with pytest.raises(DataError, match="gone or unreadable"):
        first.content_key()


# ---------------------------------------------------------------- ImageFolder links


def test_link_looping_back_is_followed_once(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", {"cat": 3, "dog": 2})
    save(root / "cat" / "sub" / "s.png", rgb())
    os.symlink("..", root / "cat" / "sub" / "up")  # cat/sub/up -> cat: a loop
    os.symlink("..", root / "dog" / "top")  # dog/top -> the dataset root
    os.symlink(".", root / "dog" / "self")  # dog/self -> dog

    ds = ImageFolderDataset(root)
    assert len(ds) == 6  # the 6 real files, not a walk round the loops
    assert ds.ids == [
        "cat/000.png", "cat/001.png", "cat/002.png", "cat/sub/s.png", "dog/000.png", "dog/001.png",
    ]
    assert ds.labels.tolist() == [0, 0, 0, 0, 1, 1]
    assert ds.skipped == [
        ("cat/sub/up", "link loops back to 'cat' (already indexed)"),
        ("dog/self", "link loops back to 'dog' (already indexed)"),
        ("dog/top", "link loops back to the dataset root (already indexed)"),
    ]
    assert ImageFolderDataset(root).fingerprint() == ds.fingerprint()  # deterministic


def test_two_links_to_one_folder_count_once(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", {"cat": 2, "dog": 2})
    outside = make_folder(tmp_path / "extra", {"more": 3}) / "more"
    os.symlink(outside, root / "cat" / "more1")  # outside the root: followed once
    os.symlink(outside, root / "dog" / "more2")
    os.symlink(outside, root / "cat" / "more3")
    os.symlink("../cat", root / "dog" / "cats")  # an indexed folder inside the root

    ds = ImageFolderDataset(root)
    assert len(ds) == 7  # 2 + 2 real images + the 3 outside ones once
    assert ds.ids == [
        "cat/000.png", "cat/001.png",
        "cat/more1/000.png", "cat/more1/001.png", "cat/more1/002.png",
        "dog/000.png", "dog/001.png",
    ]
    assert ds.labels.tolist() == [0, 0, 0, 0, 0, 1, 1]
    assert dict(ds.skipped) == {
        "cat/more3": "same folder as 'cat/more1' (already indexed)",
        "dog/cats": "same folder as 'cat' (already indexed)",
        "dog/more2": "same folder as 'cat/more1' (already indexed)",
    }
    assert ds.load_image(3).size == (8, 6)  # read through the link


def test_file_links_and_hard_links_count_once(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", {"cat": 3, "dog": 2})
    os.symlink("002.png", root / "cat" / "0_first.png")  # sorts first; the real file wins
    os.symlink("../cat/000.png", root / "dog" / "cat_copy.png")
    os.link(root / "dog" / "000.png", root / "dog" / "hard.png")
    outside = save(tmp_path / "lone.png", rgb())
    os.symlink(outside, root / "dog" / "lone.png")  # the only copy: kept

    ds = ImageFolderDataset(root)
    assert len(ds) == 6
    assert ds.ids == [
        "cat/000.png", "cat/001.png", "cat/002.png", "dog/000.png", "dog/001.png", "dog/lone.png",
    ]
    assert dict(ds.skipped) == {
        "cat/0_first.png": "same file as 'cat/002.png'",
        "dog/cat_copy.png": "same file as 'cat/000.png'",
        "dog/hard.png": "same file as 'dog/000.png'",
    }


def test_broken_links_are_skipped(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", {"cat": 2, "dog": 2})
    os.symlink("nothing.png", root / "cat" / "gone.png")
    os.symlink("no_such_folder", root / "dog" / "gone")
    os.symlink("no_such_class", root / "ghost")
    os.symlink("ring_b", root / "cat" / "ring_a")  # a link cycle never resolves
    os.symlink("ring_a", root / "cat" / "ring_b")

    ds = ImageFolderDataset(root)
    assert ds.classes == ["cat", "dog"]
    assert len(ds) == 4
    skipped = dict(ds.skipped)
    assert skipped["ghost"] == "broken link: its target 'no_such_class' does not exist"
    assert skipped["cat/gone.png"] == "broken link: its target 'nothing.png' does not exist"
    assert skipped["dog/gone"] == "broken link: its target 'no_such_folder' does not exist"
    assert skipped["cat/ring_a"].startswith("broken link to 'ring_b' (")
    assert len(skipped) == 5


def test_class_folders_that_are_links(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", {"cat": 2, "dog": 1})
    birds = make_folder(tmp_path / "elsewhere", {"birds": 3}) / "birds"
    os.symlink(birds, root / "bird")
    os.symlink("cat", root / "kitty")  # a second name for an indexed class folder

    ds = ImageFolderDataset(root)
    assert ds.classes == ["bird", "cat", "dog", "kitty"]  # kitty stays a (empty) class
    assert ds.ids == [
        "bird/000.png", "bird/001.png", "bird/002.png", "cat/000.png", "cat/001.png", "dog/000.png",
    ]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 2]
    assert ds.skipped == [("kitty", "same folder as 'cat' (already indexed)")]


# ---------------------------------------------------------------- CSV manifest


def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_csv_missing_path_column_names_the_columns(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "m.csv", "picture,label\na.png,x\n")
    with pytest.raises(DataError, match="no image path column.*'picture', 'label'"):
        CsvManifestDataset(csv)
    with pytest.raises(DataError, match="no path column 'where'.*'picture'"):
        CsvManifestDataset(csv, path_column="where")


def test_csv_missing_label_column_names_the_columns(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "m.csv", "path,kind\na.png,x\n")
    with pytest.raises(DataError, match="no label column 'label'.*'path', 'kind'"):
        CsvManifestDataset(csv)
    with pytest.raises(DataError, match="no attribute column 'age'"):
        CsvManifestDataset(csv, label_column="kind", attribute_columns=["age"])


def test_csv_missing_files_skip_or_error(tmp_path: Path) -> None:
    save(tmp_path / "img" / "a.png", rgb())
    save(tmp_path / "img" / "b.png", rgb())
    rows = "path,label\nimg/a.png,cat\nimg/gone1.png,cat\nimg/b.png,dog\nimg/gone2.png,dog\n"
    csv = write_csv(tmp_path / "m.csv", rows)
    ds = build_dataset(DatasetSpec("csv", csv=str(csv)))
    assert ds.ids == ["img/a.png", "img/b.png"]
    assert [p for p, _ in ds.skipped] == ["img/gone1.png", "img/gone2.png"]
    assert "file not found" in ds.skipped[0][1]
    with pytest.raises(
        DataError, match="2 of 4 images .* missing .*'img/gone1.png'.*missing = 'skip'"
    ):
        build_dataset(DatasetSpec("csv", csv=str(csv), missing="error"))
    with pytest.raises(DataError, match="Image root .* is not a folder"):
        CsvManifestDataset(csv, root=tmp_path / "elsewhere")
    with pytest.raises(DataError, match="Unknown missing-file policy"):
        build_dataset(DatasetSpec("csv", csv=str(csv), missing="ignore"))


def test_csv_empty_labels_duplicates_and_int_labels(tmp_path: Path) -> None:
    for name in ("a", "b", "c", "d"):
        save(tmp_path / f"{name}.png", rgb())
    abs_d = (tmp_path / "d.png").as_posix()
    csv = write_csv(
        tmp_path / "m.csv",
        f"file,label,score\na.png,10,0.5\nb.png,,0.1\na.png,2,0.7\nc.png,2,1.5\n{abs_d},10,2\n",
    )
    ds = CsvManifestDataset(csv)
    assert ds.classes == ["2", "10"]  # integers sort as numbers
    assert ds.ids == ["a.png", "c.png", abs_d]
    assert ds.labels.tolist() == [1, 0, 1]
    assert dict(ds.skipped) == {
        "b.png": "empty label in column 'label'",
        "a.png": "duplicate of line 2",
    }
    assert ds.attributes["score"].tolist() == [0.5, 1.5, 2.0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"path,label\n", "header but no rows"),
        (b"path,label\na.png,x\nb.png,y,z,w\n", "Cannot parse CSV"),
        ("path,label\nb\xe9.png,x\n".encode("latin-1"), "Cannot parse CSV.*UTF-8"),
    ],
    ids=["empty", "header-only", "ragged", "not-utf8"],
)
def test_bad_csv_files(tmp_path: Path, content: bytes, message: str) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_bytes(content)
    with pytest.raises(DataError, match=message):
        CsvManifestDataset(csv)


def test_fairface_csv_works_as_is(tmp_path: Path) -> None:
    images = tmp_path / "fairface-img-margin025-trainval"
    for i in range(1, 5):
        save(images / "val" / f"{i}.jpg", rgb((i * 50, 90, 90), size=(11, 13)), fmt="JPEG")
    csv = write_csv(
        tmp_path / "fairface_label_val.csv",
        "file,age,gender,race,service_test\n"
        "val/1.jpg,3-9,Male,East Asian,False\n"
        "val/2.jpg,50-59,Female,White,True\n"
        "val/3.jpg,30-39,Male,Latino_Hispanic,True\n"
        "val/4.jpg,more than 70,Female,White,False\n",
    )
    spec = DatasetSpec("csv", csv=str(csv), root=str(images), label_column="race")
    ds = build_dataset(spec)
    assert ds.classes == ["East Asian", "Latino_Hispanic", "White"]
    assert ds.labels.tolist() == [0, 2, 1, 2]
    assert list(ds.attributes.columns) == ["age", "gender", "service_test"]
    assert ds.attributes["age"].tolist() == ["3-9", "50-59", "30-39", "more than 70"]
    assert ds.attributes["service_test"].tolist() == [False, True, True, False]
    assert ds.ground_truth.shape == (4, 0)
    assert ds.load_image(0).size == (11, 13)

    by_gender = build_dataset(
        DatasetSpec("csv", csv=str(csv), root=str(images), label_column="gender")
    )
    assert by_gender.classes == ["Female", "Male"]
    assert "race" in by_gender.attributes.columns


# ---------------------------------------------------------------- CelebA

CELEBA_ATTRS = [
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
]


def make_celeba(root: Path, partitions: list[int]) -> Path:
    """A tiny CelebA tree in torchvision's layout; image i smiles when i is odd."""
    folder = root / "celeba"
    names = [f"{i + 1:06d}.jpg" for i in range(len(partitions))]
    for i, name in enumerate(names):
        save(folder / "img_align_celeba" / name, rgb((i * 20, 0, 0), size=(9, 11)), fmt="JPEG")
    smiling = CELEBA_ATTRS.index("Smiling")
    attr_rows = []
    for i, name in enumerate(names):
        values = ["-1"] * len(CELEBA_ATTRS)
        values[smiling] = "1" if i % 2 else "-1"
        values[CELEBA_ATTRS.index("Male")] = "1" if i < 3 else "-1"
        attr_rows.append(f"{name} " + "  ".join(values))
    n = len(names)
    # Same shape as the real files: a count line and a header line (with a trailing
    # space in list_attr_celeba.txt) before the rows.
    files = {
        "list_attr_celeba.txt": [str(n), " ".join(CELEBA_ATTRS) + " ", *attr_rows],
        "list_eval_partition.txt": [f"{m} {p}" for m, p in zip(names, partitions, strict=True)],
        "identity_CelebA.txt": [f"{m} {i + 100}" for i, m in enumerate(names)],
        "list_bbox_celeba.txt": [str(n), "image_id x_1 y_1 width height"]
        + [f"{m} 1 2 3 4" for m in names],
        "list_landmarks_align_celeba.txt": [
            str(n),
            "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y "
            "rightmouth_x rightmouth_y",
        ]
        + [f"{m} " + " ".join(["5"] * 10) for m in names],
    }
    for fname, lines in files.items():
        (folder / fname).write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def no_celeba_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision's CelebA._check_integrity compares the md5 of each .txt file with the
    real CelebA release, which a tiny fake tree cannot match; check presence only."""
    from torchvision.datasets import CelebA

    def present_only(self: CelebA) -> bool:
        folder = Path(self.root) / self.base_folder
        return (
            all((folder / f).exists() for _, _, f in self.file_list if f.endswith(".txt"))
            and (folder / "img_align_celeba").is_dir()
        )

    monkeypatch.setattr(CelebA, "_check_integrity", present_only)


@pytest.mark.usefixtures("no_celeba_md5")
def test_celeba_fake_tree(tmp_path: Path) -> None:
    root = make_celeba(tmp_path, [0, 0, 1, 1, 2, 2, 2])
    ds = build_dataset(DatasetSpec("celeba", root=str(root), split="test"))
    assert ds.name == "celeba-test"
    assert ds.ids == ["000005.jpg", "000006.jpg", "000007.jpg"]
    assert ds.classes == ["not Smiling", "Smiling"]
    assert ds.labels.tolist() == [0, 1, 0]
    assert list(ds.attributes.columns) == CELEBA_ATTRS
    assert ds.attributes.dtypes.eq(bool).all()
    assert ds.attributes["Smiling"].tolist() == [False, True, False]
    assert ds.load_image(1).mode == "RGB"

    by_sex = CelebADataset(
        root / "celeba", split="all", target="Male"
    )  # the celeba/ folder works too
    assert len(by_sex) == 7 and by_sex.classes == ["not Male", "Male"]
    assert by_sex.labels.tolist() == [1, 1, 1, 0, 0, 0, 0]

    with pytest.raises(DataError, match="'Smile' is not a CelebA attribute.*Smiling"):
        CelebADataset(root, target="Smile")

    (root / "celeba" / "img_align_celeba" / "000006.jpg").unlink()
    partial = CelebADataset(root, split="test")
    assert partial.ids == ["000005.jpg", "000007.jpg"]
    assert partial.skipped[0][0] == "000006.jpg"
    with pytest.raises(DataError, match="1 of 3 images .* missing"):
        CelebADataset(root, split="test", missing="error")


def test_celeba_missing_tree_says_what_is_needed(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        build_dataset(DatasetSpec("celeba", root=str(tmp_path)))
    message = str(err.value)
    assert "Missing: img_align_celeba/, list_attr_celeba.txt" in message
    assert "list_landmarks_align_celeba.txt" in message
    assert "cannot download" in message


def test_celeba_real_checksum_rejects_fake_files(tmp_path: Path) -> None:
    root = make_celeba(tmp_path, [0, 1, 2, 2])
    with pytest.raises(DataError, match="checksum"):
        CelebADataset(root)


# ---------------------------------------------------------------- arrays, build_dataset


def test_array_dataset_grayscale_and_fingerprint() -> None:
    images = np.zeros((4, 5, 6), dtype=np.uint8)
    attrs = pd.DataFrame({"bright": [0, 1, 0, 1]}, index=[10, 11, 12, 13])
    ds = ArrayDataset(images, [0, 1, 0, 1], ["a", "b"], attributes=attrs)
    assert ds.ids == ["0", "1", "2", "3"]
    assert isinstance(ds.attributes.index, pd.RangeIndex)
    assert ds.ground_truth.shape == (4, 0)
    img = ds.load_image(2)
    assert img.mode == "RGB" and img.size == (6, 5)
    changed = images.copy()
    changed[3, 0, 0] = 1
    same = ArrayDataset(images.copy(), [0, 1, 0, 1], ["a", "b"], attributes=attrs)
    other = ArrayDataset(changed, [0, 1, 0, 1], ["a", "b"], attributes=attrs)
    assert ds.fingerprint() == same.fingerprint() != other.fingerprint()


def test_array_dataset_rejects_bad_inputs() -> None:
    with pytest.raises(DataError, match="uint8"):
        ArrayDataset(np.zeros((2, 4, 4, 3), dtype=np.float32), [0, 1], ["a", "b"])
    with pytest.raises(DataError, match="labels must be in 0..1"):
        ArrayDataset(np.zeros((2, 4, 4), dtype=np.uint8), [0, 2], ["a", "b"])
    with pytest.raises(DataError, match="attributes has 3 rows for 2 images"):
        ArrayDataset(
            np.zeros((2, 4, 4), dtype=np.uint8),
            [0, 1],
            ["a", "b"],
            attributes=pd.DataFrame({"x": [1, 2, 3]}),
        )


def test_build_dataset_unknown_kind_and_missing_settings(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match="Unknown dataset kind 'folder'.*demo, imagefolder, csv, celeba"
    ):
        build_dataset(DatasetSpec("folder"))
    with pytest.raises(DataError, match="needs a root folder"):
        build_dataset(DatasetSpec("imagefolder"))
    with pytest.raises(DataError, match="needs a csv file"):
        build_dataset(DatasetSpec("csv"))
    with pytest.raises(DataError, match="positive whole number"):
        build_dataset(DatasetSpec("imagefolder", root=str(tmp_path), limit=0))


def test_planted_slices_default_to_none_and_survive_a_limit() -> None:
    plain = ArrayDataset(np.zeros((4, 3, 3), np.uint8), [0, 1, 0, 1], ["x", "y"])
    assert plain.planted_slices().empty
    assert list(plain.planted_slices().columns) == ["slice", "kind", "where", "description"]

    class Planted(ArrayDataset):
        def planted_slices(self) -> pd.DataFrame:
            return pd.DataFrame({"slice": ["a"], "kind": ["rare"], "where": ["x = 1"], "description": [""]})

    limited = limit_dataset(Planted(np.zeros((4, 3, 3), np.uint8), [0, 1, 0, 1], ["x", "y"]), 2)
    assert len(limited) == 2 and limited.planted_slices()["slice"].tolist() == ["a"]


def test_limit_keeps_a_deterministic_mixed_subset(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "d", {"a": 20, "b": 20})
    spec = DatasetSpec("imagefolder", root=str(root), limit=10)
    ds = build_dataset(spec)
    again = build_dataset(spec)
    assert len(ds) == 10 and ds.ids == again.ids
    assert ds.ids == sorted(ds.ids)  # original order kept
    assert set(ds.labels.tolist()) == {0, 1}
    full = ImageFolderDataset(root)
    i = full.ids.index(ds.ids[3])
    assert ds.load_image(3).tobytes() == full.load_image(i).tobytes()
    assert ds.fingerprint() != full.fingerprint()


def test_demo_kind_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    demo = pytest.importorskip("core.demo.dataset", reason="core.demo not written yet")
    calls = []

    def fake_demo(split: str, slices_file: Path | None) -> ArrayDataset:
        calls.append((split, slices_file))
        return ArrayDataset(np.zeros((2, 3, 3), np.uint8), [0, 1], ["x", "y"])

    monkeypatch.setattr(demo, "DemoDataset", fake_demo)
    build_dataset(DatasetSpec("demo", split="train", slices="my.toml"))
    build_dataset(DatasetSpec("demo"))
    assert calls == [("train", Path("my.toml")), ("test", None)]


def test_classes_option_sets_the_model_output_order(tmp_path):
    from core.data.sources import DatasetSpec, build_dataset

    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / name / f"{i}.png")
    ds = build_dataset(DatasetSpec(kind="imagefolder", root=str(tmp_path), classes=["dog", "bird", "cat"]))
    assert ds.classes == ["dog", "bird", "cat"]
    assert [ds.classes[k] for k in ds.labels] == [i.split("/")[0] for i in ds.ids]
    with pytest.raises(DataError, match="cat.*not in its `classes`"):
        build_dataset(DatasetSpec(kind="imagefolder", root=str(tmp_path), classes=["dog"]))


# ---------------------------------------------------------------- CSV missing values


NA_CSV = (
    "path,label,note,score,count\n"
    "a.png,None,NA,0.5,1\n"
    "b.png,NA,None,,2\n"
    "c.png,null,null,1.5,\t\n"
    "d.png,n/a,,2.5,4\n"
    "e.png,,x,3.5,5\n"
    "f.png,  ,y,4.5,6\n"
    "g.png,cat,NA,NA,7\n"
)


def _na_files(tmp_path: Path) -> Path:
    for name in "abcdefg":
        save(tmp_path / f"{name}.png", rgb())
    return write_csv(tmp_path / "m.csv", NA_CSV)


def test_csv_only_empty_cells_are_missing(tmp_path: Path) -> None:
    ds = build_dataset(DatasetSpec("csv", csv=str(_na_files(tmp_path))))
    assert ds.classes == ["NA", "None", "cat", "n/a", "null"]
    assert ds.ids == ["a.png", "b.png", "c.png", "d.png", "g.png"]
    assert [ds.classes[k] for k in ds.labels] == ["None", "NA", "null", "n/a", "cat"]
    assert ds.skipped == [
        ("e.png", "empty label in column 'label'"),
        ("f.png", "empty label in column 'label'"),  # whitespace only
    ]
    note = ds.attributes["note"].tolist()
    assert note[:3] == ["NA", "None", "null"] and pd.isna(note[3]) and note[4] == "NA"
    # 'NA' is text here, so score is a text column; count keeps numbers (tab = missing)
    assert ds.attributes["score"].tolist()[:1] == ["0.5"]
    assert ds.attributes["count"].dtype == np.float64
    assert ds.attributes["count"].tolist()[:2] == [1.0, 2.0]
    assert np.isnan(ds.attributes["count"][2])
    assert ds.attributes["count"].tolist()[3:] == [4.0, 7.0]


def test_csv_na_values_lists_missing_strings(tmp_path: Path) -> None:
    csv = _na_files(tmp_path)
    ds = build_dataset(DatasetSpec("csv", csv=str(csv), na_values=["NA", " null "]))
    assert ds.classes == ["None", "cat", "n/a"]
    assert ds.ids == ["a.png", "d.png", "g.png"]
    assert dict(ds.skipped) == {
        "b.png": "empty label in column 'label' (empty or one of na_values)",
        "c.png": "empty label in column 'label' (empty or one of na_values)",
        "e.png": "empty label in column 'label' (empty or one of na_values)",
        "f.png": "empty label in column 'label' (empty or one of na_values)",
    }
    note = ds.attributes["note"]
    assert note.isna().tolist() == [True, True, True]
    score = ds.attributes["score"]
    assert score.dtype == np.float64  # 'NA' is missing, so the column is numbers again
    assert score.tolist()[:2] == [0.5, 2.5] and np.isnan(score[2])
    with pytest.raises(DataError, match="na_values must be a list of strings"):
        build_dataset(DatasetSpec("csv", csv=str(csv), na_values="NA"))  # type: ignore[arg-type]


def test_csv_numbers_and_booleans_stay_typed(tmp_path: Path) -> None:
    for name in "abc":
        save(tmp_path / f"{name}.png", rgb())
    csv = write_csv(
        tmp_path / "m.csv",
        "path,label,age,flag,,\na.png,x,30,True,u,1\nb.png,y, ,False,v,2\nc.png,x,41,\t,w,3\n",
    )
    ds = CsvManifestDataset(csv)
    assert list(ds.attributes.columns) == ["age", "flag", "attr_column_5", "attr_column_6"]
    age = ds.attributes["age"]
    assert age.dtype == np.float64 and age[0] == 30 and np.isnan(age[1]) and age[2] == 41
    flag = ds.attributes["flag"].tolist()
    assert flag[:2] == [True, False] and pd.isna(flag[2])
    assert ds.attributes["attr_column_5"].tolist() == ["u", "v", "w"]
    assert ds.attributes["attr_column_6"].tolist() == [1, 2, 3]
