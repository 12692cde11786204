"""``agetool age DIR --engine ray``: folders aged by Ray Data jobs, against the plain run.

One local Ray cluster serves the module (started with ``ray start`` as a user would: a head and a
second node on this machine, one CPU each, token authentication on), and the jobs attach to it; one
test starts a private Ray to see it stop on signals. Ray's processes are found by the temp folder in
their environment and ended by process id; every test checks that none is left.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import ROOT, cli, common, face_like, free_port, partials


def _agetool(args: list, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agetool", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _spawn(args: list, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "agetool", *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _ray_processes(marker: str) -> list[int]:
    """Processes whose environment holds ``marker`` (a Ray temp folder of this module): Ray's servers
    and the workers they start (whose command lines Ray rewrites) inherit it."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if f"RAY_TMPDIR={marker}\0".encode() in (entry / "environ").read_bytes() + b"\0":
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _end(marker: str) -> None:
    """End the Ray processes started with ``marker`` (by process id), then wait until they are gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _ray_processes(marker):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + 20
        while _ray_processes(marker) and time.monotonic() < deadline:
            time.sleep(0.2)


def _ray_env(home: Path) -> dict:
    """A Ray run's environment: Ray's files in a folder of its own (short: socket paths must fit 107
    bytes), its own home (Ray keeps a token in ~/.ray), no usage reports."""
    temp = tempfile.mkdtemp(prefix="agr", dir="/tmp")
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_DISABLE_USAGE_STATS": "1", "RAY_TMPDIR": temp,
           "HOME": str(home)}
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A running two-node Ray on this machine, as ``ray start`` makes it: a head on 127.0.0.1 with token
    authentication and one CPU, and a second node joining it with one CPU. Yields (address, env of a
    job: the token in RAY_AUTH_TOKEN and nothing else), and ends every process of it after."""
    pytest.importorskip("ray")
    env = _ray_env(tmp_path_factory.mktemp("home"))
    env["RAY_AUTH_TOKEN"] = secrets.token_hex(16)
    ray_cli = [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.exit(main())"]
    address = f"127.0.0.1:{free_port()}"
    try:
        for args in (["--head", "--node-ip-address", "127.0.0.1", "--port", address.split(":")[1],
                      "--include-dashboard", "false"], ["--address", address]):
            started = subprocess.run([*ray_cli, "start", *args, "--num-cpus", "1", "--disable-usage-stats"],
                                     env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True,
                                     timeout=300)
            assert started.returncode == 0, started.stderr[-3000:]
        yield address, env
    finally:
        _end(env["RAY_TMPDIR"])
        left = _ray_processes(env["RAY_TMPDIR"])
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
        assert not left, f"Ray processes left running: {[_cmdline(p) for p in left]}"


@pytest.fixture(scope="module")
def folder(tmp_path_factory, weights):
    """Eight photos (two in a subfolder), one broken file, and the plain run's grids and tiles of them."""
    base = tmp_path_factory.mktemp("folder")
    src = base / "photos"
    (src / "sub").mkdir(parents=True)
    for i in range(8):
        Image.fromarray(face_like(64, seed=i)).save(src / ("sub" if i % 4 == 0 else ".") / f"p{i:02d}.png")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    opts = [*common(weights), "--seed", "3"]
    plain = _agetool(["age", src, "--out", base / "plain", "--tiles", base / "plain_tiles", *opts],
                     {**os.environ, "PYTHONPATH": str(ROOT)})
    assert plain.returncode == 1, plain.stderr[-3000:]
    assert "done: 8 written, 1 failed, 0 skipped" in plain.stderr
    return src, opts, _files(base / "plain"), _files(base / "plain_tiles")


@pytest.mark.slow  # Ray clusters and agetool processes
def test_jobs_on_a_running_two_node_cluster_make_the_plain_runs_files(tmp_path, cluster, folder):
    """Attached by --ray-address over the loopback with the token in RAY_AUTH_TOKEN: the plain run's
    bytes, a few lines of output (Ray's own logging quiet), --profile's per-stage rows; then by
    RAY_ADDRESS with outputs at file:// URIs, written from both nodes; then a rerun that finishes."""
    address, env = cluster
    src, opts, grids, tiles = folder
    out, tile_dir = tmp_path / "ray", tmp_path / "ray_tiles"
    args = ["age", src, "--out", out, "--tiles", tile_dir, *opts, "--engine", "ray"]
    run = _agetool([*args, "--ray-address", address, "--profile"], env)
    assert run.returncode == 1, run.stderr[-3000:]
    assert "done: 8 written, 1 failed, 0 skipped" in run.stderr, run.stderr[-3000:]
    failed = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(failed) == 1 and "broken.png" in failed[0] and "can't decode image" in failed[0], failed
    assert "Traceback" not in run.stderr and "private Ray" not in run.stderr
    assert _files(out) == grids and _files(tile_dir) == tiles  # byte for byte
    assert len(tiles) == 8 * 7
    assert "Ray start-up:" in run.stderr and "MapBatches(FusedStage)" in run.stderr  # --profile
    assert "Remote wall time" in run.stderr and "Output num rows" in run.stderr
    # quiet: a line per photo, the failure, the summary and the profile, none of Ray's own logging
    before_profile = run.stderr.split("Ray start-up:")[0].strip().splitlines()
    assert len(before_profile) <= 8 + 1 + 8 + 2, before_profile
    assert not [line for line in before_profile if " INFO " in line or "WARNING" in line], before_profile

    uri_out, uri_tiles = tmp_path / "uri", tmp_path / "uri_tiles"
    by_uri = _agetool(["age", src, "--out", uri_out.as_uri() + "/", "--tiles", uri_tiles.as_uri(), *opts,
                       "--engine", "ray", "--profile"], {**env, "RAY_ADDRESS": address})
    assert by_uri.returncode == 1, by_uri.stderr[-3000:]
    assert _files(uri_out) == grids and _files(uri_tiles) == tiles
    assert "2 nodes used" in by_uri.stderr, by_uri.stderr  # one worker on each node

    # a rerun makes only what is missing: here one grid and its tiles
    (out / "p05_ages.png").unlink()
    shutil.rmtree(tile_dir / "p05")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = _agetool([*args, "--ray-address", address], env)
    assert again.returncode == 1, again.stderr[-3000:]
    assert "done: 1 written, 1 failed, 7 skipped" in again.stderr, again.stderr[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name in before} == before
    assert _files(out) == grids and _files(tile_dir) == tiles


_GPU_PATH = """
import json, sys
from pathlib import Path
import ray
from agetool.ray import FaceStage, GeneratorStage, Job, write_results

src, out, weights = map(Path, sys.argv[1:4])
ray.init(address=sys.argv[4], include_dashboard=False, log_to_driver=False)
rows = [Job(str(p), str(out / (p.stem + "_ages.png"))).row() for p in sorted(src.rglob("*.png"))]
stage = dict(fn_constructor_kwargs={"pipeline": {"model": str(weights), "device": "cpu"},
                                    "options": {"aligned": True, "mask": False, "seed": 3}},
             compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1, batch_size=2, batch_format="numpy")
faces = ray.data.from_items(rows).map_batches(FaceStage, **stage).materialize()
schema = faces.schema()
rows = faces.map_batches(GeneratorStage, **stage).map_batches(write_results, batch_size=2,
                                                             batch_format="numpy").take_all()
print(json.dumps({"types": dict(zip(schema.names, map(str, schema.types))),
                  "errors": sorted(str(r["error"]) for r in rows if str(r["error"]))}))
"""


@pytest.mark.slow  # Ray clusters and agetool processes
def test_the_gpu_stages_hand_faces_on_as_numeric_columns(tmp_path, cluster, folder):
    """FaceStage -> GeneratorStage -> write_results through Ray's object store (on CPUs here): the
    prepared faces travel as uint8 and int64 tensor columns beside a small pickle, and the grids are
    the plain run's bytes."""
    import json

    address, env = cluster
    src, _, grids, _ = folder
    out = tmp_path / "gpu_path"
    out.mkdir()
    weights = next(a for a in folder[1] if str(a).endswith(".safetensors"))
    run = subprocess.run([sys.executable, "-c", _GPU_PATH, src, out, weights, address],
                         env={**env, "RAY_AUTH_MODE": "token"},
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads(run.stdout.strip().splitlines()[-1])
    types = doc["types"]
    assert "uint8" in types["prepared_data"] and "Tensor" in types["prepared_data"], types
    assert "int64" in types["prepared_sizes"] and "Tensor" in types["prepared_sizes"], types
    assert [e.split(":")[0].endswith("broken.png") for e in doc["errors"]] == [True]
    assert _files(out) == grids


@pytest.mark.slow  # Ray clusters and agetool processes
def test_a_job_signs_and_labels_its_outputs_as_the_plain_run_does(tmp_path, cluster, weights, seeded_parser_file):
    """--sign and --label on Ray: every file carries valid Content Credentials (the test CA is not
    trusted, nothing else fails) and the pixels of the plain run with the same flags."""
    import numpy as np

    pytest.importorskip("c2pa", reason='signing needs the c2pa extra: pip install "agetool[c2pa]"')
    from tests.test_provenance import _actions, _certificates, _reader

    address, env = cluster
    src = tmp_path / "photos"
    src.mkdir()
    astronaut = Image.open(ROOT / "examples" / "astronaut.png").convert("RGB").resize((256, 256), Image.LANCZOS)
    for i in range(2):
        (astronaut if i == 0 else astronaut.transpose(Image.FLIP_LEFT_RIGHT)).save(src / f"s{i}.png")
    chain, key, _ = _certificates(tmp_path)
    args = ["--no-mask", "--weights", weights, "--parser-weights", seeded_parser_file, "--device", "cpu",
            "--landmarks", "dlib", "--ages", "60", "--paste-back", "--label", "--sign", chain, "--sign-key", key]
    plain = _agetool(["age", src, "--out", tmp_path / "plain", "--tiles", tmp_path / "plain_tiles", *args],
                     {**os.environ, "PYTHONPATH": str(ROOT)})
    assert plain.returncode == 0, plain.stderr[-3000:]
    run = _agetool(["age", src, "--out", tmp_path / "ray", "--tiles", tmp_path / "ray_tiles", *args, "--engine", "ray",
                    "--ray-address", address], env)
    assert run.returncode == 0, run.stderr[-3000:]
    pixels = lambda p: np.asarray(Image.open(p))  # noqa: E731
    for folder in ("", "_tiles"):
        want, got = _files(tmp_path / f"plain{folder}"), _files(tmp_path / f"ray{folder}")
        assert sorted(got) == sorted(want) and len(got) >= 2
        for name in got:
            path = tmp_path / f"ray{folder}" / name
            assert np.array_equal(pixels(path), pixels(tmp_path / f"plain{folder}" / name)), name
            manifest, results = _reader(path)
            assert _actions(manifest), name
            assert [f["code"] for f in results["activeManifest"]["failure"]] == ["signingCredential.untrusted"]


@pytest.mark.slow  # Ray clusters and agetool processes
def test_a_worker_killed_mid_job_is_retried(tmp_path, cluster, folder):
    """A worker's process killed (SIGKILL) while the job runs: Ray restarts it and retries its batch;
    the job ends with the plain run's files, none twice, no temporary file left."""
    address, env = cluster
    src, opts, grids, tiles = folder
    out, tile_dir = tmp_path / "ray", tmp_path / "ray_tiles"
    proc = _spawn(["age", src, "--out", out, "--tiles", tile_dir, *opts, "--engine", "ray", "--ray-address",
                   address], env)
    try:
        deadline, victim = time.monotonic() + 300, None
        while victim is None and time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and any(out.iterdir()):  # the workers are at work
                workers = [p for p in _ray_processes(env["RAY_TMPDIR"]) if "FusedStage" in _cmdline(p)]
                victim = workers[0] if workers else None
            time.sleep(0.05)
        assert victim is not None, "no worker seen at work"
        written_at_kill = len(list(out.iterdir()))
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert written_at_kill < 8
    assert proc.returncode == 1, err[-3000:]
    assert "done: 8 written, 1 failed, 0 skipped" in err, err[-3000:]
    assert _files(out) == grids and _files(tile_dir) == tiles
    assert partials(out) == [] and partials(tile_dir) == []


@pytest.mark.slow  # Ray clusters and agetool processes
def test_retries_after_a_worker_died_are_bounded_and_said_in_one_line():
    """A batch whose worker keeps dying (a photo that runs it out of memory every time) is retried a
    bounded number of times with the installed Ray, then stops the job with one line, not a traceback."""
    import ray
    from ray.exceptions import ActorDiedError

    from agetool.errors import ResourceError
    from agetool.ray.job import BATCH_RETRIES, _restarts, _worker_died

    assert 0 < BATCH_RETRIES < 10
    limits = _restarts(ray, max_restarts=-1, max_task_retries=BATCH_RETRIES)
    assert limits == {"max_restarts": -1, "max_task_retries": BATCH_RETRIES}  # this Ray takes them
    wrapped = RuntimeError("Ray Data stopped")
    wrapped.__cause__ = ActorDiedError()
    error = _worker_died(wrapped)
    assert isinstance(error, ResourceError) and error.exit_code == 1
    assert str(error).startswith("a Ray worker's process died and the job could not go on (The actor died")
    assert "\n" not in str(error) and "run again to finish the rest" in error.hint
    assert _worker_died(RuntimeError("something else")) is None
    # a worker that could not start: its agetool error, from the text of Ray's report
    from agetool.errors import CheckpointError
    from agetool.ray.job import _agetool_cause

    from ray.exceptions import RayTaskError

    start = ActorDiedError(RayTaskError("FusedStage.__init__", "Traceback (most recent call last):\n  ...\n"
                                        "agetool.errors.CheckpointError: parser_weights='x.pth': no such file",
                                        KeyError("lost on the way")))
    assert _agetool_cause(RuntimeError("Ray Data stopped")) is None
    wrapped.__cause__ = start
    cause = _agetool_cause(wrapped)
    assert isinstance(cause, CheckpointError) and str(cause) == "parser_weights='x.pth': no such file"


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


@pytest.mark.slow  # Ray clusters and agetool processes
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
    models = {"model": weights, "device": "cpu"}
    options = {"aligned": True, "mask": False, "seed": 2}
    faces = FaceStage(models, options=options)  # threads: left as they are in this process
    out = write_results(GeneratorStage(models, options=options)(faces(batch)), labels=False)
    assert list(out["error"][:3]) == ["", "", ""]
    assert "broken.png" in out["error"][3] and isinstance(error_from(out["failure"][3]), InputError)
    assert not (tmp_path / "g3.png").exists()
    want = AgingPipeline.from_pretrained(model=weights, device="cpu")(photo, aligned=True, mask=False, seed=2)
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
    models, options = {"model": weights, "device": "cpu"}, {"aligned": True, "mask": False}
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
                if isinstance(fn, type):  # a stage with its constructor's arguments built in
                    kwargs["fn_constructor_kwargs"] = fn.arguments
                fake.stages.append((getattr(fn, "__name__", fn), kwargs))
                return self

        self.data = SimpleNamespace(Dataset=Dataset, from_items=lambda rows, **kw: Dataset(),
                                    ActorPoolStrategy=lambda **kw: ("actors", kw),
                                    TaskPoolStrategy=lambda **kw: ("tasks", kw))

    def cluster_resources(self) -> dict:
        return self.resources


@pytest.mark.parametrize("resources, cpus, gpus, want", [
    ({"CPU": 16, "GPU": 4}, None, None, (4, 1, 1.0, 12)),   # one generator per GPU, the face stages the rest
    ({"CPU": 1, "GPU": 1}, None, None, (1, 1, 0.5, 1)),     # fewer CPUs than actors: shares, never a wait
    ({"CPU": 64, "GPU": 8}, 10, 2, (2, 1, 1.0, 8)),         # capped by --cpus and --gpus
])
def test_resources_of_the_stages_with_gpus(resources, cpus, gpus, want):
    from agetool.ray import Job, build_dataset
    from agetool.ray.job import BATCH_RETRIES

    fake = _FakeRay(resources)
    build_dataset(fake, [Job("a.png", "a_ages.png")], pipeline=None, ages=None, labels=True, options=None,
                  cpus=cpus, gpus=gpus)
    (face, f), (gen, g), (write, w) = fake.stages
    assert (face, gen, write) == ("FaceStage", "GeneratorStage", "write_results")
    assert (g["compute"][1]["size"], g["num_gpus"], g["num_cpus"], f["compute"][1]["max_size"]) == want
    assert f["num_cpus"] == g["num_cpus"] and w["num_cpus"] == 0
    assert f["compute"][1]["max_tasks_in_flight_per_actor"] == 2  # the next batch waits at each actor
    assert f["fn_constructor_kwargs"]["threads"] == 1
    assert f["max_task_retries"] == g["max_task_retries"] == w["max_retries"] == BATCH_RETRIES  # never forever


@pytest.mark.parametrize("resources, cpus, photos, want", [
    ({"CPU": 2}, None, 48, (2, 3)),      # one fused worker per CPU; batches of a few photos
    ({"CPU": 2}, None, 3, (2, 1)),
    ({"CPU": 16}, None, 3, (3, 1)),      # no more workers than photos
    ({"CPU": 64}, 8, 1000, (8, 4)),      # capped by --cpus; at most four photos a batch
    ({"CPU": 4, "GPU": 2}, None, 8, None),
])
def test_a_node_without_gpus_runs_one_fused_stage_per_cpu(resources, cpus, photos, want):
    from agetool.ray import Job, build_dataset
    from agetool.ray.job import BATCH_RETRIES

    fake = _FakeRay(resources)
    build_dataset(fake, [Job(f"{i}.png", f"{i}_ages.png") for i in range(photos)], pipeline=None, ages=None,
                  labels=False, options=None, cpus=cpus, gpus=0 if want is None else None)
    ((name, kw),) = fake.stages  # one operator: nothing handed between processes
    assert name == "FusedStage" and kw["num_cpus"] == 1 and kw["fn_constructor_kwargs"]["threads"] == 1
    assert kw["max_task_retries"] == BATCH_RETRIES
    assert kw["fn_constructor_kwargs"]["labels"] is False
    if want is not None:
        assert (kw["compute"][1]["size"], kw["batch_size"]) == want


def test_more_gpus_than_the_cluster_has_is_a_usage_error():
    from agetool.errors import UsageError
    from agetool.ray import Job, build_dataset

    with pytest.raises(UsageError, match="gpus=2: the Ray cluster has 0 GPU"):
        build_dataset(_FakeRay({"CPU": 4}), [Job("a.png", "a_ages.png")], pipeline=None, ages=None, labels=True,
                      options=None, cpus=None, gpus=2)


@pytest.mark.slow  # Ray clusters and agetool processes
def test_a_private_ray_stops_on_signals_and_leaves_nothing(tmp_path, weights):
    """SIGTERM while a private Ray works: exit 143 within seconds, no Ray process left, no partial
    file; Ctrl-C while it starts: exit 130, the same. It said it was private and bound to 127.0.0.1."""
    pytest.importorskip("ray")
    src = tmp_path / "photos"
    src.mkdir()
    for i in range(40):
        Image.fromarray(face_like(64, seed=i)).save(src / f"p{i:02d}.png")
    for sig, code, when in ((signal.SIGTERM, 143, "working"), (signal.SIGINT, 130, "starting")):
        env = _ray_env(tmp_path / "home")
        out = tmp_path / f"out{code}"
        proc = _spawn(["age", src, "--out", out, *common(weights), "--engine", "ray", "--cpus", "1"], env)
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and proc.poll() is None:
                ready = (out.exists() and any(out.iterdir())) if when == "working" else \
                    any("raylet" in _cmdline(p) for p in _ray_processes(env["RAY_TMPDIR"]))
                if ready:
                    break
                time.sleep(0.05)
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            proc.send_signal(sig)
            t0 = time.monotonic()
            _, err = proc.communicate(timeout=120)
            took = time.monotonic() - t0
            gone = time.monotonic() + 15  # processes the command ended may take a moment to go
            while _ray_processes(env["RAY_TMPDIR"]) and time.monotonic() < gone:
                time.sleep(0.2)
            left = _ray_processes(env["RAY_TMPDIR"])
            left_lines = [_cmdline(p) for p in left]
        finally:
            proc.kill()
            _end(env["RAY_TMPDIR"])
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
        assert proc.returncode == code, err[-3000:]
        assert took < 60, took
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error:"), err[-3000:]
        assert "private Ray" in err and "127.0.0.1 only" in err
        assert not left, (sig, left_lines)  # ended by the command itself
        assert partials(out) == [] if out.exists() else True


@pytest.mark.slow  # Ray clusters and agetool processes
def test_a_cluster_that_cannot_be_reached_is_one_line(tmp_path, weights, crop):
    """A refused address: one line naming it and what to check, exit 1, at once (no Ray retries)."""
    pytest.importorskip("ray")
    env = _ray_env(tmp_path / "home")
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    r = _agetool(["age", crop, "--out", tmp_path / "g.png", *common(weights), "--engine", "ray",
                  "--ray-address", f"127.0.0.1:{port}"], env, timeout=300)
    took = time.monotonic() - t0
    shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    assert r.returncode == 1, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --ray-address 127.0.0.1:{port}: can't reach"), lines
    assert "ray start --head" in lines[0] and not (tmp_path / "g.png").exists()
    assert took < 120, took  # the command's own start-up; Ray's retries would take minutes


def test_usage_of_the_ray_options(tmp_path, weights, crop, capsys):
    code, _, err = cli(["age", crop, *common(weights), "--engine", "ray", "--cpus", "0"], capsys)
    assert code == 2 and "--cpus 0: a job needs at least one CPU" in err and "leave it out" in err
    code, _, err = cli(["age", crop, *common(weights), "--engine", "ray", "--ray-timeout", "0"], capsys)
    assert code == 2 and "--ray-timeout 0" in err
    code, _, err = cli(["age", crop, *common(weights), "--engine", "ray", "--ray-address", "nowhere"], capsys)
    assert code == 2 and "--ray-address nowhere: expected auto, HOST:PORT" in err
    code, _, err = cli(["age", crop, *common(weights), "--ray-timeout", "5"], capsys)
    assert code == 2 and "--ray-timeout applies to --engine ray" in err
    for bad, flag in ((["--model", "foo"], "--model foo"), (["--device", "gpu"], "--device gpu"),
                      (["--landmarks", "hog"], "--landmarks hog")):  # in one line, before Ray starts
        code, _, err = cli(["age", crop, "--aligned", "--no-mask", "--engine", "ray", *bad], capsys)
        assert code == 2 and err.startswith(f"error: {flag}:") and "Ray" not in err, err


def test_output_uris_are_checked_before_any_work(tmp_path, weights, crop, capsys):
    """An --out URI that can't be written is one line before Ray starts or any photo renders."""
    pytest.importorskip("pyarrow")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = cli(["age", crop, tmp_path / "crop2.png", "--out", f"{blocker.as_uri()}/grids/", *common(weights),
                        "--engine", "ray"], capsys)
    assert code == 1 and "grids" in err and err.count("\n") == 1, err
    assert "private Ray" not in err


def test_waits_are_bounded_and_messages_plain(tmp_path):
    """A filesystem that never answers: one line naming it after the timeout; photos given as bytes
    that are not images: the message names the photo, not a stream object."""
    import threading

    import numpy as np

    from agetool.errors import InputError
    from agetool.locations import bounded
    from agetool.ray.stages import _read

    never = threading.Event()
    with pytest.raises(InputError, match=r"s3://b/x: listing: no answer within 0.2 s.*allow longer with timeout"):
        bounded(never.wait, 0.2, "s3://b/x: listing")
    assert bounded(lambda: 5, 10, "quick") == 5
    with pytest.raises(InputError) as e:
        _read({"photo": "mem/x.png", "bytes": np.frombuffer(b"not an image", np.uint8)}, 10**6, 1.0)
    assert "mem/x.png" in str(e.value) and "BytesIO" not in str(e.value) and "0x" not in str(e.value)


def test_a_job_parses_its_ages_once_and_hands_every_actor_the_same_request(monkeypatch):
    from agetool import ages
    from agetool.options import AgeRequest
    from agetool.ray import Job, build_dataset

    calls = []
    parse = ages.parse_ages
    monkeypatch.setattr(ages, "parse_ages", lambda *a, **k: calls.append(a) or parse(*a, **k))
    for resources in ({"CPU": 4}, {"CPU": 4, "GPU": 1}):
        calls.clear()
        fake = _FakeRay(resources)
        build_dataset(fake, [Job("a.png", "a_ages.png")], pipeline=None, ages="5,+20,30-39", labels=True,
                      options={"seed": 3, "mask": False}, cpus=None, gpus=None)
        requests = [kw["fn_constructor_kwargs"]["request"] for _, kw in fake.stages if "fn_constructor_kwargs" in kw]
        request = requests[0]
        assert isinstance(request, AgeRequest) and all(r is request for r in requests)
        assert [t.entry for t in request.render.targets] == ["5", "+20", "30-39"] and request.render.seed == 3
        assert len(calls) == 1
