"""Import direction: core <- io <- codec <- applications, no cycle, torch-free format layer.

Every module under src/spectrostream is parsed with ``ast`` (nothing is imported), and every
``import`` counts as an edge: top-level ones, lazy ones inside functions and ``TYPE_CHECKING``
ones alike (a deferred import is still a dependency). A module missing from :data:`LAYERS`
fails the test, so a new module has to be placed in a layer.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "spectrostream"

# Layer of each module, lowest first; an import may point to the same layer or a lower one.
# A name ending in ".*" covers a subpackage and everything in it.
LAYERS: dict[str, tuple[str, ...]] = {
    # the network, what it is made of and runs on; errors and configs are plain Python
    "core": (
        "config",
        "errors",
        "streaming",
        "dsp",
        "layers",
        "encoder",
        "decoder",
        "quantizer",
        "model",
        "step",
        "metrics",
        "device",
        "runtime",
        "int8",
    ),
    # the world around the network: audio files, the .ssc format, weights, atomic files
    "io": ("audio_io", "bitstream", "official", "hub", "weights", "atomic"),
    # the codec and what is built directly on it
    "codec": ("codec", "files", "tokenize", "onnx_export"),
    # applications; "" is the package itself (it re-exports the codec)
    "app": ("", "__main__", "cli", "train.*", "evaluation.*", "data.*"),
}
RANK = {layer: rank for rank, layer in enumerate(LAYERS)}

# Modules that must import without torch installed (tested in a subprocess).
TORCH_FREE = (
    "spectrostream.cli",
    "spectrostream.bitstream",
    "spectrostream.audio_io",
    "spectrostream.evaluation.cli",
    "spectrostream.data.cli",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module an imported dotted name lives in (its longest prefix that is a module)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Package modules that ``module`` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == PACKAGE:
                target = _resolve(name, modules)
                if target is not None and target != module:
                    found.add(target)
    return found


def layer_of(module: str) -> str | None:
    rest = module[len(PACKAGE) + 1 :] if module != PACKAGE else ""
    for layer, members in LAYERS.items():
        for member in members:
            if member.endswith(".*"):
                sub = member[:-2]
                if rest == sub or rest.startswith(sub + "."):
                    return layer
            elif rest == member:
                return layer
    return None


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_every_module_has_a_layer():
    unplaced = [m for m in all_modules() if layer_of(m) is None]
    assert not unplaced, f"add these modules to LAYERS in {Path(__file__).name}: {unplaced}"


def test_imports_point_down_the_layers():
    upward = [
        f"{m} ({layer_of(m)}) imports {t} ({layer_of(t)})"
        for m, targets in import_graph().items()
        for t in sorted(targets)
        if layer_of(m) and layer_of(t) and RANK[layer_of(t)] > RANK[layer_of(m)]
    ]
    assert not upward, "imports pointing up a layer:\n" + "\n".join(upward)


def test_no_import_cycle():
    assert find_cycle(import_graph()) is None, f"import cycle: {find_cycle(import_graph())}"


def test_graph_sees_relative_lazy_and_absolute_imports():
    graph = import_graph()
    assert "spectrostream.model" in graph["spectrostream.codec"]  # top-level, relative
    assert "spectrostream.codec" in graph["spectrostream.train.export"]  # inside a function
    assert "spectrostream.audio_io" in graph["spectrostream.evaluation.runner"]  # absolute
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert (
        layer_of("spectrostream.evaluation.page") == "app" and layer_of("spectrostream.x") is None
    )


_NO_TORCH = """
import sys
sys.modules["torch"] = None  # `import torch` now raises ImportError
import importlib
for name in sys.argv[1:]:
    importlib.import_module(name)
import spectrostream
assert spectrostream.__version__ and "torch" not in {m.split(".")[0] for m in sys.modules
                                                     if sys.modules[m] is not None}
"""


def test_imports_without_torch():
    result = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, *TORCH_FREE],
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": str(SRC), "PATH": ""},
    )
    assert result.returncode == 0, result.stderr


def test_package_names_still_load_on_demand():
    import spectrostream
    from spectrostream import Codec, tiny_config
    from spectrostream.codec import Codec as codec_class

    assert Codec is codec_class and spectrostream.load.__module__ == "spectrostream.codec"
    assert tiny_config().audio_channels == 2
    assert {"Codec", "load", "StreamingEncoder"} <= set(dir(spectrostream))
    with pytest.raises(AttributeError):
        spectrostream.no_such_name  # noqa: B018


def test_readme_layout_names_every_module():
    readme = (SRC.parent / "README.md").read_text()
    layout = readme[readme.index("## Layout") : readme.index("## Development")]
    root = SRC / PACKAGE
    files = [p.relative_to(root).as_posix() for p in sorted(root.rglob("*.py"))]
    missing = [
        f for f in files if f not in layout and not f.endswith(("/__init__.py", "__main__.py"))
    ]
    assert not missing, f"README's Layout section does not name: {missing}"
