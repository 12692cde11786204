"""The page: photo in, faces found, an age slider, the grid of six ages, the aging video.

Built with Gradio Blocks on a ``Studio``. Three events are named for programs (``gradio_client``):
``age`` (photo, ages text) -> grid PNG, ``video`` (photo) -> MP4 and ``clip`` (clip, age) -> MP4;
the page's own events are private. Every event that runs a network shares one queue slot: one
model set, one job at a time.
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path

from agetool.ages import AGE_CLASSES
from agetool.errors import AgetoolError, NoFaceError, NoMatchError, UsageError
from agetool.serve.studio import MAX_AGE, MAX_CLIP_SECONDS, MAX_LOOKS, MIN_AGE, MODELS, Session, Studio

log = logging.getLogger("agetool.serve")

TEMP_PATH = re.compile(r"/[^\s'\")]*agetool-serve-[^\s'\")]*")
MODEL_SLOT = "model"  # concurrency id shared by every event that runs a network
START_AGE = 34.5

CSS = """
#status p { margin: 0; }
footer { display: none !important; }
"""

INTRO = """## agetool: age progression
Drop a photo (or pick the example below), then move the slider. The face is encoded once; each
slider position only blends the age latents and decodes one image."""


def short_message(e: Exception, path: str | None = None) -> str:
    """A one-line message for the page, with the upload's temporary path shortened to its name."""
    text = e.render() if isinstance(e, AgetoolError) else str(e)
    if path:
        text = text.replace(str(path), Path(path).name)
        text = TEMP_PATH.sub(Path(path).name, text)  # also where a message cut the path short
    return text.splitlines()[0] if text else type(e).__name__


#: what the page offers where the command line's hint names its flags
PAGE_HINTS = {NoFaceError: "try a larger photo with the face frontal and in full view"}


def page_message(e: AgetoolError, path: str | None = None) -> str:
    """``e`` in the page's words: its message, and a hint naming what the page offers (the command
    line's hints name flags the page has no control for)."""
    for kind, hint in PAGE_HINTS.items():
        if type(e) is kind:
            e = kind(e.message, hint=hint)
    return short_message(e, path)


def plain(text: str) -> str:
    """``text`` for a Markdown component, read as it is (file names such as my_model_2.safetensors)."""
    import re

    return re.sub(r"([\\`*_{}\[\]()#+\-.!<>|~])", r"\\\1", text)


def photo_error(text: str) -> str:
    """A failure to use the dropped photo, for the status line (plain text, never read as markup)."""
    return "**Can't use this photo:** " + plain(text)


def guarded(fn):
    """Run a handler; failures become one short message in the page (details only in the terminal)."""
    import gradio as gr

    @functools.wraps(fn)
    def run(*args):
        try:
            return fn(*args)
        except gr.Error:
            raise
        except AgetoolError as e:
            path = args[0] if args and isinstance(args[0], str) else None
            raise gr.Error(page_message(e, path), print_exception=False) from None
        except MemoryError:
            raise gr.Error("out of memory; try a smaller photo", print_exception=False) from None
        except Exception as e:  # noqa: BLE001 - the page shows one line, the terminal the traceback
            log.exception("request failed")
            raise gr.Error(f"internal error: {type(e).__name__} (details in the server's terminal)",
                           print_exception=False) from None

    import typing

    try:  # the annotations as objects: Gradio then sees the gr.Request parameter as its own, not an input
        run.__annotations__ = typing.get_type_hints(fn, localns={"gr": gr})
    except (NameError, TypeError):
        pass
    return run


def cancelled(demo, request):
    """``stop()`` for a request's work: true once Gradio has given up on the session's running job
    (the page was closed or the job cancelled), so the work ends between two decodes or frames. Made
    when the handler starts, it knows which running job is the request's."""
    session = getattr(request, "session_hash", None)

    def running() -> list:
        queue = getattr(demo, "_queue", None)
        return [event for job in (getattr(queue, "active_jobs", None) or []) if job for event in job]

    mine = [event for event in running() if event.session_hash == session]  # this request's job, running now

    def stop() -> bool:
        jobs = running()
        if any(event.session_hash == session and not event.alive for event in jobs):
            return True
        # a job cancelled by its client (the page's stop button, a program's cancel) leaves the queue's
        # running jobs while its handler goes on: it is over for the client, so the work ends too
        return bool(mine) and not any(event is job for event in mine for job in jobs)

    return stop


def tolerant(component):
    """Let ``component`` pass an upload it can't open on as a path, so that reading it (with its
    size and pixel limits) reports what is wrong in one line instead of Gradio's generic error."""
    strict = component.preprocess

    def preprocess(payload):
        try:
            return strict(payload)
        except Exception:  # noqa: BLE001 - reported by Studio.read
            return getattr(payload, "path", None)

    component.preprocess = preprocess
    return component


def build_app(studio: Studio, example: Path | None = None, title: str = "agetool"):
    import gradio as gr

    fixed = studio.fixed_model is not None
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    slot = {"concurrency_id": MODEL_SLOT, "concurrency_limit": 1}
    private = {"api_visibility": "private"}

    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        demo.agetool_theme, demo.agetool_css = theme, CSS  # passed to launch() by the server
        session = gr.State(None, time_to_live=3600)
        like = gr.State(None, time_to_live=3600)  # the chosen person's Embedding, or None: every face
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1):
                photo = tolerant(gr.Image(label="Photo", type="filepath", image_mode=None,
                                          sources=["upload", "clipboard"], height=360, elem_id="photo"))
                if example is not None:
                    gr.Examples([[str(example)]], inputs=[photo], label="Example")
                with gr.Row():
                    model = gr.Dropdown(list(MODELS), value=studio.model if studio.model in MODELS else "auto", label="Model", interactive=not fixed,
                                        visible=not fixed, elem_id="model")
                    mask = gr.Checkbox(True, label="Mask background", elem_id="mask")
                faces = gr.Image(label="Faces found (aligned crops)", type="numpy",
                                 format="png", interactive=False, height=150, buttons=[], elem_id="faces")
                face = gr.Dropdown(choices=[("face 0", 0)], value=0, label="Face", elem_id="face")
                like_box = gr.Checkbox(False, label="Next photos: only faces like this one", elem_id="like")
                status = gr.Markdown("No photo yet.", elem_id="status")
            with gr.Column(scale=1):
                with gr.Tabs():
                    with gr.Tab("Age slider", id="slider"):
                        age = gr.Slider(MIN_AGE, MAX_AGE, value=START_AGE, step=0.5, label="Age (years)",
                                        elem_id="age")
                        paste_back = gr.Checkbox(False, label="Paste back into the whole photo (this tab)",
                                                 elem_id="paste-back")
                        aged = gr.Image(label="At this age", type="numpy", format="png", interactive=False,
                                        height=400, elem_id="aged")
                    with gr.Tab("Six ages", id="grid"):
                        ages = gr.Textbox("", label="Ages", elem_id="ages",
                                          placeholder="years and/or classes, e.g. 5, 20.5, 45 (empty: "
                                                      + ", ".join(AGE_CLASSES) + ")")
                        grid_paste_back = gr.Checkbox(False, label="Whole photos: paste the aged faces back "
                                                      "(this tab)", elem_id="grid-paste-back")
                        looks = gr.Slider(1, MAX_LOOKS, value=1, step=1, elem_id="looks",
                                          label="More looks: draws per face, the one most like the person kept "
                                                "(identity, skin tone, gender)")
                        grid_button = gr.Button("Render grid", variant="primary", elem_id="grid-button")
                        grid_notes = gr.Markdown("", elem_id="grid-warnings")
                        grid_image = gr.Image(label="Grid", type="filepath", format="png", interactive=False,
                                              elem_id="grid")
                        with gr.Row():
                            grid_file = gr.DownloadButton("Download grid", interactive=False, elem_id="grid-download")
                            tiles_file = gr.DownloadButton("Download tiles (zip)", interactive=False,
                                                           elem_id="tiles-download")
                    with gr.Tab("Video", id="video"):
                        video_paste_back = gr.Checkbox(False, label="Whole photo: paste the aged faces back "
                                                       "(this tab)", elem_id="video-paste-back")
                        video_button = gr.Button("Render video", variant="primary", elem_id="video-button")
                        video = gr.Video(label="Aging video", interactive=False, autoplay=True, loop=True,
                                         elem_id="video")
                        video_file = gr.DownloadButton("Download video", interactive=False,
                                                       elem_id="video-download")
                        gr.Markdown(f"**Or age a short clip** (up to {MAX_CLIP_SECONDS:g} s): every face in "
                                    "every frame, the audio kept. The photo above is not used.")
                        clip_in = gr.File(label="Clip (MP4, MOV, MKV, WebM or AVI)", type="filepath",
                                          file_types=["video"], elem_id="clip")
                        clip_age = gr.Slider(MIN_AGE, MAX_AGE, value=60, step=0.5, label="Age (years)",
                                             elem_id="clip-age")
                        with gr.Row():
                            clip_button = gr.Button("Age clip", variant="primary", elem_id="clip-button")
                            clip_stop = gr.Button("Stop", variant="stop", elem_id="clip-stop")
                        clip_out = gr.Video(label="Aged clip", interactive=False, autoplay=True, loop=True,
                                            elem_id="clip-video")
                        clip_file = gr.DownloadButton("Download clip", interactive=False, elem_id="clip-download")
        with gr.Column(visible=False):  # the endpoints for programs
            api_photo = tolerant(gr.Image(type="filepath", image_mode=None))
            api_ages = gr.Textbox()
            api_grid = gr.Image(type="filepath", format="png")
            api_video = gr.File()
            api_clip, api_clip_age, api_clip_out = gr.File(type="filepath"), gr.Number(), gr.File()
            api_age_button, api_video_button, api_clip_button = gr.Button(), gr.Button(), gr.Button()

        # ---------------------------------------------------------------- page events
        @guarded
        def on_photo(path, model_choice, masked, at, whole, person):
            empty = (None, None, gr.update(choices=[("face 0", 0)], value=0))
            if path is None:
                return *empty, "No photo yet.", None
            try:
                s = studio.encode(path, model_choice, masked, like=person)
            except NoMatchError as e:  # the page's own way out: the switch, not a threshold
                text = (f"{Path(path).name}: no face like the chosen one (closest {e.metric} {e.closest:.3f}, "
                        f"same person at {e.threshold:g}); untick \"Next photos: only faces like this one\" "
                        "to see every face")
                return *empty, photo_error(text), None  # shown where it stays; the outputs simply empty
            except AgetoolError as e:
                return *empty, photo_error(page_message(e, path)), None
            gallery = studio.thumbnails(s)
            choices = [(f"face {f.index}", i) for i, f in enumerate(s.encoded.faces)]
            n = len(choices)
            text = (f"{n} face{'s' if n != 1 else ''} found{' (only the chosen person)' if person else ''}.  \n"
                    + "  \n".join(map(plain, studio.describe(s))))
            return s, gallery, gr.update(choices=choices, value=0), text, studio.at_age(s, 0, at, whole)

        @guarded
        def on_like(s: Session | None, index, on):
            if not on:
                return None, gr.update()
            if s is None:
                raise gr.Error("drop a photo first", print_exception=False)
            index = int(index or 0)
            return studio.like(s, index), f"Next photos: only faces like face {index} of this one."

        @guarded
        def on_age(s: Session | None, index, at, whole):
            if s is None:
                return None
            return studio.at_age(s, int(index or 0), at, whole)

        @guarded
        def on_grid(s: Session | None, text, whole, draws, request: gr.Request):
            if s is None:
                raise gr.Error("drop a photo first", print_exception=False)
            render = studio.options(text, draws)  # the ages parsed once, before any model runs
            choices: list[str] = []
            png, archive = studio.grid(s, render, whole, stop=cancelled(demo, request), choices=choices)
            notes = "  \n".join([*(f"**Warning:** {w}" for w in studio.warnings(render)), *choices])
            return (str(png), gr.update(value=str(png), interactive=True),
                    gr.update(value=str(archive), interactive=True), notes)

        @guarded
        def on_video(s: Session | None, whole):
            if s is None:
                raise gr.Error("drop a photo first", print_exception=False)
            mp4 = studio.video(s, whole)
            return str(mp4), gr.update(value=str(mp4), interactive=True)

        def clip_job(path, at, model_choice, masked, request, progress=None) -> str:
            """The aged clip of a request: the page's progress says frame by frame how far it is; work
            its client gave up on (the page closed, the job cancelled) stops between two frames, and
            the server's log says so."""
            stop = cancelled(demo, request)
            done = [0, 0]

            def frame(n: int, total: int) -> None:
                done[:] = n, total
                if progress is not None:
                    progress((n, total), desc=f"ageing {Path(path).name}", unit="frames")

            try:
                return str(studio.clip(path, at, model_choice, masked, stop=stop, frame=frame))
            except UsageError:
                if stop():
                    log.warning("%s: cancelled by its client after %d of %d frames; no file kept",
                                Path(path).name, *done)
                raise

        @guarded
        def on_clip(path, model_choice, masked, at, request: gr.Request, progress=gr.Progress()):
            mp4 = clip_job(path, at, model_choice, masked, request, progress)
            return mp4, gr.update(value=mp4, interactive=True)

        encode_inputs = [photo, model, mask, age, paste_back, like]
        encode_outputs = [session, faces, face, status, aged]
        photo.change(on_photo, encode_inputs, encode_outputs, trigger_mode="always_last", **slot, **private)
        for control in (model, mask):
            control.input(on_photo, encode_inputs, encode_outputs, trigger_mode="always_last", **slot, **private)
        for control in (like_box, face):
            control.input(on_like, [session, face, like_box], [like, status], **slot, **private)
        slider_inputs = [session, face, age, paste_back]
        age.change(on_age, slider_inputs, aged, trigger_mode="always_last", show_progress="hidden", **slot,
                   **private)
        for control in (face, paste_back):
            control.input(on_age, slider_inputs, aged, trigger_mode="always_last", **slot, **private)
        grid_button.click(on_grid, [session, ages, grid_paste_back, looks], [grid_image, grid_file, tiles_file, grid_notes],
                          **slot, **private)
        video_button.click(on_video, [session, video_paste_back], [video, video_file], **slot, **private)
        clip_event = clip_button.click(on_clip, [clip_in, model, mask, clip_age], [clip_out, clip_file], **slot,
                                       **private)
        clip_stop.click(None, None, None, cancels=[clip_event])  # ends between two frames, no file kept

        # ---------------------------------------------------------------- endpoints for programs
        @guarded
        def age_endpoint(path, text, request: gr.Request):
            """The grid for the photo: the input and one column per age ("5,45"; empty: the six classes)."""
            render = studio.options(text)  # the ages parsed once, before any model runs
            png, _ = studio.grid(studio.encode(path), render, stop=cancelled(demo, request))
            return str(png)

        @guarded
        def video_endpoint(path):
            """The aging MP4 of the photo, youngest to oldest."""
            return str(studio.video(studio.encode(path)))

        @guarded
        def clip_endpoint(path, at, request: gr.Request):
            """The clip with every face aged to ``at`` years (up to 10 s; audio kept), as MP4."""
            return clip_job(path, 60.0 if at is None else at, None, True, request)

        api_age_button.click(age_endpoint, [api_photo, api_ages], api_grid, api_name="age", **slot)
        api_clip_button.click(clip_endpoint, [api_clip, api_clip_age], api_clip_out, api_name="clip", **slot)
        api_video_button.click(video_endpoint, [api_photo], api_video, api_name="video", **slot)
    return demo
