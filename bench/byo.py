"""Your own model on your own images: every page in a real Chromium on stock torchvision models.

Makes a temporary ImageFolder of generated 224 px PNGs (4 classes, 50 images each by default),
saves the state_dicts of random-weight torchvision models (``weights=None``: nothing is
downloaded) beside it, and registers one ``torchvision`` workspace per model in a temporary
workspaces.toml. Each store is built ahead with the CLI (``python -m core build``, timed), then
``streamlit run app.py`` is driven with Debian's Chromium through Playwright: for each model the
workspace is picked in the sidebar and every page is opened once, cold, doing its main action
(Cohorts: a WHERE filter; Spotlight: Run; Subgroups: a Grad-CAM window; Filter saliency: the
dataset's profiles; ActiVis and the others: the page as it opens).

Per model and page it records the cold seconds (from the click in the sidebar, or on the
page's button, until the app is idle and the page's marker shows), the exception boxes
(``[data-testid="stException"]``, with their text) and the error boxes. Progress goes to
stderr; LAST, a JSON line of figures on stdout.

    .venv/bin/python bench/byo.py [--models resnet18,resnet50,mobilenet_v3_small,vit_b_16] [--images 200]
        [--profiles resnet18,...] [--folder DIR (reused: images, weights and stores built there)] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, machine_figures, start_server, stop_server
from PIL import Image, ImageDraw
from playwright.sync_api import Page, sync_playwright

from core.methods.records import method_records

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
MODELS = ("resnet18", "resnet50", "mobilenet_v3_small", "vit_b_16")
CLASSES = ("circles", "squares", "stripes", "blobs")
SIDE = 224
PAGES = ("Overview", "Findings", "Compare models", "Cohorts & subsets", *(record.title for record in method_records()))
PAGE_TIMEOUT_MS = 900_000


def log(message: str) -> None:
    print(f"[byo {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the workspace


def draw_image(label: int, rng: np.random.Generator) -> Image.Image:
    """One 224 px RGB image of class ``label``: a tinted background and the class's shapes, each
    image with its own colours, positions and noise."""
    base = rng.integers(40, 216, size=3)
    image = Image.new("RGB", (SIDE, SIDE), tuple(int(v) for v in base))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 7))):
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        x, y = (int(v) for v in rng.integers(0, SIDE - 40, size=2))
        r = int(rng.integers(12, 40))
        if label == 0:
            draw.ellipse([x, y, x + r, y + r], fill=colour)
        elif label == 1:
            draw.rectangle([x, y, x + r, y + r], fill=colour)
        elif label == 2:
            draw.line([0, y, SIDE, y + int(rng.integers(-30, 30))], fill=colour, width=max(3, r // 4))
        else:
            draw.polygon([(x, y), (x + r, y + r // 3), (x + r // 2, y + r)], fill=colour)
    pixels = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, size=(SIDE, SIDE, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_images(root: Path, count: int, seed: int = 0) -> None:
    """``count`` generated PNGs in an ImageFolder tree: one folder per class of CLASSES (kept
    when the folder holds them already: a rewritten file would change the dataset's fingerprint)."""
    if root.is_dir() and len(list(root.rglob("*.png"))) == count:
        return
    rng = np.random.default_rng(seed)
    for i in range(count):
        label = i % len(CLASSES)
        folder = root / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        draw_image(label, rng).save(folder / f"{i:04d}.png")


def save_weights(folder: Path, arch: str) -> Path:
    """The state_dict of a random-weight torchvision ``arch`` with one output per class."""
    import torch
    import torchvision

    torch.manual_seed(0)
    path = folder / f"{arch}.pt"
    if path.exists():
        return path
    torch.save(torchvision.models.get_model(arch, weights=None, num_classes=len(CLASSES)).state_dict(), path)
    return path


def title(arch: str) -> str:
    return f"{arch} (random weights) on generated shapes"


def make_workspaces(folder: Path, archs: list[str], images: int) -> Path:
    """The generated images, each model's state_dict and a workspaces.toml registering them."""
    make_images(folder / "images", images)
    entries = []
    for arch in archs:
        weights = save_weights(folder, arch)
        entries.append(
            f'[workspace.{arch}]\ntitle = "{title(arch)}"\nbatch_size = 32\nnum_workers = 0\n'
            f'model = {{ kind = "torchvision", arch = "{arch}", weights = "{weights.name}" }}\n'
            'dataset = { kind = "imagefolder", root = "images" }\n'
        )
    path = folder / "workspaces.toml"
    path.write_text("\n".join(entries))
    return path


def build_store(arch: str, env: dict[str, str]) -> float:
    """Seconds of ``python -m core build arch`` (the store every page reads)."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "core", "build", arch], cwd=ROOT, env=env, check=True,
                   stdout=sys.stderr, stderr=sys.stderr)
    return round(time.perf_counter() - began, 1)


# --------------------------------------------------------------------------- driving the pages


def settle(page: Page, timeout_ms: int = PAGE_TIMEOUT_MS) -> None:
    """Wait until the script has finished and stayed finished (skeletons and reruns are over)."""
    for _ in range(3):
        page.wait_for_selector(IDLE, timeout=timeout_ms)
        page.wait_for_timeout(700)
    page.wait_for_selector(IDLE, timeout=timeout_ms)


def boxes(page: Page) -> tuple[list[str], list[str]]:
    """(texts of the exception boxes, texts of the error boxes) on the page now."""
    exceptions = page.locator("[data-testid='stException']").all_inner_texts()
    errors = page.locator("[data-testid='stAlertContentError']").evaluate_all(  # those outside exception boxes
        "boxes => boxes.filter(b => !b.closest(\"[data-testid='stException']\")).map(b => b.innerText)")
    return [e.strip()[:3000] for e in exceptions], [e.strip()[:500] for e in errors]


def pick_workspace(page: Page, arch: str) -> None:
    """Choose the model's workspace in the sidebar picker."""
    sidebar = page.locator("[data-testid='stSidebar']")
    sidebar.locator("[data-testid='stSelectbox']").first.click()
    page.get_by_role("option", name=title(arch), exact=True).click()
    settle(page)


def click_when_present(page: Page, role: str, name: str, wait_ms: int = 3000) -> bool:
    """Click the first element of this role and name when the page shows one."""
    target = page.get_by_role(role, name=name, exact=True)
    try:
        target.first.wait_for(timeout=wait_ms)
    except Exception:
        return False
    target.first.click()
    return True


def outcome(page: Page, *texts: str) -> None:
    """Wait until one of ``texts``, an error box or an exception box shows, then until idle."""
    found = page.locator("[data-testid='stException']").or_(page.locator("[data-testid='stAlertContentError']"))
    for text in texts:
        found = found.or_(page.get_by_text(text))
    found.first.wait_for(timeout=PAGE_TIMEOUT_MS)
    settle(page)


def page_action(page: Page, name: str, heavy: bool = True) -> str:
    """The page's main action after it opened; returns what was done ('' for none). ``heavy``
    False leaves out the dataset's saliency profiles (minutes at 224 px on a CPU)."""
    if name == "Cohorts & subsets":
        box = page.get_by_label("WHERE")
        box.fill("correct = false OR loss > 0")
        box.press("Enter")
        settle(page)
        return "filter"
    if name == "Spotlight" and click_when_present(page, "button", "Run"):
        outcome(page, "Spotlights found", "Nothing to find")
        return "run"
    if name == "Subgroups":
        done = ""
        if page.get_by_text("would list the worst one").count():  # none under-performing at 0.5
            page.get_by_role("radio", name="Custom", exact=True).click()  # its threshold (0.8) lists some
            settle(page)
            done = "custom threshold, "
        if click_when_present(page, "button", "CAM"):
            outcome(page, "Grad-CAM (where the layer saw evidence", "Grad-CAM does not apply", "image file is missing")
            return done + "grad-cam"
        return done.rstrip(", ")
    if name == "Filter saliency" and heavy and click_when_present(page, "button", "Compute saliency profiles"):
        settle(page)
        return "profiles"
    return ""


def visit(page: Page, name: str, heavy: bool = True) -> dict[str, object]:
    """Open page ``name`` from the sidebar, cold: its seconds, its action's, its boxes."""
    began = time.perf_counter()
    page.locator("[data-testid='stSidebar']").get_by_role("link", name=name, exact=True).click()
    page.get_by_role("heading", name=name if name != "Overview" else None).first.wait_for(timeout=PAGE_TIMEOUT_MS)
    settle(page)
    opened = time.perf_counter() - began
    action = page_action(page, name, heavy)
    total = time.perf_counter() - began
    exceptions, errors = boxes(page)
    if page.locator("[data-testid='stDialog']").count():
        page.keyboard.press("Escape")
        settle(page)
    return {"open_s": round(opened, 2), "action": action, "action_s": round(total - opened, 2),
            "exceptions": exceptions, "errors": errors}


def drive(page: Page, url: str, arch: str, shots: Path | None = None, heavy: bool = True) -> dict[str, dict[str, object]]:
    """Every page of one model's workspace, cold, in PAGES order (``heavy``: see page_action)."""
    page.goto(f"{url}/cohorts")  # not the Overview: on the demo workspace it would build the demo's store
    settle(page)
    pick_workspace(page, arch)
    out: dict[str, dict[str, object]] = {}
    for name in PAGES:
        try:
            out[name] = visit(page, name, heavy)
        except Exception as exc:  # a page that never settles: record it and go on with the next
            out[name] = {"open_s": None, "action": "", "action_s": None, "exceptions": [], "errors": [],
                         "stuck": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
            log(f"  {arch} · {name}: STUCK {out[name]['stuck']}")
            page.goto(f"{url}/cohorts")
            settle(page)
            continue
        figures = out[name]
        log(f"  {arch} · {name}: open {figures['open_s']} s, {figures['action'] or 'no action'} "
            f"{figures['action_s']} s, {len(figures['exceptions'])} exception box(es), {len(figures['errors'])} error box(es)")
        for text in figures["exceptions"]:
            log(f"    EXCEPTION on {name}: {text[:1500]}")
        for text in figures["errors"]:
            log(f"    error box on {name}: {text[:300]}")
        if shots is not None:
            page.screenshot(path=str(shots / f"byo-{arch}-{name.split()[0].lower()}.png"), full_page=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--profiles", default=None,
                        help="models whose Filter saliency page computes the dataset's profiles (default: all)")
    parser.add_argument("--folder", default=None,
                        help="work in this folder and keep it; images, weights and stores already there are reused")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (images, weights, logs, screenshots)")
    args = parser.parse_args()
    archs = [a.strip() for a in args.models.split(",") if a.strip()]
    profiles = archs if args.profiles is None else [a.strip() for a in args.profiles.split(",") if a.strip()]
    if not Path(CHROMIUM).exists():
        sys.exit(f"Debian chromium is not installed ({CHROMIUM}); `make browser` installs it")
    import os

    folder = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix="biaslens-byo-"))
    keep = args.keep or bool(args.folder)
    shots = folder / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BIASLENS_WORKSPACES": str(folder / "workspaces.toml"), "BIASLENS_CACHE": str(folder / "cache")}
    os.environ.update({k: env[k] for k in ("BIASLENS_WORKSPACES", "BIASLENS_CACHE")})
    server = None
    try:
        log(f"generating {args.images} images and {len(archs)} state_dicts in {folder}...")
        make_workspaces(folder, archs, args.images)
        build_s = {}
        for arch in archs:
            log(f"building the {arch} store with the CLI...")
            build_s[arch] = build_store(arch, env)
            log(f"  {build_s[arch]} s")
        server, url = start_server(folder / "streamlit.log")
        pages: dict[str, dict[str, dict[str, object]]] = {}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
            for arch in archs:
                context = browser.new_context(viewport={"width": 1400, "height": 1400})
                page = context.new_page()
                page.set_default_timeout(PAGE_TIMEOUT_MS)
                log(f"{arch}: every page, cold")
                pages[arch] = drive(page, url, arch, shots, heavy=arch in profiles)
                context.close()
            browser.close()
    finally:
        if server is not None:
            stop_server(server)
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    figures = {
        "images": args.images, "side": SIDE, "build_s": build_s,
        "exception_boxes": {a: sum(len(v["exceptions"]) for v in pages[a].values()) for a in archs},
        "error_boxes": {a: sum(len(v["errors"]) for v in pages[a].values()) for a in archs},
        "cold_s": {a: {n: None if v["open_s"] is None else round(v["open_s"] + v["action_s"], 2)
                       for n, v in pages[a].items()} for a in archs},
        "stuck": {a: [n for n, v in pages[a].items() if v.get("stuck")] for a in archs},
        "profiles": profiles,
        "pages": pages,
    }
    if keep:
        log(f"kept {folder}")
    print(json.dumps({**figures, **machine_figures("cpu")}))


if __name__ == "__main__":
    main()
