"""Shared fixtures. Reference data: the full set in ../shared/reference (or $AGETOOL_REFERENCE) when present,
else the subset in tests/fixtures; see tests/reference.py for the lookup and the no-silent-skip rule, and
tests/memory.py for the session's peak memory and its budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import reference
from tests.memory import pytest_runtest_protocol, pytest_sessionfinish, pytest_terminal_summary  # noqa: F401
from tests.reference import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401 (hooks)


@pytest.fixture(scope="session")
def reference_dir() -> reference.ReferenceFiles:
    """``reference_dir / name``: a reference file's path; the test skips when no place has the file."""
    return reference.ReferenceFiles()


@pytest.fixture(scope="session")
def load_npz():
    """``load_npz(name)``: the arrays of a reference ``.npz``; the test skips when no place has the file."""
    return reference.load_npz


@pytest.fixture(autouse=True, scope="session")
def _isolated_env(tmp_path_factory):
    """Never touch the user's caches or the network."""
    base = tmp_path_factory.mktemp("env")
    mp = pytest.MonkeyPatch()
    mp.setenv("AGETOOL_CACHE", str(base / "agetool-cache"))
    mp.setenv("HF_HOME", str(base / "hf"))
    mp.setenv("TORCH_HOME", str(base / "torch"))
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    mp.setenv("XDG_CONFIG_HOME", str(base / "config"))  # no user's config file or defaults
    from agetool.config import CONFIG_ENV, KEYS, env_name

    for name in (CONFIG_ENV, *map(env_name, KEYS)):
        mp.delenv(name, raising=False)
    yield
    mp.undo()


def _seeded_parser_state():
    from agetool.nn.parser import DeepLabV3
    from tests.seeding import seeded_state_dict

    return seeded_state_dict(DeepLabV3(), 3, "parser")


# The full-size parser's tensors (230 MB each copy) live per module, not for the whole session.
@pytest.fixture(scope="module")
def seeded_parser_state():
    """The reference's seeded face-parser weights (seed 3): a full-size DeepLabV3 state dict."""
    return _seeded_parser_state()


@pytest.fixture(scope="session")
def seeded_parser_file(tmp_path_factory) -> Path:
    """Those weights in the released ``deeplab_model.pth`` layout (``state_dict``, ``module.`` keys)."""
    import torch

    path = tmp_path_factory.mktemp("parser") / "deeplab_model.pth"
    sd = {f"module.{k}": v for k, v in _seeded_parser_state().items()}
    sd["module.bn1.num_batches_tracked"] = torch.tensor(7)  # the reference loader drops keys with "tracked"
    torch.save({"state_dict": sd, "epoch": 12}, path)
    return path


@pytest.fixture(scope="session")
def released_generator_file(tmp_path_factory) -> Path:
    """A full-size generator with the reference's seeded weights (seed 1) in the released
    ``latest_net_g_running.pth`` layout: loads as slowly as the real file."""
    import torch

    from agetool.nn.generator import Generator
    from tests.seeding import seeded_state_dict

    path = tmp_path_factory.mktemp("released-gen") / "latest_net_g_running.pth"
    torch.save(seeded_state_dict(Generator(), 1, "generator"), path)
    return path


@pytest.fixture(scope="module")
def seeded_parser(seeded_parser_file):
    """A FaceParser with the seeded weights read from the released-layout file (not from the cache of
    standardized weights that loading through the pipeline keeps); shared: a full-size forward takes seconds."""
    import torch

    from agetool.face.parse import FaceParser, load_parser_network

    return FaceParser(load_parser_network(seeded_parser_file, prepared=False), torch.device("cpu"))


from tests.serving import served, stand_in_generator  # noqa: E402,F401  (a running agetool serve, session-wide)


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> Path:
    """A tiny seeded generator (ngf 8) as agetool safetensors: fast end-to-end runs on the CPU."""
    from tests.helpers import tiny_generator_file

    return tiny_generator_file(tmp_path_factory.mktemp("w") / "tiny.safetensors")


@pytest.fixture()
def crop(tmp_path) -> Path:
    """A synthetic 256 px "aligned crop" written as crop.png."""
    from PIL import Image

    from tests.helpers import face_like

    p = tmp_path / "crop.png"
    Image.fromarray(face_like()).save(p)
    return p


#: what makes a test slow: a process, server or browser it starts, or full-size networks. The fast
#: subset for contributors, ``pytest -m "not slow"``, leaves these out; CI runs everything.
SLOW_SOURCE = ("spawn(", "subprocess.", "sys.executable", "Popen(", "playwright", "torch.distributed",
               "mp.start_processes")
SLOW_FIXTURES = ("served", "released_generator_file", "seeded_parser_file", "seeded_parser", "reference_dir")


def pytest_collection_modifyitems(config, items):
    """Marks ``slow`` every test whose code starts a process, server or browser, or that takes a
    full-size network (``SLOW_SOURCE``, ``SLOW_FIXTURES``), beside those marked by hand."""
    import inspect

    for item in items:
        function = getattr(item, "function", None)
        try:
            source = inspect.getsource(function) if function is not None else ""
        except (OSError, TypeError):
            source = ""
        if any(s in source for s in SLOW_SOURCE) or any(f in SLOW_FIXTURES for f in item.fixturenames):
            item.add_marker(pytest.mark.slow)
