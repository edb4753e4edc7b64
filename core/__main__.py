"""BiasLens command line: ``python -m core --help``.

Lists workspaces, shows a workspace's layers, builds activation stores ahead of time
(e.g. on a GPU machine, so a hosted app only reads), computes the dataset's saliency
profiles beside a store, prepares everything a hosted server's visitors need and trains
the demo model. User errors print a one-line message and exit with status 2, never a
traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from core.data.sources import build_dataset
from core.demo.train import train_demo
from core.errors import BiasLensError, StoreError
from core.methods.saliency.filters import conv_filters
from core.methods.saliency.profiles import build_profiles, size_message
from core.models.loading import LoadedModel, load_model
from core.services.config import MAX_BATCH, MAX_WORKERS
from core.services.workspace import REPO_ROOT, Workspace, WorkspaceList, load_workspaces
from core.store.build import build_store
from core.store.pipeline import StageTimes
from core.store.ray_source import RaySource  # Ray itself is imported only when --ray is given
from core.store.read import Store, find_store

if TYPE_CHECKING:
    from core.data.datasets import ImageDataset


def _workspaces(args: argparse.Namespace) -> WorkspaceList:
    listing = load_workspaces(Path(args.file) if args.file else None)
    for problem in listing.problems:
        print(f"warning: {problem}", file=sys.stderr)
    return listing


def _pick(listing: WorkspaceList, name: str) -> Workspace:
    if name not in listing.workspaces:
        if any(f"[workspace.{name}]" in problem for problem in listing.problems):
            raise BiasLensError(f"Workspace '{name}' is invalid: fix the problems listed above.")
        raise BiasLensError(f"No workspace '{name}'; known: {', '.join(listing.workspaces)}.")
    return listing.workspaces[name]


def cmd_list(args: argparse.Namespace) -> int:
    """Print one line per workspace."""
    for ws in _workspaces(args).workspaces.values():
        print(f"{ws.name:20s} {ws.title}  [model: {ws.model.kind}, dataset: {ws.dataset.kind}]")
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    """Print the layers of a workspace's model a store can hold."""
    ws = _pick(_workspaces(args), args.workspace)
    model = load_model(ws.model, args.device)
    print(f"model: {model.description} on {model.device}")
    print(f"embedding: input of '{model.embedding_layer}' ({model.embedding_dim}-d)")
    for name in model.storable_layers:
        mark = "*" if name in model.default_layers else " "
        kind = "" if name in model.conv_layers else "  (linear)"
        print(f" {mark} {name}{kind}")
    print("(* = stored by default)")
    return 0


def _opened(args: argparse.Namespace, listing: WorkspaceList) -> tuple[Workspace, LoadedModel, ImageDataset]:
    """(workspace, model, dataset) of ``args.workspace``; files the dataset skipped are noted."""
    ws = _pick(listing, args.workspace)
    dataset = build_dataset(ws.dataset)
    if dataset.skipped:
        print(f"note: skipped {len(dataset.skipped)} listed file(s), e.g. {dataset.skipped[0][0]}: "
              f"{dataset.skipped[0][1]}", file=sys.stderr)
    return ws, load_model(ws.model, args.device, hosted=listing.hosted), dataset


def cmd_build(args: argparse.Namespace) -> int:
    """Build (or resume, or extend) a workspace's activation store with a tqdm bar."""
    from tqdm import tqdm

    listing = _workspaces(args)
    ws, model, dataset = _opened(args, listing)
    bar = tqdm(total=len(dataset), unit="img", desc=ws.name)

    def progress(done: int, total: int, message: str) -> None:
        bar.set_description(message[:40])
        bar.n = done
        bar.refresh()

    times = StageTimes()
    source = None
    if args.ray is not None:
        source = RaySource(ws, address=args.ray or None, batch_size=args.batch_size or ws.batch_size,
                           precision=args.precision, hosted=listing.hosted)
    try:
        store = build_store(
            ws.name,
            model,
            dataset,
            args.layers,
            batch_size=args.batch_size or ws.batch_size,
            num_workers=_workers(args.num_workers, ws.num_workers, model.device.type),
            root=Path(args.cache) if args.cache else None,
            progress=progress,
            precision=args.precision,
            times=times,
            source=source,
            decode=args.decode,
        )
    finally:
        bar.close()
    print(f"store: {store.path} ({store.n} images, layers: {', '.join(store.layers) or 'none'})")
    if times.images:
        print(f"extraction: {times.text()}")
    return 0


def _workers(asked: int | None, configured: int, device: str) -> int:
    """Loader processes: as asked, else the workspace's, else on CUDA the machine's cores (the
    GPU waits for decoding otherwise); on a CPU the workers would compete with the model."""
    if asked is not None:
        return asked
    if configured or device != "cuda":
        return configured
    return os.cpu_count() or 1


def cmd_saliency(args: argparse.Namespace) -> int:
    """Compute a workspace's dataset saliency profiles (kept with its store) with a tqdm bar."""
    from tqdm import tqdm

    # late: scikit-learn (about 1 s to import) stays off --help, list, layers and build
    from core.services.estimates import model_cost, on_this_server, profile_seconds

    listing = _workspaces(args)
    ws = _pick(listing, args.workspace)
    dataset = build_dataset(ws.dataset)
    model = load_model(ws.model, args.device, hosted=listing.hosted)
    store = find_store(ws.name, model, dataset, Path(args.cache) if args.cache else None)
    if store is None:
        raise BiasLensError(
            f"Workspace '{ws.name}' has no complete activation store (never built, or interrupted or damaged): run `python -m core build {ws.name}`."
        )
    layers = [ly.strip() for ly in args.layers.split(",") if ly.strip()] if args.layers else None
    index = conv_filters(model.module, layers)
    print(f"{size_message(store.n, index)} Expected time: {on_this_server(profile_seconds(model_cost(model), store.n))}.")
    if not args.yes and sys.stdin.isatty() and input("Build them? [y/N] ").strip().lower() not in ("y", "yes"):
        print("cancelled")
        return 1
    bar = tqdm(total=store.n, unit="img", desc=f"{ws.name} saliency")

    def progress(done: int, total: int) -> None:
        bar.n = done
        bar.refresh()

    try:
        profiles = build_profiles(
            store, model, dataset, layers, batch_size=args.batch_size or min(ws.batch_size, 32),
            progress=progress, notice=lambda message: bar.write(f"note: {message}", file=sys.stderr),
        )
    finally:
        bar.close()
    m = profiles.manifest
    print(f"profiles: {profiles.path} ({profiles.n} images x {profiles.n_filters} filters over "
          f"{len(profiles.index.layers)} conv layers, method {profiles.method}, {m.get('seconds', 0):.1f} s)")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Prepare a workspace for a hosted server: store, saliency profiles, the Intersectional
    page's default probes and layout; each step skipped when done, resumed when interrupted."""
    # late: scikit-learn (about 1 s to import) stays off --help, list, layers and build
    from core.services.prepare import Preparer, parse_steps

    steps = parse_steps(args.only, args.skip)
    listing = _workspaces(args)
    ws, model, dataset = _opened(args, listing)
    preparer = Preparer(ws.name, model, dataset, root=Path(args.cache) if args.cache else None,
                        batch_size=args.batch_size or ws.batch_size,
                        num_workers=_workers(args.num_workers, ws.num_workers, model.device.type))
    done = preparer.run(steps)
    total = sum(p.seconds for p in done)
    print(f"prepared '{ws.name}' in {total:.1f} s ({sum(not p.skipped for p in done)} step(s) run, "
          f"{sum(p.skipped for p in done)} already done)")
    return 0


def _built_store(listing: WorkspaceList, name: str, cache: str | None) -> Store:
    """A workspace's complete store; StoreError naming the build command when it has none."""
    ws = _pick(listing, name)
    store = find_store(ws.name, load_model(ws.model, "cpu", hosted=listing.hosted), build_dataset(ws.dataset),
                       Path(cache) if cache else None)
    if store is None:
        raise StoreError(f"Workspace '{ws.name}' has no complete activation store (never built, or interrupted or damaged): run `python -m core build {ws.name}`.")
    return store


def cmd_score(args: argparse.Namespace) -> int:
    """Run the discovery methods with their defaults on a workspace with ground truth; print
    each one's scorecard beside the confusion-cell baseline, then a JSON line."""
    import json

    # late: scikit-learn (about 1 s to import) stays off --help, list, layers and build
    from core.services.score import figures, held_out_tables, score_store

    store = _built_store(_workspaces(args), args.workspace, args.cache)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods is not None else None
    result = score_store(store, methods)
    held_out = {}
    if args.held_out:  # before printing anything, so that a refusal leaves no half report
        held_out = held_out_tables(store, methods)
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(result["table"].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"significant groups (q < 0.05): {result['significance']}")
    print(f"slices where a method beats the baseline by >= 0.3 in P@10: {', '.join(result['beats_baseline']) or 'none'}")
    if held_out:
        # late: scikit-learn (about 1 s to import) stays off --help, list, layers and build
        from core.scoring.significance import HELD_OUT_SHOWN

        for method, table in held_out.items():
            print(f"\n{method}: found on a random half, measured on the other")
            with pd.option_context("display.width", 200, "display.max_columns", 20):
                print(table[HELD_OUT_SHOWN].to_string(index=False, float_format=lambda v: f"{v:.3g}") if len(table) else "  no groups")
    print(json.dumps(figures(result)))
    return 0


def cmd_findings(args: argparse.Namespace) -> int:
    """Pool every discovery source's groups on a workspace's store, test and rank them; print a
    table (or JSON, or Markdown)."""
    import json

    # late: scikit-learn (about 1 s to import) stays off --help, list, layers and build
    from core.services.findings import find_failures

    store = _built_store(_workspaces(args), args.workspace, args.cache)
    report = find_failures(store, with_attributes=not args.without_attributes)
    if args.json:
        print(json.dumps(report.to_json()))
    elif args.markdown:
        print(report.to_markdown())
    else:
        print(report.to_text())
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Compare model B's workspace with model A's on the same images: where did B get worse,
    and is it real; print a summary (or JSON, or Markdown)."""
    import json

    # late: scikit-learn (about 1 s to import) stays off --help, list, layers and build
    from core.services.compare import compare_stores

    listing = _workspaces(args)
    store_a = _built_store(listing, args.workspace_a, args.cache)
    store_b = _built_store(listing, args.workspace_b, args.cache)
    result = compare_stores(store_a, store_b, seed=args.seed, embedding_of=args.embedding,
                            name_a=args.workspace_a, name_b=args.workspace_b)
    if args.json:
        print(json.dumps(result.to_json()))
    elif args.markdown:
        print(result.to_markdown())
    else:
        print(result.to_text())
    return 0


def cmd_demo_train(args: argparse.Namespace) -> int:
    """Train the demo CNN on a slices file with the fixed-seed recipe."""
    slices = Path(args.slices)
    out = Path(args.out) if args.out else REPO_ROOT / "cache" / "demo" / f"{slices.stem}.pt"
    options = {"epochs": args.epochs} if args.epochs is not None else {}
    figures = train_demo(slices, out, seed=args.seed, limit=args.limit, control=args.control, **options)
    print(f"weights: {out}")
    for key, value in figures.items():
        print(f"{key}: {value}")
    return 0


def parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    p = argparse.ArgumentParser(prog="python -m core", description=__doc__.splitlines()[0])
    p.add_argument("--file", help="workspace TOML file (default: $BIASLENS_WORKSPACES or ./workspaces.toml)")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="list workspaces").set_defaults(func=cmd_list)

    layers = sub.add_parser("layers", help="list a workspace's model layers")
    layers.add_argument("workspace")
    layers.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    layers.set_defaults(func=cmd_layers)

    build = sub.add_parser("build", help="build a workspace's activation store")
    build.add_argument("workspace")
    build.add_argument("--layers", nargs="+", default=None, help="layers to store: conv blocks or hidden linear layers (default: the model's default set; see `layers`)")
    build.add_argument("--batch-size", type=_whole(1, MAX_BATCH), default=None)
    build.add_argument("--num-workers", type=_whole(0, MAX_WORKERS), default=None,
                       help="loader processes (default: the workspace's num_workers; on CUDA, when it sets none, the machine's cores)")
    build.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                       help="extract on a Ray cluster (HEAD:6379), or on a local Ray without an address; needs pip install -e '.[scale]'")
    build.add_argument("--decode", choices=["auto", "pil", "torchcodec"], default="auto",
                       help="where JPEGs are decoded: torchcodec in batches where the model runs (nvJPEG on CUDA; auto picks it there), pil in the workers")
    build.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                       help="autocast the forward pass (stored outputs stay float32; see the README for the measured tolerance)")
    build.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    build.add_argument("--cache", default=None, help="cache folder (default: $BIASLENS_CACHE or ./cache)")
    build.set_defaults(func=cmd_build)

    saliency = sub.add_parser("saliency", help="compute a workspace's dataset saliency profiles (after build)")
    saliency.add_argument("workspace")
    saliency.add_argument("--layers", default=None, help="comma-separated conv layers or block prefixes (default: all)")
    saliency.add_argument("--batch-size", type=_whole(1, MAX_BATCH), default=None)
    saliency.add_argument("--yes", action="store_true", help="build without asking after the size estimate")
    saliency.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    saliency.add_argument("--cache", default=None, help="cache folder (default: $BIASLENS_CACHE or ./cache)")
    saliency.set_defaults(func=cmd_saliency)

    prepare = sub.add_parser("prepare", help="prepare a workspace for a hosted server: store, saliency profiles, default probes and layout")
    prepare.add_argument("workspace")
    prepare.add_argument("--only", default=None, metavar="STEP[,STEP]", help="run only these steps: store, saliency, probes, layouts")
    prepare.add_argument("--skip", default=None, metavar="STEP[,STEP]", help="leave these steps out")
    prepare.add_argument("--batch-size", type=_whole(1, MAX_BATCH), default=None)
    prepare.add_argument("--num-workers", type=_whole(0, MAX_WORKERS), default=None, help="loader processes for the store (as build)")
    prepare.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    prepare.add_argument("--cache", default=None, help="cache folder (default: $BIASLENS_CACHE or ./cache)")
    prepare.set_defaults(func=cmd_prepare)

    score = sub.add_parser("score", help="score the discovery methods against a workspace's planted slices (after build)")
    score.add_argument("workspace")
    score.add_argument("--methods", default=None,
                       help="comma-separated score names of the methods' records (spotlight, udis); default: every one")
    score.add_argument("--cache", default=None, help="cache folder (default: $BIASLENS_CACHE or ./cache)")
    score.add_argument("--held-out", action="store_true",
                       help="also find each method's groups on a random half and measure them on the other")
    score.set_defaults(func=cmd_score)

    findings = sub.add_parser("findings", help="where does the model fail: every method's groups pooled, tested and ranked (after build)")
    findings.add_argument("workspace")
    shown = findings.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    shown.add_argument("--markdown", action="store_true", help="print a Markdown report instead of the table")
    findings.add_argument("--without-attributes", action="store_true",
                          help="leave the dataset's attributes out (no SliceLine slices; descriptions by label and prediction)")
    findings.add_argument("--cache", default=None, help="cache folder (default: $BIASLENS_CACHE or ./cache)")
    findings.set_defaults(func=cmd_findings)

    compare = sub.add_parser("compare", help="compare two models on the same images: where did B get worse, and is it real (after build)")
    compare.add_argument("workspace_a", metavar="WS_A", help="the old model's workspace (A)")
    compare.add_argument("workspace_b", metavar="WS_B", help="the new model's workspace (B), on the same dataset")
    compared = compare.add_mutually_exclusive_group()
    compared.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    compared.add_argument("--markdown", action="store_true", help="print a Markdown report instead of the summary")
    compare.add_argument("--embedding", choices=["B", "A"], default="B", help="search the slices in B's embedding (default) or A's")
    compare.add_argument("--seed", type=int, default=0, help="the random halves of the held-out check")
    compare.add_argument("--cache", default=None, help="cache folder (default: $BIASLENS_CACHE or ./cache)")
    compare.set_defaults(func=cmd_compare)

    demo = sub.add_parser("demo", help="the planted-bias demo").add_subparsers(dest="demo_command", required=True)
    train = demo.add_parser("train", help="train the demo CNN on a slices file")
    train.add_argument("--slices", default=str(REPO_ROOT / "core" / "demo" / "slices.toml"))
    train.add_argument("--out", default=None, help="weights file (default: cache/demo/<slices name>.pt)")
    train.add_argument("--epochs", type=_whole(1, 1000), default=None)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--limit", type=_whole(1, 10**9), default=None, help="train on the first N images only")
    train.add_argument("--control", action="store_true", help="train without the plants (the control model)")
    train.set_defaults(func=cmd_demo_train)
    return p


def _whole(low: int, high: int) -> Callable[[str], int]:
    """argparse type: a whole number from ``low`` to ``high``, else a usage error naming the range."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range: use {low} to {high}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except BiasLensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: a store build (or prepare) resumes where it stopped next time", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
