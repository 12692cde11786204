"""A whole job: Ray found or started, the dataset built for the cluster's resources, rows read back."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from agetool import errors
from agetool.ray.stages import ERROR, FAILURE, NOTES, PHOTO, GRID, FaceStage, FusedStage, GeneratorStage, \
    _text, error_from, job_request, write_results
from agetool.locations import DEFAULT_TIMEOUT, exists

INSTALL_HINT = 'pip install "agetool[ray]"'

#: times a batch is retried after its worker's process died (the worker is restarted each time): a
#: photo that ends its worker every time (out of memory) stops the job instead of looping forever
BATCH_RETRIES = 3

#: Ray's own processes find their token here (or in RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH)
TOKEN_FILE = os.path.join("~", ".ray", "auth_token")


def _ray(verbose: bool = True):
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise errors.AgetoolError("running on Ray needs Ray Data, which is not installed",
                                  hint=INSTALL_HINT) from None
    return ray


@dataclass(frozen=True)
class Job:
    """One photo of a job: where it is (a path or a URI Ray's filesystems read) and what to write."""

    photo: str
    grid: str
    tiles: str = ""  # this photo's tile folder, "" for none

    def row(self) -> dict:
        return {PHOTO: str(self.photo), GRID: str(self.grid), "tiles": str(self.tiles or "")}


@dataclass
class Summary:
    """What a job did: grids written, photos skipped (grid already there) and failed (with the error);
    ``startup`` the seconds spent finding or starting Ray, ``stats`` Ray Data's per-stage statistics."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, errors.AgetoolError]] = field(default_factory=list)
    startup: float = 0.0
    stats: str = ""

    def table(self) -> list[dict]:
        """The failed photos as rows ``{"path": ..., "error": ...}``."""
        return [{"path": path, "error": str(error)} for path, error in self.failed]


def age_photos(jobs: Sequence[Job], *, pipeline: dict | None = None, ages=None, labels: bool = True,
               options: dict | None = None, address: str | None = None,
               cpus: int | None = None, gpus: int | None = None, threads: int = 1,
               batch_size: int | None = None, skip_existing: bool = True, timeout: float = DEFAULT_TIMEOUT,
               verbose: bool = False, stats: bool = False, signing=None, label: bool = False,
               report: Callable[[str], None] | None = None) -> Summary:
    """Age ``jobs`` on Ray Data; returns the ``Summary`` (failed photos don't stop the job).

    Args:
        jobs: the photos and their outputs.
        pipeline: keyword arguments of ``AgingPipeline.from_pretrained`` (model, device, ...).
        ages: as for ``AgingPipeline.__call__``; ``labels``: age captions on the grids.
        options: keyword arguments of ``AgingPipeline.__call__`` (aligned, mask, paste_back, faces,
            min_face, seed, noise, ...).
        address: the Ray cluster to join (``"auto"``, ``"HOST:6379"``, ``"ray://HOST:10001"``; default:
            the one ``RAY_ADDRESS`` names, else a private Ray started on this machine for the job,
            reachable on 127.0.0.1 only, and stopped after). Ray already running in this process is
            used as it is.
        cpus: CPUs the job uses (default: all of the cluster's); a private Ray gets this many.
        gpus: GPUs, one generator actor each (default: all of the cluster's); 0 runs every stage on CPUs.
        threads: torch threads per actor (the outputs are the same whatever the number).
        batch_size: photos per batch (default: from the number of photos and workers).
        skip_existing: skip photos whose grid exists (a rerun finishes a stopped job).
        timeout: seconds to wait for the cluster and for each listing, read or write at a URI.
        verbose: Ray's own log lines and progress bars (default: warnings and errors only).
        stats: keep Ray Data's per-stage statistics in ``Summary.stats``.
        signing: an ``agetool.credentials.Signing``: every file signed with C2PA Content Credentials
            (the certificate and its key travel to every worker with the job).
        label: the visible "AI-aged" mark on pasted photos.
        report: receives the pipeline's notices and one line per photo done.
    """
    from agetool import validate

    ray = _ray()
    for name, value in (("cpus", cpus), ("gpus", gpus), ("threads", threads)):
        if value is not None:
            if name == "cpus" and not isinstance(value, bool) and value == 0:
                raise errors.UsageError(f"{errors.arg('cpus', value)}: a job needs at least one CPU",
                                        hint="give 1 or more, or leave it out to use all the CPUs Ray has")
            validate.integer(name, value, low=0 if name == "gpus" else 1, high=1 << 20)
    if batch_size is not None:
        batch_size = validate.integer("batch_size", batch_size, low=1, high=4096)
    timeout = validate.finite("timeout", timeout, low=0, low_open=True)
    _check_pipeline(pipeline or {})
    report = report or (lambda message: None)
    summary = Summary()
    todo = []
    for job in jobs:
        (summary.skipped if skip_existing and exists(job.grid, timeout) else todo).append(job)
    if not todo:
        return summary
    t0 = time.monotonic()
    try:
        _run(ray, todo, summary, t0, address=address, cpus=cpus, gpus=gpus, timeout=timeout, verbose=verbose,
             stats=stats, report=report, pipeline=pipeline, ages=ages, labels=labels, options=options,
             signing=signing, label=label, threads=threads, batch_size=batch_size)
    finally:  # temporary files of workers that were killed (a retried batch, a stopped job)
        _sweep(todo)
    return summary


def _run(ray, todo: list[Job], summary: Summary, t0: float, *, address, cpus, timeout, verbose, stats, report,
         **dataset) -> None:
    with session(ray, address, cpus, timeout=timeout, verbose=verbose, report=report):
        summary.startup = time.monotonic() - t0
        ds = build_dataset(ray, todo, cpus=cpus, timeout=timeout, **dataset)
        for row in _rows_of(ds):
            for note in filter(None, _text(row[NOTES]).split("\n")):
                report(note)
            if row[ERROR]:
                summary.failed.append((row[PHOTO], error_from(row[FAILURE])))
            else:
                summary.written.append(row[PHOTO])
                faces = int(row["faces"])
                report(f"{row[PHOTO]} -> {row[GRID]}  ({faces} face{'s' if faces != 1 else ''}, "
                       f"{row['models']})")
        if stats:
            summary.stats = ds.stats()


def _sweep(jobs: Sequence[Job]) -> None:
    """Remove the temporary files of writers that no longer run from the job's local output folders."""
    from agetool.files import sweep
    from agetool.locations import is_uri, local_path

    folders = set()
    for job in jobs:
        for target in (job.grid, job.tiles):
            local = local_path(target) if target and is_uri(target) else target
            if local:
                folders.add(os.path.dirname(local) if target == job.grid else local)
    for folder in sorted(folders):
        sweep(folder, again=True)


def _rows_of(ds) -> Iterator[dict]:
    """The dataset's rows; an agetool error that stopped a stage (a missing model, a usage error) is
    raised as itself, not inside Ray's wrappers."""
    try:
        yield from ds.iter_rows()
    except Exception as e:
        cause = _agetool_cause(e) or _worker_died(e)
        if cause is None:
            raise
        raise cause from None


def _worker_died(e: BaseException) -> errors.ResourceError | None:
    """A worker whose process died while it started, or kept dying on a batch (out of memory, killed):
    one line saying so."""
    for e in _causes(e):
        if type(e).__name__ in ("ActorDiedError", "WorkerCrashedError", "ActorUnavailableError",
                                "OutOfMemoryError", "NodeDiedError"):
            return errors.ResourceError(
                f"a Ray worker's process died and the job could not go on ({errors.detail(e, 120)})",
                hint=f"it may have run out of memory: give the job fewer CPUs ({errors.arg('cpus')}) or more "
                     "memory; grids already written are kept, run again to finish the rest")
    return None


def _check_pipeline(pipeline: dict) -> None:
    """The spelling of the pipeline's choices, checked here before Ray starts: a bad one would fail in
    every worker as it starts (and be retried there) instead of once, in one line."""
    from agetool import validate
    from agetool.device import check_names
    from agetool.models import LANDMARKS, check_model

    check_model(pipeline.get("model", "auto"))
    validate.choice("landmarks", pipeline.get("landmarks", "auto"), LANDMARKS)
    check_names(pipeline.get("device", "auto"), pipeline.get("dtype", "float32"))


def _causes(e: BaseException | None) -> Iterator[BaseException]:
    """``e`` and the errors that caused it (Ray's wrappers keep theirs in ``cause``)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__


def _agetool_cause(e: BaseException | None) -> errors.AgetoolError | None:
    import re

    for e in _causes(e):
        if isinstance(e, errors.AgetoolError):  # Ray's copy may be a class of its own: the plain error
            cls = next(c for c in type(e).__mro__ if c.__module__ == errors.__name__)
            plain = cls.__new__(cls)
            plain.__dict__.update(e.__dict__)
            errors.AgetoolError.__init__(plain, e.message, hint=e.hint)
            return plain
        # a worker that could not start: Ray keeps its error only as the text of its traceback
        found = re.findall(r"^agetool\.errors\.(\w+): (.+)$", str(e), flags=re.MULTILINE)
        if found:
            return error_from(json.dumps([found[-1][0], found[-1][1], ""]))
    return None


# ---------------------------------------------------------------- finding or starting Ray
@contextlib.contextmanager
def session(ray, address: str | None, cpus: int | None = None, *, timeout: float = DEFAULT_TIMEOUT,
            verbose: bool = False, report: Callable[[str], None] = lambda m: None) -> Iterator[None]:
    """Ray for the length of the block: the one this process has, else the cluster at ``address``
    (or ``RAY_ADDRESS``), else a private Ray on this machine (127.0.0.1 only) stopped when the block
    ends, however it ends. ``ResourceError`` naming the address when a cluster can't be reached."""
    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        report(f"starting a private Ray on this machine for this job (127.0.0.1 only, "
               f"{'all CPUs' if cpus is None else f'{cpus} CPU' + ('s' if cpus != 1 else '')}); "
               "it stops when the job ends (start one with `ray start --head` and give --ray-address auto "
               "to keep it between jobs)")
    else:
        _check_reachable(address, timeout)
        _use_token(address)
    if address is None:  # inherited by every process of the private Ray: how they are all found at the end
        import secrets

        marker = os.environ[PRIVATE] = secrets.token_hex(8)
    try:
        _init(ray, address, cpus, timeout=timeout, verbose=verbose)
        _quiet_data(ray, verbose)
        if address is None:
            resources = ray.cluster_resources()
            if not resources.get("GPU") and len(ray.nodes()) == 1:
                report("note: on one machine without GPUs, a private Ray's start-up and a model load per worker "
                       "make the plain run (without --engine ray) faster for a few photos; for many, Ray runs them "
                       "side by side on every CPU")
        yield
    finally:
        if address is None or ray.is_initialized():
            ray.shutdown()
        if address is None:  # a private Ray: every process it started, its agents and workers too
            _end_marked(marker)
            if os.environ.get(PRIVATE) == marker:
                del os.environ[PRIVATE]


#: the environment variable that marks the processes of a private Ray (some of Ray's agents outlive
#: its shutdown, orphaned)
PRIVATE = "AGETOOL_PRIVATE_RAY"


def _end_marked(marker: str, settle: float = 1.0, limit: float = 20.0) -> None:
    """End every process marked ``marker``, until none is seen for ``settle`` seconds (a process that
    was being started as Ray shut down may appear late), for at most ``limit`` seconds."""
    deadline = time.monotonic() + limit
    quiet = 0
    while quiet < 2 and time.monotonic() < deadline:
        found = _marked(marker)
        quiet = 0 if found else quiet + 1
        _end(found)
        if quiet < 2:
            time.sleep(settle / 2)


def _marked(marker: str) -> list:
    """The processes, other than this one, whose environment holds ``PRIVATE=marker``."""
    try:
        import psutil  # Ray's own dependency
    except ImportError:
        return []
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get(PRIVATE) == marker:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _end(processes: list, grace: float = 3.0) -> None:
    """``processes`` ended: those that did not go with Ray's shutdown get SIGTERM, then SIGKILL."""
    if not processes:
        return
    import psutil

    processes = _with_children(processes)  # Ray's agents drop the environment's marker; their raylet is marked
    _, alive = psutil.wait_procs(processes, timeout=grace)
    for sig in ("terminate", "kill"):
        alive = _with_children(alive)  # an agent its raylet started during the wait
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                getattr(proc, sig)()
        _, alive = psutil.wait_procs(alive, timeout=grace)
        if not alive:
            return


def _with_children(processes: list) -> list:
    """``processes`` and every process they started (the agents of a raylet, its workers)."""
    import psutil

    found = {p.pid: p for p in processes}
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            for child in proc.children(recursive=True):
                found.setdefault(child.pid, child)
    return list(found.values())


def _init(ray, address: str | None, cpus: int | None, *, timeout: float, verbose: bool) -> None:
    """``ray.init`` with Ray's logging quiet unless ``verbose``; a private Ray's addresses on the loopback
    only. The program's SIGTERM handler stays in place (Ray's would exit with status 15)."""
    import logging

    from ray._private import ray_constants

    options = dict(include_dashboard=False, log_to_driver=verbose,
                   logging_level=logging.INFO if verbose else logging.ERROR)
    if address is None:
        options.update(num_cpus=cpus)
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGTERM) if main else None
    clustered = ray_constants.ENABLE_RAY_CLUSTER
    try:
        # a private Ray: node address 127.0.0.1, every server bound to the loopback (Ray's own switch
        # for machines that are never part of a cluster)
        ray_constants.ENABLE_RAY_CLUSTER = clustered if address is not None else False
        ray.init(address=address or "local", **options)  # "local": a new Ray, never one `ray start` left
    except SystemExit as e:  # SIGTERM while Ray started, seen by Ray's handler: the program's decides
        if e.code == signal.SIGTERM and callable(handler):
            handler(signal.SIGTERM, None)
        raise
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        if address is None:
            raise errors.ResourceError(f"can't start a private Ray on this machine ({errors.detail(e, 200)})",
                                       hint="run with --debug to see Ray's own messages") from None
        raise _unreachable(address, errors.detail(e, 200)) from None
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = clustered
        if main and handler is not None:
            signal.signal(signal.SIGTERM, handler)


def _unreachable(address: str, reason: str) -> errors.ResourceError:
    return errors.ResourceError(
        f"{errors.arg('address', address)}: can't reach the Ray cluster ({reason})",
        hint="check that `ray start --head` runs there, that the port is open from here and, with token "
             "authentication, that RAY_AUTH_TOKEN or ~/.ray/auth_token holds the cluster's token")


def _check_reachable(address: str, timeout: float) -> None:
    """A TCP connection to the cluster's address within ``timeout`` seconds ("auto" is Ray's to find)."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise errors.UsageError(f"{errors.arg('address', address)}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except socket.timeout:
        raise _unreachable(address, f"no answer within {timeout:g} s") from None
    except OSError as e:
        raise _unreachable(address, e.strerror or errors.detail(e, 200)) from None


def _use_token(address: str) -> None:
    """Token authentication for a cluster at an explicit address: Ray turns it on by itself only for
    ``auto``; with a token at hand (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) and no
    RAY_AUTH_MODE set, the job sends it as ``ray start`` on this machine would expect."""
    if "RAY_AUTH_MODE" in os.environ or address == "auto":
        return
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") \
            or os.path.isfile(os.path.expanduser(TOKEN_FILE)):
        os.environ["RAY_AUTH_MODE"] = "token"
        with contextlib.suppress(ImportError, AttributeError):  # Ray's cached settings read it again
            from ray._raylet import Config

            Config.initialize("")


def _quiet_data(ray, verbose: bool) -> None:
    """Ray Data's progress bars and its log lines on the console only with ``verbose``."""
    import logging

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = verbose
    if hasattr(context, "print_on_execution_start"):
        context.print_on_execution_start = verbose
    if not verbose:  # errors that stop the job reach the caller as exceptions, not as Ray's log with its traceback
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


# ---------------------------------------------------------------- the dataset
def build_dataset(ray, jobs: Sequence[Job], *, pipeline: dict | None, ages, labels: bool, options: dict | None,
                  signing=None, label: bool = False,
                  cpus: int | None, gpus: int | None, threads: int | None = 1, batch_size: int | None = None,
                  timeout: float = DEFAULT_TIMEOUT):
    """The job's dataset (lazy) for the cluster's resources. Without GPUs: one ``FusedStage`` actor per
    CPU (read, age and write in one process). With GPUs: ``FaceStage`` actors on the CPUs, one
    ``GeneratorStage`` actor per GPU, then ``write_results``. ``ages`` and ``options`` become the job's one
    request (``job_request``), handed to every actor."""
    import warnings

    with warnings.catch_warnings():  # Ray's notice that its remote options move (see ``_restarts``)
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        marks = dict(labels=labels, signing=signing, label=label)
        return _stages(ray, jobs, job_request(ages, options), pipeline=pipeline, marks=marks, cpus=cpus,
                       gpus=gpus, threads=threads, batch_size=batch_size, timeout=timeout)


def _stages(ray, jobs: Sequence[Job], request, *, pipeline, marks: dict, cpus, gpus, threads, batch_size, timeout):
    resources = ray.cluster_resources()
    has_gpus, has_cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    if gpus is not None and gpus > has_gpus:
        raise errors.UsageError(f"{errors.arg('gpus', gpus)}: the Ray cluster has {has_gpus} GPU(s)",
                                hint="start Ray with more GPUs, or ask for fewer")
    gpus = has_gpus if gpus is None else gpus
    cpus = has_cpus if cpus is None else min(cpus, has_cpus)
    # an actor whose process dies is restarted (as often as it takes) and its batch retried, BATCH_RETRIES times
    actors = _restarts(ray, max_restarts=-1, max_task_retries=BATCH_RETRIES)
    ds = ray.data.from_items([job.row() for job in jobs], override_num_blocks=len(jobs))
    if not gpus:
        batch = batch_size or _batch_size(len(jobs), cpus)
        fused = _bound(FusedStage, pipeline=pipeline, request=request, threads=threads, **marks,
                       timeout=timeout)
        return ds.map_batches(fused, batch_size=batch, batch_format="numpy", num_cpus=1, **actors,
                              compute=ray.data.ActorPoolStrategy(size=min(cpus, len(jobs)),
                                                                 max_tasks_in_flight_per_actor=2))
    # each actor holds one CPU, or a share where there are fewer CPUs than actors (never waits forever)
    unit = min(1.0, cpus / (gpus + 1))
    face_workers = max(1, int((cpus - gpus * unit) / unit + 1e-9))
    batch = batch_size or _batch_size(len(jobs), face_workers)
    stage = dict(pipeline=pipeline, request=request, threads=threads, timeout=timeout)
    ds = ds.map_batches(_bound(FaceStage, **stage), batch_size=batch, batch_format="numpy", num_cpus=unit, **actors,
                        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=face_workers,
                                                           max_tasks_in_flight_per_actor=2))
    ds = ds.map_batches(_bound(GeneratorStage, **stage), batch_size=batch, batch_format="numpy", num_cpus=unit,
                        num_gpus=1, **actors, compute=ray.data.ActorPoolStrategy(size=gpus, max_tasks_in_flight_per_actor=2))
    # writing is light (PNG encoding, I/O): it takes no CPU of its own, so it never waits on the actors
    return ds.map_batches(write_results, batch_size=batch, batch_format="numpy", num_cpus=0,
                          **_restarts(ray, max_retries=BATCH_RETRIES),
                          compute=ray.data.TaskPoolStrategy(size=max(1, face_workers)),
                          fn_kwargs=dict(timeout=timeout, **marks))


def _restarts(ray, **limits) -> dict:
    """``map_batches`` arguments that bound the retries of a stage's batches: Ray's remote options, given
    as named parameters where ``map_batches`` has them, else passed through (its older way, which
    newer Ray versions warn about: the warning is Ray's business, not the user's)."""
    import inspect

    named = inspect.signature(ray.data.Dataset.map_batches).parameters
    passed_on = any(p.kind is p.VAR_KEYWORD for p in named.values())
    return {k: v for k, v in limits.items() if k in named or passed_on}


def _bound(stage: type, **kwargs) -> type:
    """``stage`` with its constructor's arguments built in: Ray ships them with the class, not as
    arguments in the object store (which an actor restarted after its process died could not count on)."""
    def __init__(self) -> None:
        stage.__init__(self, **kwargs)

    return type(stage.__name__, (stage,), {"__init__": __init__, "__module__": __name__, "arguments": kwargs,
                                           "__qualname__": stage.__name__, "__doc__": stage.__doc__})


def _batch_size(photos: int, workers: int) -> int:
    """Photos per batch: a few, so that every worker has its next batch queued (two in flight each) and
    the last batches still spread over the workers."""
    return max(1, min(4, photos // (8 * max(1, workers))))
