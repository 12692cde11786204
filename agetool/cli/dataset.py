"""`agetool dataset prepare | from-photos | ffhq-aging | attributions | takedown | stats`: training folders
in the reference layout, FFHQ-Aging from its published sources, and the care of a built folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from agetool.cli import console

dataset_app = typer.Typer(name="dataset", no_args_is_help=True, add_completion=False,
                          help=("Build training folders in the reference layout.\n\nExamples:\n\n"
                                "  agetool dataset ffhq-aging --json ffhq-dataset-v2.json --labels ffhq_aging_labels.csv "
                                "--wilds ffhq --out ffhq-aging\n\n"
                                "  agetool dataset prepare --images ffhq/images --labels ffhq_aging_labels.csv "
                                "--out ffhq-aging\n\n"
                                "  agetool dataset from-photos --csv photos.csv --out mydata"))

FAILURES_SHOWN = 50
BUILDING = "aligning and parsing"


def _build_progress(bar, task):
    """Progress of the build; where stderr is no terminal (no live ETA column) the logged line says the ETA."""
    import time

    start: list = []

    def cb(done: int, total: int) -> None:
        now = time.monotonic()
        if not start:
            start.extend((now, done))
        text = BUILDING
        if not console.err.is_terminal and done > start[1] and total:
            rate = (done - start[1]) / max(now - start[0], 1e-9)
            text += f" (ETA {console.clock((total - done) / rate)})"
        bar.update(task, completed=done, total=total, description=text)

    return cb


def _build(description: str, total: int | None, work, out: Path) -> None:
    """``work(progress)`` under a progress bar, then its report; exit 1 where it kept no image."""
    with console.progress() as bar:
        task = bar.add_task(description, total=total)
        report = work(_progress_cb(bar, task))
    _print_report(report, out)
    if report.n_kept == 0:
        raise typer.Exit(1)


def _print_report(report, out: Path) -> None:
    from rich.table import Table

    from agetool.train.prepare import REASONS

    table = Table(title=f"kept {report.n_kept} of {report.rows}", show_edge=False)
    table.add_column("folder")
    table.add_column("images", justify="right")
    for (gender, phase, group), n in sorted(report.kept.items()):
        table.add_row(f"{gender}/{phase}{group}", str(n))
    console.err.print(table)
    if report.dropped:
        dropped = Table(title=f"dropped {report.n_dropped}", show_edge=False)
        dropped.add_column("reason")
        dropped.add_column("images", justify="right")
        dropped.add_column("first")
        for reason, n in report.dropped.most_common():
            dropped.add_row(REASONS.get(reason, reason), str(n), report.examples.get(reason, ""))
        console.err.print(dropped)
    shown = 20
    for problem in report.problems[:shown]:
        console.warn(problem)
    if len(report.problems) > shown:
        console.warn(f"... and {len(report.problems) - shown} more malformed or contradictory rows")
    for note in report.notes:
        console.warn(note)
    console.info(f"output: {out}  (train on one gender folder, e.g. agetool train --data {out / 'males'} --out runs/males)")


def _progress_cb(bar, task):
    def cb(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return cb


@dataset_app.command("prepare", no_args_is_help=True)
def prepare(
    images: Annotated[Path, typer.Option("--images", help="FFHQ-Aging images (e.g. ffhq_aging256x256): <number>.png, in any subfolders.", file_okay=False)],
    labels: Annotated[Path, typer.Option("--labels", help="ffhq_aging_labels.csv.", dir_okay=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: <out>/<males|females>/<train|test><group>/.", file_okay=False)],
    parsings: Annotated[Optional[Path], typer.Option("--parsings", help="Face-parsing label maps <number>.png (default: parsings/ folders beside the images).", file_okay=False)] = None,
    train_split: Annotated[int, typer.Option("--train-split", help="Images numbered below this go to train, the rest to test.")] = 69000,
    link: Annotated[bool, typer.Option("--link", help="Hard-link instead of copying where the file system allows.")] = False,
) -> None:
    """Select FFHQ-Aging images with the dataset's rules and lay them out for training.

    Examples:

      agetool dataset prepare --images ffhq/images --labels ffhq_aging_labels.csv --out ffhq-aging

      agetool dataset prepare --images ffhq/images --parsings ffhq/parsings --labels ffhq_aging_labels.csv --out ffhq-aging --link
    """
    from agetool.train.prepare import prepare_ffhq_aging

    _build("selecting", None, lambda progress: prepare_ffhq_aging(
        images, labels, out, parsings=parsings, train_split=train_split, link=link, progress=progress), out)


@dataset_app.command("from-photos", no_args_is_help=True)
def from_photos(
    csv_file: Annotated[Path, typer.Option("--csv", help="CSV with columns path, age (years) or age_group, gender (male/female).", dir_okay=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: <out>/<males|females>/train<group>/.", file_okay=False)],
    landmarks: Annotated[str, typer.Option("--landmarks", metavar="auto|fan|dlib", help="Landmark backend: auto, fan or dlib.")] = "auto",
    parser_weights: Annotated[Optional[Path], typer.Option("--parser-weights", help="Face-parser checkpoint (default: the registry's deeplab-parser).", dir_okay=False)] = None,
    phase: Annotated[str, typer.Option("--phase", help="train or test folders.")] = "train",
    device: Annotated[str, typer.Option("--device", metavar="DEVICE", help="auto, cpu, cuda or mps.")] = "auto",
    offline: Annotated[bool, typer.Option("--offline", help="Never use the network; fail if a model file is not cached.", show_default=False)] = False,
) -> None:
    """Align and parse your own photos into the training layout (largest face of each photo), with the
    same face preparation as `agetool age`.

    Example: agetool dataset from-photos --csv photos.csv --out my-data
    """
    from agetool.device import pick_device
    from agetool.train.prepare import build_from_photos, read_photo_csv

    rows = read_photo_csv(csv_file)
    dev = pick_device(device)
    _build("aligning and parsing", len(rows), lambda progress: build_from_photos(
        rows, out, landmarks=landmarks, parser_weights=parser_weights, device=dev, offline=offline, phase=phase,
        progress=progress, report=console.info), out)


@dataset_app.command("ffhq-aging", no_args_is_help=True)
def ffhq_aging(
    metadata_json: Annotated[Path, typer.Option("--json", help="FFHQ's metadata, ffhq-dataset-v2.json (255 MB; read as a stream).", dir_okay=False)],
    labels: Annotated[Path, typer.Option("--labels", help="ffhq_aging_labels.csv of FFHQ-Aging.", dir_okay=False)],
    wilds: Annotated[str, typer.Option("--wilds", metavar="SRC", help="The in-the-wild photos: a folder in the JSON's layout (in-the-wild-images/00000/00000.png), an http(s) URL prefix of a mirror, or a URI pyarrow reads (s3://, gs://, file://).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder: <out>/<males|females>/<train|test><group>/ with parsings/.", file_okay=False)],
    resolution: Annotated[int, typer.Option("--resolution", metavar="256|512|1024", help="Image and parsing size (the LATS models use 256).")] = 256,
    ids: Annotated[Optional[str], typer.Option("--ids", metavar="LIST", help="Only these image numbers, e.g. 0-999,1500.")] = None,
    keep_wilds: Annotated[bool, typer.Option("--keep-wilds", help="Keep downloaded photos in <out>/in-the-wild-images (default: deleted after use; a local --wilds folder is never touched).")] = False,
    workers: Annotated[int, typer.Option("--workers", metavar="N", help="Threads fetching and aligning photos ahead of the parser.", min=1, max=64)] = 4,
    parser_weights: Annotated[Optional[Path], typer.Option("--parser-weights", help="Face-parser checkpoint (default: the registry's deeplab-parser).", dir_okay=False)] = None,
    train_split: Annotated[int, typer.Option("--train-split", help="Images numbered below this go to train, the rest to test.")] = 69000,
    device: Annotated[str, typer.Option("--device", metavar="DEVICE", help="Where the parser runs: auto, cpu, cuda or mps.")] = "auto",
    offline: Annotated[bool, typer.Option("--offline", help="Never download the parser; fail if it is not cached.", show_default=False)] = False,
) -> None:
    """Build FFHQ-Aging from its published sources.

    From FFHQ's metadata JSON, the FFHQ-Aging labels and the in-the-wild photos: each image the labels
    keep is checked (size, MD5), aligned from the JSON's landmarks as the dataset's builder does,
    parsed, and written in the `dataset prepare` layout. A rerun resumes; failures are listed at the
    end (exit 1). Writes ATTRIBUTION.csv and BUILD.json beside the images.

    Examples:

      agetool dataset ffhq-aging --json ffhq-dataset-v2.json --labels ffhq_aging_labels.csv --wilds ffhq --out ffhq-aging

      agetool dataset ffhq-aging --json ffhq-dataset-v2.json --labels ffhq_aging_labels.csv --wilds https://mirror.example/ffhq --out ffhq-aging --ids 0-999 --device cuda
    """
    from agetool.device import pick_device
    from agetool.train.ffhq import build_ffhq_aging, check_resolution
    from agetool.train.ffhq_meta import parse_ids

    check_resolution(resolution)
    wanted = parse_ids(ids) if ids is not None else None
    dev = pick_device(device)
    with console.progress(transient=False) as bar:
        task = bar.add_task(BUILDING, total=None)
        report = build_ffhq_aging(metadata_json, labels, wilds, out, resolution=resolution, ids=wanted,
                                  keep_wilds=keep_wilds, workers=workers, parser_weights=parser_weights,
                                  device=dev, offline=offline, train_split=train_split,
                                  progress=_build_progress(bar, task), report=console.info)
    _print_report(report, out)
    if report.finished_before:
        console.info(f"{report.finished_before} image(s) were already built and were kept as they are")
    rates = [f"{stage} {report.rate(stage):.2f} images/s" for stage in ("read", "align", "parse")
             if report.rate(stage)]
    if rates:
        console.info(f"built {report.built} image(s); per stage: " + ", ".join(rates))
    if report.failed:
        for number, why in report.failed[:FAILURES_SHOWN]:
            console.warn(f"{number:05d}: {why}")
        more = len(report.failed) - FAILURES_SHOWN
        console.error(f"{len(report.failed)} image(s) failed" + (f" ({more} more not shown)" if more > 0 else "")
                      + "; rerun the same command to retry them")
        raise typer.Exit(1)
    if report.n_kept == 0:
        raise typer.Exit(1)
    console.info("the images keep their Flickr licences (credits in ATTRIBUTION.csv); FFHQ-Aging itself is "
                 "CC BY-NC-SA 4.0: non-commercial, share alike")


@dataset_app.command("attributions", no_args_is_help=True)
def attributions(
    folder: Annotated[Path, typer.Argument(help="A built dataset folder.", file_okay=False)],
    metadata_json: Annotated[Optional[Path], typer.Option("--json", help="ffhq-dataset-v2.json (default: the one the build recorded in BUILD.json).", dir_okay=False)] = None,
) -> None:
    """Write ATTRIBUTION.csv: the credits of a built folder.

    One row per image (image number, author, photo URL, licence, licence URL), from FFHQ's metadata JSON.

    Example: agetool dataset attributions ffhq-aging
    """
    from agetool.errors import UsageError
    from agetool.train.curation import read_build, write_attributions

    if metadata_json is None:
        record = read_build(folder) or {}
        if not record.get("metadata_json"):
            raise UsageError(f"{folder}: no build record names the metadata JSON",
                             hint="pass --json ffhq-dataset-v2.json")
        metadata_json = Path(record["metadata_json"])
    path, rows, missing = write_attributions(folder, metadata_json)
    console.info(f"wrote {path} ({rows} image(s))")
    if missing:
        console.warn(f"{len(missing)} image(s) are not in {metadata_json}, first: {missing[0]:05d}")
        raise typer.Exit(1)


@dataset_app.command("takedown", no_args_is_help=True)
def takedown(
    folder: Annotated[Path, typer.Argument(help="A dataset folder (built or prepared).", file_okay=False)],
    ids_file: Annotated[Path, typer.Option("--ids", help="Text file of image numbers to remove (one or more a line, ranges such as 100-120, # comments).", dir_okay=False)],
) -> None:
    """Remove images on request and record it.

    Their pictures, parsings, kept in-the-wild photos and attribution rows go; the numbers are
    recorded in TAKEDOWN.txt, which later builds, `dataset prepare` and `agetool train` on this
    folder honour.

    Example: agetool dataset takedown ffhq-aging --ids removals.txt
    """
    from agetool.train.curation import TAKEDOWN_FILE, take_down
    from agetool.train.ffhq_meta import read_id_file

    numbers = read_id_file(ids_file)
    removed = take_down(folder, numbers)
    shown = ", ".join(f"{k}: {v}" for k, v in removed.items() if k != "recorded" and v)
    console.info(f"removed {shown or 'no files (none of them were present)'}; "
                 f"{removed.get('recorded', 0)} new number(s) recorded in {folder / TAKEDOWN_FILE}")


@dataset_app.command("stats", no_args_is_help=True)
def stats(
    folder: Annotated[Path, typer.Argument(help="A dataset folder (built or prepared).", file_okay=False)],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Also draw the histogram and removals as a PNG.", dir_okay=False)] = None,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="ffhq_aging_labels.csv, to count removals (default: the build record).", dir_okay=False)] = None,
) -> None:
    """Images per age group and gender, and how many images each selection rule removed.

    Examples:

      agetool dataset stats ffhq-aging

      agetool dataset stats ffhq-aging --out stats.png
    """
    from rich.table import Table
    from rich.text import Text

    from agetool.images import write_image
    from agetool.train.prepare import REASONS
    from agetool.train.stats import dataset_stats, draw_stats

    st = dataset_stats(folder, labels)
    table = Table(title=f"{st.total:,} images", show_edge=False)
    for name in ("age group", "males", "females", "total"):
        table.add_column(name, justify="left" if name == "age group" else "right")
    for group, males, females in st.rows():
        table.add_row(group, f"{males:,}", f"{females:,}", f"{males + females:,}")
    m = sum(r[1] for r in st.rows())
    f = sum(r[2] for r in st.rows())
    table.add_row("all", f"{m:,}", f"{f:,}", f"{m + f:,}")
    console.err.print(table)
    if st.removed:
        removed = Table(title=Text(f"removed by the selection rules ({st.removed_from})"), show_edge=False)
        removed.add_column("rule")
        removed.add_column("images", justify="right")
        for key, n in sorted(st.removed.items(), key=lambda kv: -kv[1]):
            removed.add_row(REASONS.get(key, key), f"{n:,}")
        console.err.print(removed)
    else:
        console.info("removals: no build record here; pass --labels ffhq_aging_labels.csv to count them")
    if st.taken_down:
        console.info(f"{st.taken_down} image number(s) listed in TAKEDOWN.txt")
    if out is not None:
        write_image(out, draw_stats(st))
        console.info(f"wrote {out}")
