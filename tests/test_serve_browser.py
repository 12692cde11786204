"""The web app in a real browser: headless Chromium (Debian's) driven by Playwright.

Screenshots of every step are saved under ``tests/artifacts/serve/`` (or ``$AGETOOL_ARTIFACTS``).
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.serving import EXAMPLE, ROOT

pytest.importorskip("gradio", reason='the web app needs the ui extra: pip install "agetool[ui]"')
playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
CHROMIUM = os.environ.get("AGETOOL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)

ARTIFACTS = Path(os.environ.get("AGETOOL_ARTIFACTS", ROOT / "tests" / "artifacts" / "serve"))
#: as root in a container, with no network: no sandbox, no GPU, no background connections
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser, url: str):
    """A page of the app at ``url`` in a browser context of its own (closing it is leaving the app)."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(120_000)
    page.goto(url)
    return page


@pytest.fixture(scope="module")
def page(browser, served):
    page = open_page(browser, served.url)
    yield page
    page.context.close()


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def fill_and_hold(page, selector: str, text: str) -> None:
    """Type ``text`` into the text field inside ``selector`` and wait until it holds there: a tab's
    fields are mounted when the tab is first shown, and a field filled while that settles can be
    reset to its initial value."""
    field = page.locator(f"{selector} textarea, {selector} input").first
    for _ in range(10):
        field.fill(text)
        page.wait_for_timeout(300)
        if field.input_value() == text:
            return
    raise AssertionError(f"{selector} did not keep {text!r}")


def upload(page, path: Path) -> None:
    """Drop ``path`` on the photo field, in place of the photo there."""
    remove = page.locator("#photo button[aria-label='Remove Image']").first
    if remove.count():
        remove.click()
    page.locator("#photo input[type=file]").set_input_files(str(path))


def image_of(page, selector: str, previous: str | None = None, width: int = 0) -> tuple[str, np.ndarray]:
    """The (src, pixels) of the image inside ``selector``, waiting for a src other than ``previous``
    (and for an image ``width`` pixels wide, where given)."""
    img = page.locator(f"{selector} img").first
    img.wait_for(state="visible")
    page.wait_for_function(
        "([sel, prev, width]) => { const i = document.querySelector(sel + ' img');"
        " return i && i.complete && i.naturalWidth > 0 && i.src !== prev"
        " && (!width || i.naturalWidth === width); }",
        arg=[selector, previous or "", width])
    src = img.get_attribute("src")
    body = page.request.get(src).body() if not src.startswith("data:") else None
    assert body is not None, "images come from the server, not inline data"
    return src, np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


def test_slider_paste_back_grid_and_video(page):
    """Upload the example, move the slider, switch on paste-back, render the grid and the video."""
    page.locator("#photo input[type=file]").set_input_files(str(EXAMPLE))
    page.wait_for_function("document.querySelector('#status').innerText.includes('1 face found')")
    src0, young = image_of(page, "#aged")
    assert young.shape == (256, 256, 3)
    # "Faces found" shows the whole aligned crop (the generator's input), not a strip cut from it
    _, thumb = image_of(page, "#faces")
    assert thumb.shape == (128, 128, 3)
    crop = np.asarray(Image.fromarray(_aligned_example()).resize((128, 128), Image.BILINEAR)).astype(int)
    above_caption = slice(0, 96)
    assert np.abs(thumb[above_caption].astype(int) - crop[above_caption]).mean() < 6
    width, height, fit = page.evaluate("() => { const i = document.querySelector('#faces img');"
                                       " const r = i.getBoundingClientRect();"
                                       " return [r.width, r.height, getComputedStyle(i).objectFit]; }")
    assert height >= 100 and (fit == "contain" or abs(width / height - 1) < 0.05), (width, height, fit)
    shot(page, "1_uploaded")

    # drag the slider to the far left: a younger face, re-rendered from the cached identity features
    slider = page.locator("#age input[type=range]")
    box = slider.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + 2, box["y"] + box["height"] / 2, steps=8)
    page.mouse.up()
    assert float(page.locator("#age input[type=number]").input_value()) < 5
    src1, child = image_of(page, "#aged", previous=src0)
    assert child.shape == (256, 256, 3) and not np.array_equal(child, young)
    shot(page, "2_slider_moved")

    # paste-back: the whole photo (512 x 512) with the face aged
    page.locator("#paste-back input[type=checkbox]").check()
    photo = np.asarray(Image.open(EXAMPLE).convert("RGB"))
    _, whole = image_of(page, "#aged", previous=src1, width=photo.shape[1])
    assert whole.shape == photo.shape
    changed = np.abs(whole.astype(int) - photo).max(axis=2) > 0
    assert 0.01 < changed.mean() < 0.6  # the face changed, the rest of the photo did not
    shot(page, "3_paste_back")

    # the grid tab has its own paste-back switch: the slider's does not turn the grid into whole photos;
    # an age past the oldest class is said in the page, not only in the server's terminal
    page.get_by_role("tab", name="Six ages").click()
    fill_and_hold(page, "#ages", "5, 80")
    page.locator("#grid-button").click()
    src_grid, grid = image_of(page, "#grid")
    assert grid.shape == (256, 3 * 256, 3)
    warning = page.locator("#grid-warnings").filter(has_text="ages over 69 (80)")
    warning.wait_for(state="visible")
    assert "render the oldest class (50-69)" in warning.inner_text()
    shot(page, "4_grid_warning")
    # with the grid's own switch on: the whole photo at each age
    fill_and_hold(page, "#ages", "")
    page.locator("#grid-paste-back input[type=checkbox]").check()
    page.locator("#grid-button").click()
    _, grid = image_of(page, "#grid", previous=src_grid)
    assert grid.shape[1] == 7 * grid.shape[0] and grid.shape[0] == photo.shape[0]
    assert page.locator("#grid-warnings").inner_text().strip() == ""
    shot(page, "4_grid")

    # the aging video renders and plays
    page.get_by_role("tab", name="Video").click()
    page.locator("#video-button").click()
    video = page.locator("#video video").first
    video.wait_for(state="attached")
    page.wait_for_function("() => { const v = document.querySelector('#video video');"
                           " return v && v.readyState >= 2 && v.duration > 1; }")
    duration = page.evaluate("document.querySelector('#video video').duration")
    assert 3 < duration < 4  # 101 frames at 30 fps
    shot(page, "5_video")
    assert len(list(ARTIFACTS.glob("*.png"))) >= 5
    print(f"screenshots: {ARTIFACTS}")


def _aligned_example() -> np.ndarray:
    """The example's face aligned as the server aligns it (dlib landmarks, 256 px)."""
    from agetool.face.align import align_face
    from agetool.face.detect import DlibDetector
    from agetool.images import read_image

    photo = read_image(EXAMPLE)
    (face, *_) = DlibDetector().detect(photo)
    return align_face(photo, face.landmarks, size=256).image


def test_errors_show_as_a_short_message(page, tmp_path):
    page.get_by_role("tab", name="Age slider").click()
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    page.locator("#photo button[aria-label='Remove Image']").first.click()
    page.locator("#photo input[type=file]").set_input_files(str(bad))
    page.wait_for_function("document.querySelector('#status').innerText.includes('not a readable image')")
    text = page.locator("#status").inner_text()
    assert "notes.png" in text and "Traceback" not in text and "agetool-serve-" not in text
    shot(page, "6_error")


def test_a_photo_without_a_face_says_so_where_it_stays(page, tmp_path):
    """No toast that vanishes and no red badges: the status line holds the message, in the page's words."""
    page.get_by_role("tab", name="Age slider").click()
    blank = tmp_path / "sky.png"
    yy, xx = np.mgrid[0:300, 0:400]
    Image.fromarray(np.stack([xx * 0.5, yy * 0.6, 200 + 0 * xx], -1).astype(np.uint8)).save(blank)
    remove = page.locator("#photo button[aria-label='Remove Image']").first
    if remove.count():
        remove.click()
    page.locator("#photo input[type=file]").set_input_files(str(blank))
    page.wait_for_function("document.querySelector('#status').innerText.includes('no face found')")
    status = page.locator("#status").inner_text()
    assert "Can't use this photo" in status and "no face found" in status and "frontal" in status
    assert "landmarks" not in status and "aligned" not in status  # no control of the page is named that way
    page.wait_for_timeout(1500)  # whatever the page would show after the request: still the same line
    assert page.locator("#status").inner_text() == status
    assert page.locator(".toast-body").count() == 0
    badges = page.get_by_text("Error", exact=True)
    assert sum(badges.nth(i).is_visible() for i in range(badges.count())) == 0  # no red "Error" badges
    shot(page, "8_no_face")
    remove = page.locator("#photo button[aria-label='Remove Image']").first
    if remove.count():
        remove.click()
        page.wait_for_function("document.querySelector('#status').innerText.includes('No photo yet')")


def test_only_faces_like_the_chosen_one(page, tmp_path):
    """A group photo (Grace Hopper, Eileen Collins); "only faces like this one" on face 0 keeps Hopper
    in the next photos, and a photo without her says so in one line."""
    import matplotlib

    page.get_by_role("tab", name="Age slider").click()
    hopper = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
    collins = Image.open(EXAMPLE).convert("RGB").resize((400, 400), Image.LANCZOS)
    hopper = hopper.resize((hopper.width * 400 // hopper.height, 400), Image.LANCZOS)
    group = Image.new("RGB", (hopper.width + collins.width, 400))
    group.paste(hopper, (0, 0))
    group.paste(collins, (hopper.width, 0))
    group_path = tmp_path / "group.png"
    group.save(group_path)

    upload(page, group_path)
    page.wait_for_function("document.querySelector('#status').innerText.includes('2 faces found')")
    page.locator("#like input[type=checkbox]").check()
    page.wait_for_function("document.querySelector('#status').innerText.includes('only faces like face 0')")
    upload(page, EXAMPLE)  # Eileen Collins alone: not the chosen person
    page.wait_for_function("document.querySelector('#status').innerText.includes('no face like the chosen one')")
    text = page.locator("#status").inner_text()
    assert "astronaut.png" in text and "closest distance" in text and "untick" in text and "Traceback" not in text
    upload(page, group_path)
    page.wait_for_function("document.querySelector('#status').innerText.includes('1 face found (only the chosen person)')")
    _, thumb = image_of(page, "#faces")
    assert thumb.shape == (128, 128, 3)  # one face: Hopper's, the left one
    shot(page, "7_faces_like_this_one")
    page.locator("#like input[type=checkbox]").uncheck()
    upload(page, group_path)
    page.wait_for_function("document.querySelector('#status').innerText.includes('2 faces found')")


def test_a_short_clip_in_the_video_tab(page, tmp_path):
    from tests.helpers import astronaut_clip

    src = astronaut_clip(tmp_path, frames=8)
    page.get_by_role("tab", name="Video").click()
    page.locator("#clip input[type=file]").set_input_files(str(src))
    page.wait_for_function("document.querySelector('#clip').innerText.includes('walk')")  # uploaded
    page.locator("#clip-button").click()
    page.wait_for_function("() => { const v = document.querySelector('#clip-video video');"
                           " return v && v.readyState >= 2 && v.duration > 0.5; }")
    duration = page.evaluate("document.querySelector('#clip-video video').duration")
    assert 0.7 < duration < 0.9  # 8 frames at 10 fps, timing kept
    src_url = page.locator("#clip-video video").first.get_attribute("src")
    body = page.request.get(src_url).body()
    assert body[4:8] == b"ftyp"  # an MP4 from the server
    shot(page, "8_clip")


@pytest.mark.parametrize("how", ["stop-button", "page-closed"])
def test_a_clip_stopped_on_the_page_stops_between_frames(browser, served, tmp_path, how):
    """A long clip started on the page, then stopped after a few frames with the Stop button, or by
    closing the page: the server stops between two frames well before the end, keeps no file of it,
    and the one slot serves the next request."""
    import re
    import time

    from tests.helpers import astronaut256, astronaut_clip, make_clip, partials

    frames = 90
    src = make_clip(astronaut256(tmp_path), tmp_path / "long.mp4", frames)
    page = open_page(browser, served.url)
    page.get_by_role("tab", name="Video").click()
    page.locator("#clip input[type=file]").set_input_files(str(src))
    page.wait_for_function("document.querySelector('#clip').innerText.includes('long')")  # uploaded
    before = len(served.log.read_text())  # the log of this test's clip only (the server is shared)
    page.locator("#clip-button").click()
    # the page says frame by frame how far the clip is: leave it at the third frame or a little later
    page.wait_for_function("([name, n]) => { const t = document.querySelector('#clip-video').innerText;"
                           " const m = new RegExp('(\\\\d+)/' + n + ' frames').exec(t);"
                           " return m && +m[1] >= 3 && t.includes('ageing ' + name); }", arg=["long.mp4", frames])
    shot(page, "9_clip_progress")
    if how == "stop-button":
        page.locator("#clip-stop").click()
    else:
        page.context.close()

    said = re.compile(rf"long\.mp4: cancelled by its client after (\d+) of {frames} frames; no file kept")
    deadline = time.monotonic() + 120
    while not (found := said.search(served.log.read_text()[before:])) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert found, f"no cancellation in the server's log:\n{served.log.read_text()[-2000:]}"
    done = int(found.group(1))
    assert 3 <= done <= frames // 2  # stopped between frames, far from the end
    results = list(served.tmp.glob("agetool-serve-*/tmp/results"))
    assert len(results) == 1
    assert not list(results[0].rglob("long*")) and not partials(served.tmp)
    # the slot is free: the next clip is aged on the same server
    gradio_client = pytest.importorskip("gradio_client")
    client = gradio_client.Client(served.url, verbose=False)
    out = Path(client.predict(gradio_client.handle_file(astronaut_clip(tmp_path)), 60, api_name="/clip"))
    assert out.name == "walk_age60.mp4" and out.read_bytes()[4:8] == b"ftyp"
    if how == "stop-button":
        page.context.close()


def test_more_looks_keep_the_most_faithful_of_their_draws(page, tmp_path):
    """The "More looks" slider at 3: the grid is made of the kept one of three noise draws, which the
    page names and the grid's record holds (read by exiftool); at 1, the run's own draw and no choice."""
    import re

    pytest.importorskip("defusedxml", reason="Pillow reads XMP with defusedxml")
    from tests.test_provenance import exif, needs_exiftool

    if needs_exiftool.args[0]:
        pytest.skip(needs_exiftool.kwargs["reason"])
    page.get_by_role("tab", name="Age slider").click()
    upload(page, EXAMPLE)
    page.wait_for_function("document.querySelector('#status').innerText.includes('1 face found')")
    page.get_by_role("tab", name="Six ages").click()
    page.locator("#grid-paste-back input[type=checkbox]").uncheck()
    fill_and_hold(page, "#ages", "20, 60")

    def grid(looks: int, previous: str | None) -> tuple[str, np.ndarray, dict, str]:
        fill_and_hold(page, "#looks", str(looks))
        page.locator("#looks input[type=number]").press("Tab")
        assert page.locator("#looks input[type=range]").input_value() == str(looks)
        page.locator("#grid-button").click()
        src, pixels = image_of(page, "#grid", previous=previous)
        png = tmp_path / f"looks{looks}.png"
        png.write_bytes(page.request.get(src).body())
        return src, pixels, exif(png), page.locator("#grid-warnings").inner_text()

    shown = page.locator("#grid img")  # an earlier test's grid, if any
    src, three, tags, notes = grid(3, shown.first.get_attribute("src") if shown.count() else None)
    shot(page, "10_more_looks")
    assert three.shape == (256, 3 * 256, 3)
    run_seed = tags["XMP-agetool:Seed"]
    kept = re.fullmatch(r"face 0: draw (\d) of 3 kept, seed (\d+): .*\(scores [-\d.]+, [-\d.]+, [-\d.]+\)",
                        notes.strip())
    assert kept, notes
    draw, seed = int(kept.group(1)), int(kept.group(2))
    assert seed == run_seed + draw  # the draws are the run's seed and the two that follow
    assert tags["XMP-agetool:Faces"][0]["Seed"] == seed  # the record names the draw kept
    _, one, tags, notes = grid(1, src)
    assert one.shape == three.shape and notes.strip() == ""
    assert tags["XMP-agetool:Seed"] == run_seed and "Seed" not in tags["XMP-agetool:Faces"][0]
    # the input column is the same; the aged columns are the run's draw again only if that one was kept
    np.testing.assert_array_equal(one[:, :256], three[:, :256])
    assert np.array_equal(one[:, 256:], three[:, 256:]) == (draw == 0)
