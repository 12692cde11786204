"""``agetool age DIR --engine ray``: a folder aged by a Ray Data job on a local Ray, against the plain run.

The Ray runs are subprocesses (the command line starts a local Ray with two CPUs and stops it), so
Ray's processes stay out of the test process and its memory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import ROOT, cli, common, face_like


def _agetool(args: list, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agetool", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=600)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _ray_processes(marker: str) -> list[str]:
    """Command lines of running processes that mention ``marker`` (this test's Ray temp folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmd:
                found.append(cmd)
    return found


@pytest.fixture()
def ray_env():
    """The environment of a Ray run: no usage reports, Ray's files in a folder of this test's own
    (short: Ray's socket paths must fit 107 bytes), removed afterwards."""
    pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="agr", dir="/tmp")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_DISABLE_USAGE_STATS": "1", "RAY_TMPDIR": temp}
    env.pop("RAY_ADDRESS", None)
    yield env
    leftover = _ray_processes(temp) if sys.platform.startswith("linux") else []
    shutil.rmtree(temp, ignore_errors=True)
    assert not leftover, f"Ray processes left running: {leftover}"


def test_ray_folder_run_matches_the_plain_run_and_resumes(tmp_path, weights, ray_env):
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    for i in range(11):
        Image.fromarray(face_like(64, seed=i)).save(src / ("sub" if i % 4 == 0 else ".") / f"p{i:02d}.png")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    opts = [*common(weights), "--seed", "3"]

    plain = _agetool(["age", src, "--out", tmp_path / "plain", "--tiles", tmp_path / "plain_tiles", *opts], ray_env)
    assert plain.returncode == 1, plain.stderr[-3000:]
    assert "done: 11 written, 1 failed, 0 skipped" in plain.stderr

    out, tiles = tmp_path / "ray", tmp_path / "ray_tiles"
    args = ["age", src, "--out", out, "--tiles", tiles, *opts, "--engine", "ray", "--cpus", "2"]
    run = _agetool(args, ray_env)
    assert run.returncode == 1, run.stderr[-3000:]
    assert "done: 11 written, 1 failed, 0 skipped" in run.stderr, run.stderr[-3000:]
    failed = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(failed) == 1 and "broken.png" in failed[0] and "can't decode image" in failed[0], failed
    assert "Traceback" not in run.stderr
    assert "MapBatches(GeneratorStage)" in run.stderr  # Ray's progress
    grids = _files(out)
    assert len(grids) == 11
    assert grids == _files(tmp_path / "plain")  # byte for byte
    assert _files(tiles) == _files(tmp_path / "plain_tiles")
    assert len(_files(tiles)) == 11 * 7

    # a rerun makes only what is missing: here one grid and its tiles
    (out / "p05_ages.png").unlink()
    shutil.rmtree(tiles / "p05")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = _agetool(args, ray_env)
    assert again.returncode == 1, again.stderr[-3000:]
    assert "done: 1 written, 1 failed, 10 skipped" in again.stderr, again.stderr[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name in before} == before
    assert _files(out) == grids
    assert _files(tiles) == _files(tmp_path / "plain_tiles")

    # the same folder given as a URI (as s3://bucket/photos would be): listed here, read by the workers
    # and the outputs as URIs too: grids and tiles where the URIs say
    uri_out, uri_tiles = tmp_path / "from_uri", tmp_path / "from_uri_tiles"
    by_uri = _agetool(["age", src.as_uri(), "--out", uri_out.as_uri() + "/", "--tiles", uri_tiles.as_uri(), *opts,
                       "--engine", "ray", "--cpus", "2"], ray_env)
    assert by_uri.returncode == 1, by_uri.stderr[-3000:]
    assert "done: 11 written, 1 failed, 0 skipped" in by_uri.stderr, by_uri.stderr[-3000:]
    assert f"{src.as_uri()}/broken.png" in by_uri.stderr
    assert _files(uri_out) == grids
    assert _files(uri_tiles) == _files(tmp_path / "plain_tiles")


def test_engine_options_are_checked_before_any_work(tmp_path, weights, crop, capsys):
    code, _, err = cli(["age", crop, "--gpus", "1", *common(weights)], capsys)
    assert code == 2 and "--gpus applies to --engine ray" in err
    code, _, err = cli(["age", crop, "--engine", "spark", *common(weights)], capsys)
    assert code == 2 and "--engine spark" in err
    code, out, _ = cli(["age", "--help"], capsys)
    assert code == 0 and 'pip install "agetool[ray]"' in " ".join(out.replace("│", " ").split())


def test_uris_are_listed_before_any_work_and_need_the_ray_engine(tmp_path, weights, crop, capsys):
    from agetool.locations import list_photos

    folder = tmp_path / "in"
    (folder / "deep").mkdir(parents=True)
    for name in ("b.png", "deep/a.JPG", ".hidden.png", "notes.txt"):
        (folder / name).write_bytes(b"x")
    assert list_photos(folder.as_uri()) == [f"{folder.as_uri()}/b.png", f"{folder.as_uri()}/deep/a.JPG"]
    assert list_photos(f"{folder.as_uri()}/b.png") == [f"{folder.as_uri()}/b.png"]
    code, _, err = cli(["age", folder.as_uri(), *common(weights)], capsys)
    assert code == 2 and "a URI is read by --engine ray only" in err
    code, _, err = cli(["age", crop, "--out", "s3://bucket/grids/", *common(weights)], capsys)
    assert code == 2 and "s3://bucket/grids/: a URI is written by --engine ray only" in err
    code, _, err = cli(["age", f"{folder.as_uri()}/b.png", "--out", f"{folder.as_uri()}/b.png", "--engine", "ray",
                        *common(weights)], capsys)
    assert code == 2 and "is an input" in err
    code, _, err = cli(["age", folder.as_uri(), crop, "--engine", "ray", *common(weights)], capsys)
    assert code == 2 and "separate runs" in err
    code, _, err = cli(["age", (tmp_path / "none").as_uri(), "--engine", "ray", *common(weights)], capsys)
    assert code == 1 and "no such file or folder" in err
    code, _, err = cli(["age", f"{folder.as_uri()}/b.png", "--out", folder / "b.png", "--engine", "ray", *common(weights)],
                       capsys)
    assert code == 2 and "is an input" in err  # the local file a file:// URI names, refused before any work


def test_without_ray_the_error_names_the_extra(tmp_path, weights, crop):
    """With ray not importable, one line naming the extra to install, exit 1."""
    shadow = tmp_path / "shadow"
    (shadow / "ray").mkdir(parents=True)
    (shadow / "ray" / "__init__.py").write_text("raise ImportError('no ray here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow), str(ROOT)])}
    r = _agetool(["age", crop, "--out", tmp_path / "g.png", *common(weights), "--engine", "ray"], env)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("error:")
    assert 'pip install "agetool[ray]"' in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "g.png").exists()


def test_stages_are_plain_callables_for_your_own_pipeline(tmp_path, weights):
    """The stages run on batches as Ray Data hands them (dicts of arrays), here without Ray: a photo
    by path, one given as bytes, one by file:// URI, and a broken one that fails alone."""
    import numpy as np

    pytest.importorskip("pyarrow")
    from agetool.errors import InputError
    from agetool.pipeline import AgingPipeline
    from agetool.ray import FaceStage, GeneratorStage, error_from, write_results

    photo = tmp_path / "me.png"
    Image.fromarray(face_like(seed=4)).save(photo)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    rows = [(str(photo), None), ("mem/me.png", photo.read_bytes()), (photo.as_uri(), None), (str(broken), None)]
    batch = {"photo": np.array([r[0] for r in rows], dtype=object),
             "bytes": np.array([r[1] for r in rows], dtype=object),
             "grid": np.array([str(tmp_path / f"g{i}.png") for i in range(4)], dtype=object),
             "tiles": np.array([str(tmp_path / "t0"), "", "", ""], dtype=object)}
    models = {"weights": weights, "device": "cpu"}
    options = {"aligned": True, "mask": False, "seed": 2}
    faces = FaceStage(models, options=options)  # threads: left as they are in this process
    out = write_results(GeneratorStage(models, options=options)(faces(batch)), labels=False)
    assert list(out["error"][:3]) == ["", "", ""]
    assert "broken.png" in out["error"][3] and isinstance(error_from(out["failure"][3]), InputError)
    assert not (tmp_path / "g3.png").exists()
    want = AgingPipeline.from_pretrained(weights=weights, device="cpu")(photo, aligned=True, mask=False, seed=2)
    for i in range(3):
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"g{i}.png")), want.grid_array(labels=False))
    assert sorted(p.name for p in (tmp_path / "t0").iterdir())[0] == "face0_0-2.png"
    # rows as ray.data.read_binary_files(..., include_paths=True) makes them: path and bytes
    read = {"path": np.array(["bucket/me.png"], dtype=object), "bytes": np.array([photo.read_bytes()], dtype=object),
            "grid": np.array([str(tmp_path / "g4.png")], dtype=object)}
    out = write_results(GeneratorStage(models, options=options)(faces(read)), labels=False)
    assert list(out["photo"]) == ["bucket/me.png"] and list(out["error"]) == [""]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "g4.png")), want.grid_array(labels=False))


def test_results_go_to_object_storage(tmp_path, weights, monkeypatch):
    """Grids and tiles written to URIs of a filesystem that is not local (pyarrow's in-memory one
    stands in for s3://): the same bytes as the local files, and a rerun sees them as done."""
    import numpy as np

    pyarrow_fs = pytest.importorskip("pyarrow.fs")
    from agetool import locations
    from agetool.locations import exists
    from agetool.ray import FaceStage, GeneratorStage, Job, write_results

    bucket = pyarrow_fs._MockFileSystem()
    monkeypatch.setattr(locations, "_filesystem", lambda uri: (bucket, uri.split("://", 1)[1]))
    photo = tmp_path / "me.png"
    Image.fromarray(face_like(seed=5)).save(photo)
    rows = [Job(str(photo), "mock://bucket/grids/me_ages.png", "mock://bucket/tiles/me").row(),
            Job(str(photo), str(tmp_path / "me_ages.png"), str(tmp_path / "tiles" / "me")).row()]
    batch = {key: np.array([r[key] for r in rows], dtype=object) for key in rows[0]}
    models, options = {"weights": weights, "device": "cpu"}, {"aligned": True, "mask": False}
    out = write_results(GeneratorStage(models, options=options)(FaceStage(models, options=options)(batch)))
    assert list(out["error"]) == ["", ""]
    assert exists("mock://bucket/grids/me_ages.png") and not exists("mock://bucket/grids/other.png")

    def read(path: str) -> bytes:
        with bucket.open_input_stream(path) as stream:
            return stream.read()

    assert read("bucket/grids/me_ages.png") == (tmp_path / "me_ages.png").read_bytes()
    local = sorted((tmp_path / "tiles" / "me").iterdir())
    assert len(local) == 7
    for tile in local:
        assert read(f"bucket/tiles/me/{tile.name}") == tile.read_bytes()


class _FakeRay:
    """Enough of ``ray`` to see what ``build_dataset`` asks of a cluster of ``resources``."""

    def __init__(self, resources: dict):
        from types import SimpleNamespace

        self.resources, self.stages = resources, []
        fake = self

        class Dataset:
            def map_batches(self, fn, **kwargs):
                fake.stages.append((getattr(fn, "__name__", fn), kwargs))
                return self

        self.data = SimpleNamespace(from_items=lambda rows, **kw: Dataset(),
                                    ActorPoolStrategy=lambda **kw: ("actors", kw),
                                    TaskPoolStrategy=lambda **kw: ("tasks", kw))

    def cluster_resources(self) -> dict:
        return self.resources


@pytest.mark.parametrize("resources, cpus, gpus, want", [
    ({"CPU": 16, "GPU": 4}, None, None, (4, 1, 1.0, 12)),   # one generator per GPU, the face stages the rest
    ({"CPU": 2}, None, None, (1, 0, 1.0, 1)),               # no GPU: one generator on a CPU
    ({"CPU": 1}, None, None, (1, 0, 0.5, 1)),               # fewer CPUs than actors: shares, never a wait
    ({"CPU": 64, "GPU": 8}, 10, 2, (2, 1, 1.0, 8)),         # capped by --cpus and --gpus
])
def test_resources_of_the_stages(resources, cpus, gpus, want):
    from agetool.ray import Job, build_dataset

    fake = _FakeRay(resources)
    build_dataset(fake, [Job("a.png", "a_ages.png")], pipeline=None, ages=None, labels=True, options=None,
                  cpus=cpus, gpus=gpus, threads=None, batch_size=1)
    (face, f), (gen, g), (write, w) = fake.stages
    assert (face, gen, write) == ("FaceStage", "GeneratorStage", "write_results")
    assert (g["compute"][1]["size"], g["num_gpus"], g["num_cpus"], f["compute"][1]["max_size"]) == want
    assert f["num_cpus"] == g["num_cpus"] and w["num_cpus"] == 0


def test_more_gpus_than_the_cluster_has_is_a_usage_error():
    from agetool.errors import UsageError
    from agetool.ray import Job, build_dataset

    with pytest.raises(UsageError, match="gpus=2: the Ray cluster has 0 GPU"):
        build_dataset(_FakeRay({"CPU": 4}), [Job("a.png", "a_ages.png")], pipeline=None, ages=None, labels=True,
                      options=None, cpus=None, gpus=2, threads=None, batch_size=1)


def test_a_job_parses_its_ages_once_and_hands_every_actor_the_same_request(monkeypatch):
    from agetool import ages
    from agetool.options import AgeRequest
    from agetool.ray import Job, build_dataset

    calls = []
    parse = ages.parse_ages
    monkeypatch.setattr(ages, "parse_ages", lambda *a, **k: calls.append(a) or parse(*a, **k))
    fake = _FakeRay({"CPU": 4})
    build_dataset(fake, [Job("a.png", "a_ages.png")], pipeline=None, ages="5,+20,30-39", labels=True,
                  options={"seed": 3, "mask": False}, cpus=None, gpus=None, threads=None, batch_size=1)
    (_, f), (_, g), _ = fake.stages
    request = f["fn_constructor_kwargs"]["request"]
    assert isinstance(request, AgeRequest) and g["fn_constructor_kwargs"]["request"] is request
    assert [t.entry for t in request.render.targets] == ["5", "+20", "30-39"] and request.render.seed == 3
    assert len(calls) == 1
