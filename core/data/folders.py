"""ImageFolder trees as datasets: one sub-folder per class; the ``imagefolder`` kind.

Links are followed once (folders and files are identified by device and inode), non-image
files are skipped and listed, and an unusable root raises DataError saying what to fix.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from core.data.datasets import ImageDataset, empty_frame, stat_key
from core.data.images import is_probably_image, load_rgb
from core.errors import DataError
from core.registry import register_dataset_kind

if TYPE_CHECKING:
    from core.specs import DatasetSpec

# Folders that are never classes: zip artefacts from macOS.
_IGNORED_DIRS = ("__MACOSX",)


class ImageFolderDataset(ImageDataset):
    """A folder with one sub-folder per class (torchvision's ImageFolder layout).

    Classes are the sorted sub-folder names (empty ones included, so class indices match
    a model trained on the same layout); images are found recursively. Hidden files and
    folders are ignored; other non-image files are skipped and listed in ``skipped``.

    Symbolic links (to files or folders, class folders included, inside the root or
    outside it) are followed once: every folder and file is identified by its device and
    inode, so a link that loops back, a second link to an indexed folder and a link (or
    hard link) to an indexed file add nothing and are listed in ``skipped`` with the path
    they duplicate. Real files and folders are indexed before links, so an image is
    listed under its own path rather than a link's. Broken links are skipped too.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            what = "does not exist" if not self.root.exists() else "is not a folder"
            raise DataError(
                f"Image folder '{self.root}' {what}. Point the workspace's dataset root at "
                "a folder with one sub-folder per class."
            )
        self.name = self.root.resolve().name or str(self.root)
        self.skipped = []
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except OSError as exc:
            raise DataError(
                f"Cannot list image folder '{self.root}' ({exc.strerror}). Check its permissions."
            ) from exc
        class_dirs = []
        for e in entries:
            if not self._visible(e.name):
                continue
            if e.is_dir():  # follows links: a linked class folder is a class
                class_dirs.append(e)
            elif e.is_symlink() and not os.path.exists(e.path):
                self.skipped.append((e.name, _broken_link_reason(e.path)))
            else:
                self.skipped.append((e.name, "not inside a class sub-folder"))
        if not class_dirs:
            raise DataError(
                f"Image folder '{self.root}' has no class sub-folders. Put the images of "
                "each class in their own sub-folder, e.g. cat/001.jpg, dog/002.jpg."
            )
        self.classes = [e.name for e in class_dirs]
        walk = _FolderWalk(self.root, len(class_dirs), self._visible)
        for k, class_dir in enumerate(class_dirs):
            if class_dir.is_symlink():
                walk.pending.append((class_dir.name, class_dir.path, k))
            else:
                walk.walk_tree(class_dir.name, class_dir.path, k)
        walk.follow_links()
        self.ids = []
        labels = []
        for k, files in enumerate(walk.found):
            for rel in sorted(files):
                ok, reason = is_probably_image(self.root / rel)
                if ok:
                    self.ids.append(rel)
                    labels.append(k)
                else:
                    walk.skipped.append((rel, reason))
        self.skipped += sorted(walk.skipped)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.attributes = empty_frame(len(self.ids))
        self.ground_truth = empty_frame(len(self.ids))

    @staticmethod
    def _visible(name: str) -> bool:
        return not name.startswith(".") and name not in _IGNORED_DIRS

    def load_image(self, index: int) -> Image.Image:
        return load_rgb(self.root / self.ids[index])

    def image_path(self, index: int) -> Path:
        return self.root / self.ids[index]

    def content_key(self) -> str:
        return stat_key([(i, self.root / i) for i in self.ids])


def _identity(path: str) -> tuple[int, int] | str:
    """What a path really is, links followed: (device, inode), or the real path where the
    file system has no inode numbers. Raises OSError for a broken link."""
    st = os.stat(path)
    if st.st_ino:
        return (st.st_dev, st.st_ino)
    return os.path.realpath(path)


def _broken_link_reason(path: str) -> str:
    try:
        target = os.readlink(path)
    except OSError:
        return "broken link"
    try:
        os.stat(path)
    except FileNotFoundError:
        return f"broken link: its target '{target}' does not exist"
    except OSError as exc:
        return f"broken link to '{target}' ({exc.strerror})"
    return f"link to '{target}'"


class _FolderWalk:
    """Finds the files of an ImageFolder, following each link once.

    ``walk_tree`` indexes a folder's real sub-folders and files depth-first in name order
    and queues the links it meets in ``pending``; ``follow_links`` then follows them in
    that order (queuing the links found behind them), so real paths win over links. A
    folder or file already seen (same device and inode) is skipped with the path it was
    first indexed under.
    """

    def __init__(self, root: Path, n_classes: int, visible: Callable[[str], bool]) -> None:
        self.root = str(root)
        self.visible = visible
        self.found: list[list[str]] = [[] for _ in range(n_classes)]
        self.skipped: list[tuple[str, str]] = []
        self.pending: deque[tuple[str, str, int]] = deque()
        self.dirs: dict[tuple[int, int] | str, str] = {_identity(self.root): "."}
        self.files: dict[tuple[int, int] | str, str] = {}

    def _enter(self, rel: str, path: str) -> bool:
        """Record folder ``path`` as visited; False (with a skip) if it already was."""
        try:
            key = _identity(path)
        except OSError as exc:
            self.skipped.append((rel, f"cannot open this folder ({exc.strerror})"))
            return False
        first = self.dirs.get(key)
        if first is None:
            self.dirs[key] = rel
            return True
        shown = "the dataset root" if first == "." else f"'{first}'"
        here = os.path.realpath(os.path.dirname(path))
        target = os.path.realpath(path)
        if here == target or here.startswith(target.rstrip(os.sep) + os.sep):
            self.skipped.append((rel, f"link loops back to {shown} (already indexed)"))
        else:
            self.skipped.append((rel, f"same folder as {shown} (already indexed)"))
        return False

    def _add_file(self, rel: str, path: str, k: int) -> None:
        try:
            key = _identity(path)
        except OSError:
            self.skipped.append((rel, _broken_link_reason(path)))
            return
        first = self.files.get(key)
        if first is not None:
            self.skipped.append((rel, f"same file as '{first}'"))
            return
        self.files[key] = rel
        self.found[k].append(rel)

    def walk_tree(self, rel: str, path: str, k: int) -> None:
        """Index folder ``path`` (shown as ``rel``) and its real sub-folders for class k."""
        stack = [(rel, path)]
        while stack:
            rel, path = stack.pop()
            if not self._enter(rel, path):
                continue
            try:
                entries = sorted(os.scandir(path), key=lambda e: e.name)
            except OSError as exc:
                self.skipped.append((rel, f"cannot list this folder ({exc.strerror})"))
                continue
            subdirs = []
            for e in entries:
                if not self.visible(e.name):
                    continue
                sub = f"{rel}/{e.name}"
                if e.is_symlink():
                    self.pending.append((sub, e.path, k))
                elif e.is_dir(follow_symlinks=False):
                    subdirs.append((sub, e.path))
                elif e.is_file(follow_symlinks=False):
                    self._add_file(sub, e.path, k)
                else:
                    self.skipped.append((sub, "not a regular file (a pipe, socket or device)"))
            stack.extend(reversed(subdirs))

    def follow_links(self) -> None:
        """Follow the queued links once each, in the order they were found."""
        while self.pending:
            rel, path, k = self.pending.popleft()
            try:
                st = os.stat(path)
            except OSError:
                self.skipped.append((rel, _broken_link_reason(path)))
                continue
            if stat.S_ISDIR(st.st_mode):
                self.walk_tree(rel, path, k)
            elif stat.S_ISREG(st.st_mode):
                self._add_file(rel, path, k)
            else:
                self.skipped.append((rel, "link to something that is not a regular file"))


def _build_imagefolder(spec: DatasetSpec) -> ImageDataset:
    if not spec.root:
        raise DataError(
            f"A '{spec.kind}' dataset needs a root folder: set root in the workspace file."
        )
    return ImageFolderDataset(spec.root)


register_dataset_kind("imagefolder", _build_imagefolder)
