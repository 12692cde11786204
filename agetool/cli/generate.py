"""`agetool age` and `agetool video`."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Optional

import typer

from agetool.cli import app
from agetool.cli import console

# ---------------------------------------------------------------- shared options
Model = Annotated[str, typer.Option("--model", help="Generator: auto (chosen per face by a gender classifier), male or female.")]
Weights = Annotated[Optional[Path], typer.Option("--weights", help="Generator checkpoint: the released latest_net_g_running.pth, males_model.zip / females_model.zip, or an agetool .safetensors. Overrides --model.", dir_okay=False)]
ParserWeights = Annotated[Optional[Path], typer.Option("--parser-weights", help="Face-parser checkpoint (released deeplab_model.pth or agetool .safetensors).", dir_okay=False)]
Landmarks = Annotated[str, typer.Option("--landmarks", help="Landmark backend: auto (fan if its weights are present, else dlib), fan or dlib.")]
Offline = Annotated[bool, typer.Option("--offline", help="Never use the network; fail if a model file is not cached.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
Dtype = Annotated[str, typer.Option("--dtype", help="Generator precision: float32 (matches the original to 1e-4), bfloat16 (about 2x faster where the hardware has native bfloat16; ~56 dB PSNR against float32), float16 (GPU only), or auto (bfloat16 on CUDA and on CPUs with AVX512-BF16 or AMX, else float32).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the class-code noise: the same seed gives the same output.")]
Noise = Annotated[float, typer.Option("--noise", help="Sigma of the class-code noise (0 = clean codes).")]
Aligned = Annotated[bool, typer.Option("--aligned", help="Input is already an aligned face crop: no detection or alignment.")]
NoMask = Annotated[bool, typer.Option("--no-mask", help="Don't paint the background gray before the generator.")]
PasteBack = Annotated[bool, typer.Option("--paste-back", help="Show the whole photo with the aged face blended back in.")]
Faces = Annotated[str, typer.Option("--faces", help="all faces, or only the largest.")]
MinFace = Annotated[int, typer.Option("--min-face", help="Skip faces smaller than this many pixels (with a warning).")]
MaxPixels = Annotated[int, typer.Option("--max-pixels", help="Refuse images with more pixels than this.")]
Batch = Annotated[Optional[int], typer.Option("--batch", help="Frames decoded at once (default: chosen from the device).", min=1)]
Profile = Annotated[bool, typer.Option("--profile", help="Print the time spent in each stage.")]


def _options(**kw):
    from agetool.pipeline import Options

    return Options(**kw)


def _pipeline(options, device: str, dtype: str, bar=None):
    from agetool.cli.weights import progress_factory
    from agetool.pipeline import Pipeline

    progress = progress_factory(bar) if bar is not None else None

    dev = console.pick_device(device)
    dt = console.pick_dtype(dtype, dev)
    return Pipeline(options, device=dev, dtype=dt, report=_report, progress=progress)


def _report(message: str) -> None:
    if message.startswith("warning: "):
        console.warn(message[len("warning: "):])
    else:
        console.info(message)


def _print_profile(pipeline) -> None:
    from rich.table import Table

    table = Table(title="stage times", show_edge=False)
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for stage, secs in pipeline.timings.items():
        table.add_row(stage, f"{secs:.3f}")
    table.add_row("total", f"{sum(pipeline.timings.values()):.3f}", style="bold")
    console.err.print(table)


def _sigint_as_keyboard_interrupt() -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# ---------------------------------------------------------------- age
@app.command(no_args_is_help=True)
def age(
    inputs: Annotated[list[Path], typer.Argument(help="Photos or folders (searched recursively).", show_default=False)],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Grid image (one input) or folder (several). Default: <stem>_ages.png here.")] = None,
    tiles: Annotated[Optional[Path], typer.Option("--tiles", help="Also write every tile as DIR/<stem>/face<i>_<label>.png.", file_okay=False)] = None,
    no_labels: Annotated[bool, typer.Option("--no-labels", help="No age captions on the grid.")] = False,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Skip inputs whose grid already exists (resume a folder run).")] = False,
    model: Model = "auto", weights: Weights = None, parser_weights: ParserWeights = None,
    landmarks: Landmarks = "auto", offline: Offline = False, device: Device = "auto", dtype: Dtype = "float32",
    seed: Seed = 0, noise: Noise = 0.2, aligned: Aligned = False, no_mask: NoMask = False,
    paste_back: PasteBack = False, faces: Faces = "all", min_face: MinFace = 0,
    max_pixels: MaxPixels = 40_000_000, batch: Batch = None, profile: Profile = False,
) -> int:
    """Render each face at six ages: one grid per photo (rows = faces, columns = input + 0-2 ... 50-69).

    Examples:

      agetool age me.jpg --out grid.png

      agetool age photos/ --out grids/ --tiles tiles/

      agetool age crop.png --aligned --model female
    """
    from agetool.errors import AgetoolError, UsageError
    from agetool.images import find_images, grid, write_image
    from agetool.pipeline import class_labels

    _sigint_as_keyboard_interrupt()
    options = _options(model=model, weights=weights, parser_weights=parser_weights, landmarks=landmarks,
                       offline=offline, seed=seed, noise=noise, aligned=aligned, mask=not no_mask,
                       paste_back=paste_back, faces=faces, min_face=min_face, max_pixels=max_pixels, batch=batch)
    paths = find_images(inputs)
    if not paths:
        raise UsageError("no images found in the given folders")
    several = len(paths) > 1 or any(p.is_dir() for p in inputs)
    if several and out is not None and out.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"):
        raise UsageError(f"--out {out}: with several inputs --out is a folder")
    targets = _targets(paths, out, several, "_ages.png")

    failed: list[tuple[Path, str]] = []
    done = 0
    with console.progress() as bar:
        pipeline = _pipeline(options, device, dtype, bar)
        task = bar.add_task("ageing", total=len(paths))
        for path, target in zip(paths, targets):
            bar.update(task, description=f"ageing {path.name}")
            if skip_existing and target.exists():
                bar.advance(task)
                continue
            try:
                photo = pipeline.prepare(path)
                aged = pipeline.age(photo)
                rows = [_row(pipeline, photo, a, paste_back) for a in aged]
                labels = None if no_labels else class_labels()
                write_image(target, grid([_fit_grid(row) for row in rows] if paste_back else rows, labels))
                if tiles is not None:
                    for a, row in zip(aged, rows):
                        for label, tile in zip(class_labels(), row):
                            write_image(tiles / path.stem / f"face{a.face.index}_{label}.png", tile)
                console.info(f"{path} -> {target}  ({len(aged)} face{'s' if len(aged) != 1 else ''}, "
                             f"{', '.join(sorted({a.model for a in aged}))} model)")
                done += 1
            except AgetoolError as e:
                if not several or e.exit_code != 1:
                    raise
                console.error(console.message(e))
                failed.append((path, console.message(e)))
            bar.advance(task)
    if profile:
        _print_profile(pipeline)
    if several:
        console.info(f"done: {done} written, {len(failed)} failed, {len(paths) - done - len(failed)} skipped")
    return 1 if failed else 0


def _row(pipeline, photo, aged, paste_back: bool) -> list:
    """Grid row of one face: the aligned input then six classes, or whole photos with --paste-back."""
    if not paste_back:
        return [aged.face.aligned, *aged.classes]
    return [photo.image, *(pipeline.paste(photo, aged.face, tile) for tile in aged.classes)]


def _fit_grid(row: list, long_side: int = 512) -> list:
    from agetool.images import resize

    h, w = row[0].shape[:2]
    scale = min(1.0, long_side / max(h, w))
    size = (max(2, round(w * scale)), max(2, round(h * scale)))
    return [resize(t, size) for t in row]


def _targets(paths: list[Path], out: Path | None, several: bool, suffix: str) -> list[Path]:
    if not several:
        return [out if out is not None else Path(paths[0].stem + suffix)]
    folder = out if out is not None else Path(".")
    seen: dict[str, int] = {}
    targets = []
    for p in paths:
        name = p.stem + suffix
        if name in seen:
            seen[name] += 1
            name = f"{p.stem}_{seen[name]}{suffix}"
        else:
            seen[name] = 1
        targets.append(folder / name)
    return targets


# ---------------------------------------------------------------- video
@app.command(no_args_is_help=True)
def video(
    input: Annotated[Path, typer.Argument(help="A photo (or an aligned crop with --aligned).", show_default=False)],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="MP4 file. Default: <stem>_aging.mp4 here.")] = None,
    fps: Annotated[float, typer.Option("--fps", help="Frames per second.", min=1)] = 30.0,
    steps: Annotated[int, typer.Option("--steps", help="Frames per transition between age classes: 5 x N + 1 frames.", min=1)] = 20,
    hold: Annotated[float, typer.Option("--hold", help="Seconds to hold the first and last frame in the MP4.", min=0)] = 0.0,
    crf: Annotated[int, typer.Option("--crf", help="H.264 quality: 0 lossless ... 51 worst; 18 is visually lossless.", min=0, max=51)] = 18,
    frames_dir: Annotated[Optional[Path], typer.Option("--frames", help="Also write every frame as DIR/frame_00000.png ...", file_okay=False)] = None,
    caption: Annotated[bool, typer.Option("--caption", help="Print the age class on each frame of the MP4.")] = False,
    model: Model = "auto", weights: Weights = None, parser_weights: ParserWeights = None,
    landmarks: Landmarks = "auto", offline: Offline = False, device: Device = "auto", dtype: Dtype = "float32",
    seed: Seed = 0, noise: Noise = 0.2, aligned: Aligned = False, no_mask: NoMask = False,
    paste_back: PasteBack = False, faces: Faces = "all", min_face: MinFace = 0,
    max_pixels: MaxPixels = 40_000_000, batch: Batch = None, profile: Profile = False,
) -> int:
    """Continuous aging from 0-2 to 50-69 as an H.264 MP4 (faces side by side, or the whole photo with --paste-back).

    Examples:

      agetool video me.jpg --fps 30

      agetool video me.jpg --paste-back --out me.mp4

      agetool video crop.png --aligned --steps 5 --frames frames/
    """
    import numpy as np

    from agetool.ages import frame_age_label, frame_count
    from agetool.images import caption as draw_caption, even_size, resize, write_image
    from agetool.video import VideoWriter

    _sigint_as_keyboard_interrupt()
    options = _options(model=model, weights=weights, parser_weights=parser_weights, landmarks=landmarks,
                       offline=offline, seed=seed, noise=noise, aligned=aligned, mask=not no_mask,
                       paste_back=paste_back, faces=faces, min_face=min_face, max_pixels=max_pixels, batch=batch)
    target = out if out is not None else Path(input.stem + "_aging.mp4")
    writer = VideoWriter(target, fps=fps, crf=crf)
    total = frame_count(steps)
    written: list[Path] = []
    try:
        with console.progress() as bar:
            pipeline = _pipeline(options, device, dtype, bar)
            photo = pipeline.prepare(input)
            task = bar.add_task(f"rendering {total} frames", total=total)
            hold_n = int(round(hold * fps))
            frame = None
            for i, tiles in enumerate(pipeline.frames(photo, steps)):
                if paste_back:
                    canvas = photo.image
                    for face, tile in zip(photo.faces, tiles):
                        canvas = pipeline.paste(photo, face, tile, canvas=canvas)
                    frame = _fit_video(canvas, resize)
                else:
                    frame = np.concatenate(tiles, axis=1) if len(tiles) > 1 else tiles[0]
                frame = even_size(frame)
                if frames_dir is not None:
                    written.append(write_image(frames_dir / f"frame_{i:05d}.png", frame))
                shown = draw_caption(frame, frame_age_label(i, steps)) if caption else frame
                for _ in range(1 + (hold_n if i == 0 else 0)):
                    writer.write(shown)
                bar.advance(task)
            for _ in range(hold_n):
                writer.write(shown)
            writer.close()
    except BaseException:
        writer.abort()
        raise
    console.info(f"{input} -> {target}  ({writer.frames} frames, {writer.frames / fps:.1f} s at {fps:g} fps)")
    if profile:
        _print_profile(pipeline)
    return 0


def _fit_video(image, resize_fn, long_side: int = 1080):
    h, w = image.shape[:2]
    scale = min(1.0, long_side / max(h, w))
    if scale < 1.0 or w % 2 or h % 2:
        nw, nh = max(2, int(w * scale) // 2 * 2), max(2, int(h * scale) // 2 * 2)
        return resize_fn(image, (nw, nh))
    return image
