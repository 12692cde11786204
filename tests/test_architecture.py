"""The shape of the code: the import graph (every import, also those inside functions) has no
circle and no upward import; the library leaves process-wide state alone; sibling pipelines share
their models; a request is validated once per run."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT, cli, common

PACKAGE = ROOT / "agetool"

#: the layers of docs/ARCHITECTURE.md, from the bottom up: a module imports only from layers below
#: its own, or from its own part (a package such as agetool.clip counts as one part)
LAYERS = [
    ("agetool.errors", "agetool"),  # agetool: the package's __init__ (its names are imported lazily)
    ("agetool.validate", "agetool.files", "agetool.userfiles", "agetool.config", "agetool.device",
     "agetool.credentials"),
    ("agetool.ages", "agetool.images", "agetool.nn", "agetool.shards", "agetool.provenance", "agetool.loading"),
    ("agetool.options", "agetool.results", "agetool.weights", "agetool.engine", "agetool.locations"),
    ("agetool.face", "agetool.video"),
    ("agetool.identity", "agetool.upscale"),
    ("agetool.models", "agetool.needs", "agetool.faithful", "agetool.clip"),
    ("agetool.faces", "agetool.render", "agetool.morph"),
    ("agetool.pipeline", "agetool.eval", "agetool.train"),
    ("agetool.ray", "agetool.serve"),
    ("agetool.cli",),
    ("agetool.__main__",),
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules) -> set[str]:
    """Every agetool module ``path`` imports, at the top or inside functions. ``from agetool.weights
    import store`` imports the module ``agetool.weights.store``; ``from agetool.weights import fetch``
    the package ``agetool.weights``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                keep = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(keep + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m == "agetool" or m.startswith("agetool.")}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        targets = set()
        for target in _imports(path, name, modules):
            while target not in modules and "." in target:  # a name inside a module
                target = target.rpartition(".")[0]
            if target in modules and target != name and target != "agetool":
                targets.add(target)
        edges[name] = targets
    return edges


def test_import_graph_has_no_circle(graph):
    # Tarjan's strongly connected components: any component of more than one module is a circle
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert circles == []


def _within(module: str, part: str) -> bool:
    return module == part or module.startswith(part + ".")


def _layer(module: str) -> tuple[int, str]:
    """(layer, part) of a module: the longest part of ``LAYERS`` that holds it."""
    found = [(len(part), k, part) for k, parts in enumerate(LAYERS) for part in parts
             if part != "agetool" and _within(module, part) or module == part]
    assert found, f"{module} is in no layer of LAYERS (and of docs/ARCHITECTURE.md): add it"
    _, k, part = max(found)
    return k, part


def test_every_import_runs_down_the_layers(graph):
    """The whole layer order of docs/ARCHITECTURE.md: no module imports one of its own layer (other than
    in its own part) or of a layer above."""
    wrong = []
    for name, targets in sorted(graph.items()):
        k, part = _layer(name)
        for target in sorted(targets):
            j, other = _layer(target)
            if other != part and j >= k:
                wrong.append(f"{name} (layer {k}) -> {target} (layer {j})")
    assert wrong == []


def test_the_layers_are_those_the_architecture_page_draws():
    """docs/ARCHITECTURE.md draws ``LAYERS``: one line per layer, its number, then its files and folders."""
    import re

    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    drawn = {}
    for line in text.split("```")[1].splitlines():
        m = re.match(r"\s*(\d+)\s+(.*)", line)
        if m:
            for name in m.group(2).replace(",", " ").split():
                if name.endswith((".py", "/")):
                    drawn["agetool." + name.removesuffix("/").removesuffix(".py").replace("/", ".")] = int(m.group(1))
    want = {part: k + 1 for k, parts in enumerate(LAYERS) for part in parts if part != "agetool"}
    assert drawn == want


def test_each_command_lives_in_the_module_named_after_it():
    """``agetool NAME`` (and a group's subcommands) run from ``agetool/cli/NAME.py``, and every module of
    ``agetool/cli/`` named like no command holds no command (it is a helper)."""
    from agetool.cli import command

    wrong, homes = [], set()
    for name, group in command().commands.items():
        home = "agetool.cli." + name.replace("-", "_")
        homes.add(home)
        for path, cmd in [(name, group), *((f"{name} {k}", c) for k, c in getattr(group, "commands", {}).items())]:
            if cmd.callback is not None and cmd.callback.__module__ != home:
                wrong.append(f"{path}: {cmd.callback.__module__}")
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        helper = path.name != "__init__.py" and _module_name(path) not in homes
        if helper and (".command(" in text or "typer.Typer(" in text):
            wrong.append(f"{path.name}: defines a command but is named like none")
    assert wrong == [] and len(homes) >= 13


def test_library_leaves_process_wide_state_alone():
    """No warning filters, PIL limits, signal handlers or global torch settings outside the command line."""
    needles = ("warnings.simplefilter", "warnings.filterwarnings", "catch_warnings", "MAX_IMAGE_PIXELS =",
               "signal.signal(", "torch.set_num_threads", "sys.exit(", "os._exit(")
    allowed = {("agetool/device.py", "torch.set_num_threads"),  # tune_process: for programs owning their process
               ("agetool/engine.py", "torch.set_num_threads")}  # the frame workers' own per-thread setting
    found = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(("agetool/cli/", "agetool/train/")) or rel == "agetool/__main__.py" or rel.startswith("agetool/ray/"):
            continue  # the command line, training's own process setup and Ray's worker actors own their process
        text = path.read_text(encoding="utf-8")
        found += [f"{rel}: {n}" for n in needles if n in text and (rel, n) not in allowed]
    assert found == []


def test_no_module_is_far_over_500_lines():
    long = {p.relative_to(ROOT).as_posix(): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 560}
    assert long == {}


def test_sibling_pipelines_share_their_models(weights):
    import agetool

    pipe = agetool.AgingPipeline.from_pretrained(model=weights, device="cpu")
    sibling = agetool.AgingPipeline.from_pipe(pipe, model="female")
    assert sibling.models is pipe.models and sibling.model == "female" and pipe.model == weights
    assert agetool.AgingPipeline.from_pipe(pipe).model == weights
    face = pipe(np.full((256, 256, 3), 120, np.uint8), aligned=True, mask=False).faces[0]
    engine = pipe.models.engine(weights.name)
    assert sibling.models.engine(face.model) is engine and np.asarray(face.images).shape == (6, 256, 256, 3)


def _counting(monkeypatch, module, name, counts, key, when=lambda *a, **k: True):
    original = getattr(module, name)

    def counted(*args, **kwargs):
        if when(*args, **kwargs):
            counts[key] = counts.get(key, 0) + 1
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)


def test_one_age_run_parses_its_ages_once(tmp_path, weights, monkeypatch, capsys):
    """Three photos, tiles and a grid each: the ages are parsed (and every option checked) once."""
    from PIL import Image

    from agetool import ages, validate

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((256, 256, 3), 60 * i + 40, np.uint8)).save(folder / f"p{i}.png")
    counts: dict = {}
    _counting(monkeypatch, ages, "parse_ages", counts, "ages")
    _counting(monkeypatch, validate, "finite", counts, "noise", when=lambda name, *a, **k: name == "noise")
    code, _, err = cli(["age", folder, "--out", tmp_path / "grids/", "--tiles", tmp_path / "tiles",
                        "--ages", "5,30-39,61", *common(weights)], capsys)
    assert code == 0, err
    assert len(list((tmp_path / "grids").glob("*.png"))) == 3
    assert counts == {"ages": 1, "noise": 1}


def test_one_video_run_checks_its_steps_once(tmp_path, weights, monkeypatch, capsys):
    from PIL import Image

    from agetool import validate

    photo = tmp_path / "crop.png"
    Image.fromarray(np.full((256, 256, 3), 90, np.uint8)).save(photo)
    counts: dict = {}
    _counting(monkeypatch, validate, "integer", counts, "steps", when=lambda name, *a, **k: name == "steps")
    _counting(monkeypatch, validate, "finite", counts, "fps", when=lambda name, *a, **k: name == "fps")
    code, _, err = cli(["video", photo, "--out", tmp_path / "v.mp4", "--steps", "2", "--frames", tmp_path / "f",
                        *common(weights)], capsys)
    assert code == 0, err
    assert len(list((tmp_path / "f").glob("frame_*.png"))) == 11
    assert counts["steps"] == 1
    assert counts["fps"] <= 2  # the request, and the encoder it is handed to


def test_face_options_with_an_encoded_photo_are_an_error(weights):
    import agetool
    from agetool.errors import UsageError

    pipe = agetool.AgingPipeline.from_pretrained(model=weights, device="cpu")
    encoded = pipe.encode(np.full((256, 256, 3), 100, np.uint8), aligned=True, mask=False)
    with pytest.raises(UsageError, match="min_face: the photo is already encoded"):
        pipe(encoded, min_face=40)
    with pytest.raises(UsageError, match="paste_back"):
        pipe(encoded, paste_back=True)
    assert pipe(encoded, ages=[30]).faces[0].images.shape == (1, 256, 256, 3)


def test_model_preprocessing_stands_with_its_registry_entry(tmp_path, monkeypatch):
    """The parser's input size and normalization, the mask's classes and the classifier's crop come from
    weights.toml; a registry of one's own without the tables takes the bundled ones."""
    from agetool.face import mask
    from agetool.face.parse import preprocess
    from agetool.weights.registry import DEFAULT_REGISTRY, preprocessing

    bundled = DEFAULT_REGISTRY.read_text(encoding="utf-8")
    assert "[models.deeplab-parser.preprocess]" in bundled
    crop = np.full((64, 64, 3), 128, np.uint8)
    assert tuple(preprocess(crop).shape) == (1, 3, 513, 513)
    assert mask.masking() == ((0, 14, 15, 16, 18), 128)
    own = tmp_path / "registry.toml"
    own.write_text(bundled.replace("size = 513", "size = 65").replace("mask_gray = 128", "mask_gray = 7"),
                   encoding="utf-8")
    monkeypatch.setenv("AGETOOL_REGISTRY", str(own))
    assert preprocessing("deeplab-parser")["size"] == 65
    assert tuple(preprocess(crop).shape) == (1, 3, 65, 65)
    labels = np.zeros((64, 64), np.uint8)
    assert mask.mask_background(crop, labels).max() == 7
    bare = tmp_path / "bare.toml"  # entries without preprocess tables
    bare.write_text('[models.deeplab-parser]\nkind = "parser"\nsources = [{ url = "https://example.org/p.pth" }]\n',
                    encoding="utf-8")
    monkeypatch.setenv("AGETOOL_REGISTRY", str(bare))
    assert preprocessing("deeplab-parser")["size"] == 513 and preprocessing("genderage")["box_scale"] == 1.5


def test_every_benchmark_imports_what_it_names():
    """Each script of benchmarks/ imports, and every ``from agetool... import NAME`` in it (also inside
    functions) names something that exists: a renamed library name fails here, not on the next run."""
    import importlib

    missing = []
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        importlib.import_module(f"benchmarks.{path.stem}")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("agetool"):
                module = importlib.import_module(node.module)
                missing += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                            if not hasattr(module, a.name) and not (hasattr(module, "__path__") and
                                                                    importlib.util.find_spec(f"{node.module}.{a.name}"))]
    assert missing == []
