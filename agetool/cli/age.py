"""`agetool age`: photos, folders, clips or URIs in, one grid per photo (or one clip per age) out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from agetool.cli import console
from agetool.cli.marking import marking_options
from agetool.cli.options import face_options, pipeline_options, print_profile
from agetool.cli.outputs import output_files
from agetool.options import DEFAULT_CRF

RAY_PANEL = "Ray options"


@pipeline_options
@face_options
@marking_options
def age(
    inputs: Annotated[list[str], typer.Argument(help="Photos or folders (searched recursively), or video clips (one clip per age); with --engine ray also URIs Ray reads (s3://bucket/photos).", show_default=False)],
    out: Annotated[Optional[str], typer.Option("--out", "-o", metavar="PATH", help="Grid image (one input), or folder (several inputs, an existing folder, or a path ending in /) for <stem>_ages.png. Default: here.")] = None,
    ages: Annotated[Optional[str], typer.Option("--ages", metavar="LIST", help="Ages to render instead of the six classes: years, class labels and relative ages, comma-separated (5,20.5,30-39,+20).")] = None,
    tiles: Annotated[Optional[str], typer.Option("--tiles", metavar="DIR", help="Also write every tile as DIR/<stem>/face<i>_<label>.png (with --engine ray also a URI).")] = None,
    no_labels: Annotated[bool, typer.Option("--no-labels", help="No age captions on the grid.")] = False,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Skip inputs whose grid already exists (resume a folder run).")] = False,
    crf: Annotated[int, typer.Option("--crf", metavar="Q", help="Clips: H.264 quality, 0 lossless ... 51 worst; 18 is visually lossless.")] = DEFAULT_CRF,
    truncated: Annotated[str, typer.Option("--truncated", metavar="fail|keep", help="Clips: a clip cut short (fewer frames than its index lists) fails, or with keep gives the frames it has, with a warning.")] = "fail",
    keep_candidates: Annotated[Optional[str], typer.Option("--keep-candidates", metavar="DIR", help="With --candidates: also write every draw's tiles as DIR/<stem>/face<i>_draw<k>_<label>.png and their scores as DIR/<stem>/scores.json.")] = None,
    json_lines: Annotated[bool, typer.Option("--json", help="One JSON object per face on stdout: the output, the model and, with --candidates, every draw's scores and the one kept.")] = False,
    profile: Annotated[bool, typer.Option("--profile", help="Print the time spent in each stage (with --engine ray: Ray's start-up and per-stage statistics).")] = False,
    engine: Annotated[str, typer.Option("--engine", metavar="local|ray", help="local: this process (or each torchrun rank); ray: a Ray Data job (pip install \"agetool\\[ray]\"), same outputs; grids already written are skipped.", rich_help_panel=RAY_PANEL)] = "local",
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", metavar="ADDR", help="Ray cluster to join (auto, HOST:PORT, ray://HOST:10001): start it once with `ray start --head`. Default: RAY_ADDRESS, else a private Ray on 127.0.0.1 for this job.", rich_help_panel=RAY_PANEL)] = None,
    gpus: Annotated[Optional[int], typer.Option("--gpus", metavar="N", help="GPUs to use, one generator worker each; 0: every stage on CPUs. Default: all the cluster has.", rich_help_panel=RAY_PANEL)] = None,
    cpus: Annotated[Optional[int], typer.Option("--cpus", metavar="N", help="CPUs to use (one worker each without GPUs; with GPUs the face stages, and each generator worker holds one). Default: all the cluster has.", rich_help_panel=RAY_PANEL)] = None,
    ray_timeout: Annotated[Optional[float], typer.Option("--ray-timeout", metavar="SECONDS", help="Longest wait for the cluster and for each listing, read or write at a URI. Default: 60.", rich_help_panel=RAY_PANEL)] = None,
    *, build, face_kwargs, marks,
) -> int:
    """Render each face at six ages (or --ages): one grid per photo, a row per face (left to right),
    columns = input, then one per age.

    Examples:

      agetool age me.jpg --out grid.png

      agetool age me.jpg --ages 5,20,45,80

      agetool age me.jpg --ages +20 --paste-back

      agetool age group.jpg --faces ref:me.jpg --ages 70

      agetool age me.jpg --candidates 4 --keep-candidates draws/

      agetool age clip.mp4 --ages 60

      agetool age photos/ --out grids/ --tiles tiles/

      agetool age photos/ --out grids/ --engine ray --ray-address auto

      agetool age photos/ --out grids/ --engine ray --gpus 4

      agetool age s3://bucket/photos --out s3://bucket/grids/ --engine ray

      agetool age me.jpg --ages 70 --paste-back --label --sign chain.pem --sign-key key.pem
    """
    from agetool.errors import AgetoolError, MissingModelsError, UsageError
    from agetool.images import distinct_outputs, find_images, unique_stems
    from agetool.options import request as build_request
    from agetool.results import model_words

    request = build_request(ages, **face_kwargs, keep_candidates=keep_candidates is not None)  # checked once, before any work
    if keep_candidates is not None and request.render.candidates == 1:
        raise UsageError("--keep-candidates needs --candidates 2 or more")
    _check_engine(engine, ray_address=ray_address, gpus=gpus, cpus=cpus, ray_timeout=ray_timeout,
                  keep_candidates=keep_candidates, json=json_lines or None)
    from agetool.locations import DEFAULT_TIMEOUT, is_uri
    from agetool.validate import finite

    timeout = DEFAULT_TIMEOUT if ray_timeout is None else finite("timeout", ray_timeout, low=0, low_open=True)

    to_uris = [o for o in (out, tiles) if o is not None and is_uri(o)]  # outputs in object storage
    if to_uris and engine != "ray":
        raise UsageError(f"{to_uris[0]}: a URI is written by --engine ray only", hint="add --engine ray")
    from agetool.cli.ray_engine import age_on_ray, uri_photos, uri_targets

    if any(map(is_uri, inputs)):  # photos in object storage: listed here, read by the Ray workers
        paths, several, sources = uri_photos(inputs, engine, timeout)
    else:
        from agetool.cli.clips import age_clips, clip_inputs

        inputs = [Path(i) for i in inputs]
        clips = clip_inputs(inputs)  # video clips (by content): <stem>_age<entry>.mp4 per age
        if clips:
            if keep_candidates is not None or json_lines:
                raise UsageError(f"{'--keep-candidates' if keep_candidates is not None else '--json'} applies to "
                                 "photos; a clip holds one draw per person")
            if to_uris:
                raise UsageError(f"{to_uris[0]}: clips are written to local or shared folders")
            if engine == "ray":
                raise UsageError("--engine ray: takes photos; clips are aged by this process", hint="drop --engine ray")
            marks.check_models(build, face_kwargs, clip=True)
            return age_clips(clips, out, ages, request, crf, build, profile, marks=marks, truncated=truncated)
        paths = sources = find_images(inputs)
        if not paths:
            raise UsageError("no images found in the given folders")
        several = len(paths) > 1 or any(p.is_dir() for p in inputs)
    marks.check_models(build, face_kwargs)
    stems = unique_stems(paths)  # a.jpg + a.png + a_2.png: three grids and three tile folders
    if out is not None and is_uri(out):
        targets = uri_targets(stems, out, several, "_ages.png", paths)
    else:
        targets = output_files(stems, out, several, "_ages.png")
        distinct_outputs([("out", t) for t in targets], sources)
    if tiles is not None and not is_uri(tiles):  # face<i>_<label>.png: the face count is known only during the work
        import re

        from agetool.images import outputs_clear

        tiles = Path(tiles)
        if tiles.is_file():
            raise UsageError(f"--tiles {tiles}: is a file; expected a folder")
        labels = "|".join(re.escape(label) for label in request.render.labels)
        for stem in stems:
            outputs_clear("tiles", tiles / stem, rf"face(0|[1-9][0-9]*)_(input|{labels})\.png", sources, tiles)
    if keep_candidates is not None:
        import re

        from agetool.images import outputs_clear

        keep_candidates = Path(keep_candidates)
        if keep_candidates.is_file():
            raise UsageError(f"--keep-candidates {keep_candidates}: is a file; expected a folder")
        labels = "|".join(re.escape(label) for label in request.render.labels)
        for stem in stems:
            outputs_clear("keep_candidates", keep_candidates / stem,
                          rf"face(0|[1-9][0-9]*)_draw[0-9]+_({labels})(_[0-9]+)?\.png|scores\.json", sources,
                          keep_candidates)
    if engine == "ray":
        from agetool.locations import join as inside

        jobs = [(path, target, None if tiles is None else inside(str(tiles), stem))
                for path, stem, target in zip(paths, stems, targets)]
        return age_on_ray(jobs, ages=request, labels=not no_labels, pipeline=build.options,
                          signing=marks.signing, label=marks.label,
                          address=ray_address, gpus=gpus, cpus=cpus, timeout=timeout, profile=profile)

    from agetool.shards import env_dist, join, total

    dist = env_dist()  # under torchrun each rank takes every world-th photo
    join(dist)  # every rank running, before any work (a bounded wait)
    mine = dist.shard(list(zip(paths, stems, targets)))
    failed = done = 0
    with console.progress() as bar:
        pipe = build(bar)
        task = bar.add_task("ageing", total=len(mine))
        for path, stem, target in mine:
            bar.update(task, description=f"ageing {path.name}")
            if skip_existing and target.exists():
                bar.advance(task)
                continue
            try:
                result = marks.apply(pipe.age(path, request))
                result.write_grid(target, labels=not no_labels)
                if tiles is not None:
                    result.write_tiles(tiles / stem)
                if keep_candidates is not None:
                    result.write_candidates(keep_candidates / stem)
                n = len(result.faces)
                console.info(f"{path} -> {target}  ({n} face{'s' if n != 1 else ''}, {model_words(result.faces)})")
                if json_lines:
                    _print_scores(path, target, result)
                done += 1
            except AgetoolError as e:
                if not several or e.exit_code != 1 or isinstance(e, MissingModelsError):  # said once, for all
                    raise
                console.error(console.message(e))
                failed += 1
            bar.advance(task)
    if profile:
        print_profile(pipe)
    done, failed = total([done, failed], dist)
    if several and dist.main:
        console.info(f"done: {done} written, {failed} failed, {len(paths) - done - failed} skipped")
    return 1 if failed else 0


def _print_scores(path: Path, target: Path, result) -> None:
    """``--json``: one line per face with its model and draws (``AgingResult.scores``)."""
    import json

    for face in result.scores():
        console.out.print(json.dumps({"file": str(path), "out": str(target), **face}), markup=False,
                          highlight=False, soft_wrap=True)


def _check_engine(engine: str, **ray_options) -> None:
    from agetool.errors import UsageError

    if engine not in ("local", "ray"):
        raise UsageError(f"--engine {engine}: expected local or ray")
    local = {k: ray_options.pop(k, None) for k in ("keep_candidates", "json")}
    if engine == "ray":
        for name, value in local.items():
            if value is not None:
                raise UsageError(f"--{name.replace('_', '-')} applies to --engine local")
    if engine != "ray":
        for name, value in ray_options.items():
            if value is not None:
                raise UsageError(f"--{name.replace('_', '-')} applies to --engine ray")
