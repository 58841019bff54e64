"""Imports run one way (docs/architecture.md): every module under ``llava_pl/`` is parsed and each of its imports of
``llava_pl`` checked against the layer table below. A module may import a lower layer, or its own group; ``data``
and ``model`` share a layer but not a group, so neither imports the other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "llava_pl"


@dataclass(frozen=True)
class Layer:
    rank: int
    group: str


FOUNDATION = Layer(1, "foundation")
DATA = Layer(2, "data")
MODEL = Layer(2, "model")
MACHINERY = Layer(3, "machinery")
RECIPE = Layer(4, "recipe")
TOOLS = Layer(5, "tools")

# By dotted prefix; the longest prefix wins, so a new module lands in its folder's layer. ``llava_pl`` itself (its
# __init__, the version) is matched exactly: a new top-level module has no layer until it is given one here.
LAYERS: dict[str, Layer] = {
    "llava_pl": FOUNDATION,
    "llava_pl.constants": FOUNDATION,
    "llava_pl.errors": FOUNDATION,
    "llava_pl.quiet": FOUNDATION,  # library warnings silenced, for errors.reports_user_errors
    "llava_pl.config_dir": FOUNDATION,
    "llava_pl.conf": FOUNDATION,  # the Hydra configs (packages only so that a config can name a folder pkg://)
    "llava_pl.resolvers": FOUNDATION,
    "llava_pl.stage": FOUNDATION,
    "llava_pl.cli": FOUNDATION,
    "llava_pl.common": FOUNDATION,
    "llava_pl.presets": FOUNDATION,
    "llava_pl.checkpoint.atomic": FOUNDATION,  # atomic file writes, for anything that writes a file
    "llava_pl.data": DATA,
    "llava_pl.model": MODEL,
    "llava_pl.lora": MODEL,
    "llava_pl.checkpoint.projector_file": MODEL,  # the projector's weights file, which model.build reads
    "llava_pl.module": MACHINERY,
    "llava_pl.callbacks": MACHINERY,
    "llava_pl.distributed": MACHINERY,
    "llava_pl.fault": MACHINERY,
    "llava_pl.metrics": MACHINERY,
    "llava_pl.eval": MACHINERY,
    "llava_pl.checkpoint": MACHINERY,
    "llava_pl.generate": MACHINERY,
    "llava_pl.chat_engine": MACHINERY,
    "llava_pl.optim": MACHINERY,
    "llava_pl.precision": MACHINERY,
    "llava_pl.validate": MACHINERY,
    "llava_pl.loggers": MACHINERY,
    "llava_pl.provenance": MACHINERY,
    "llava_pl.train": RECIPE,
    "llava_pl.cli_train": RECIPE,
    "llava_pl.export": TOOLS,
    "llava_pl.export_processor": TOOLS,
    "llava_pl.evaluate": TOOLS,
    "llava_pl.predict": TOOLS,
    "llava_pl.chat": TOOLS,
    "llava_pl.serve": TOOLS,
    "llava_pl.inspect": TOOLS,
    "llava_pl.to_wds": TOOLS,
    "llava_pl.make_instruct": TOOLS,
    "llava_pl.demo": TOOLS,
}


@dataclass(frozen=True)
class Import:
    importer: str
    target: str
    line: int


def layer_of(module: str) -> Layer | None:
    parts = module.split(".")
    for end in range(len(parts), 1, -1):
        layer = LAYERS.get(".".join(parts[:end]))
        if layer is not None:
            return layer
    return LAYERS.get(module)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_in(source: str, module: str, is_package: bool = False) -> Iterator[Import]:
    """The ``llava_pl`` imports of one module's source, relative ones resolved; ``from a import b`` gives
    ``a.b`` (``b`` may be a submodule, which the longest-prefix lookup then places)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target == "llava_pl" or target.startswith("llava_pl."):
                yield Import(module, target, node.lineno)


def violations(imports: Iterable[Import]) -> list[str]:
    """One line per import of a higher layer, of a sibling group, or of or by a module missing from ``LAYERS``."""
    found = []
    for edge in imports:
        source, target = layer_of(edge.importer), layer_of(edge.target)
        if source is None or target is None:
            missing = edge.importer if source is None else edge.target
            found.append(f"{edge.importer}:{edge.line}: {missing} has no layer in tests/test_layers.py LAYERS")
        elif target.group != source.group and target.rank >= source.rank:
            found.append(f"{edge.importer}:{edge.line} ({source.group}, layer {source.rank}) imports {edge.target} "
                         f"({target.group}, layer {target.rank})")
    return found


def package_imports() -> list[Import]:
    return [edge for path in sorted(PACKAGE.rglob("*.py"))
            for edge in imports_in(path.read_text(), module_name(path), path.name == "__init__.py")]


def test_every_module_has_a_layer_and_every_entry_a_module() -> None:
    modules = {module_name(path) for path in PACKAGE.rglob("*.py")}
    assert len(modules) > 50
    assert sorted(module for module in modules if layer_of(module) is None) == []
    assert sorted(prefix for prefix in LAYERS if prefix not in modules) == [], "stale entries of LAYERS"


def test_imports_run_one_way() -> None:
    assert violations(package_imports()) == []


def test_the_checker_refuses_backward_and_sibling_imports() -> None:
    fake = [Import("llava_pl.data.dataset", "llava_pl.train.run", 3),  # the recipe, from below
            Import("llava_pl.model.llava", "llava_pl.data.packing.unpack_rows", 4),  # a sibling
            Import("llava_pl.stage", "llava_pl.model.loss.LossAverage", 5),  # the foundation, upwards
            Import("llava_pl.checkpoint.atomic", "llava_pl.checkpoint.load", 6),  # the longest prefix decides
            Import("llava_pl.newcomer", "llava_pl.errors", 7),  # an unplaced module
            Import("llava_pl.train", "llava_pl.data.dataset.LlavaDataset", 8),  # allowed: downwards
            Import("llava_pl.inspect", "llava_pl.train.selected_stages", 9),  # allowed: a tool on the recipe
            Import("llava_pl.eval.runner", "llava_pl.generate.Answerer", 10),  # allowed: the same group
            Import("llava_pl.data.instruct.coco", "llava_pl.checkpoint.atomic.atomic_path", 11)]  # allowed
    found = violations(fake)
    assert [line.split(":")[0] for line in found] == [
        "llava_pl.data.dataset", "llava_pl.model.llava", "llava_pl.stage", "llava_pl.checkpoint.atomic",
        "llava_pl.newcomer"]
    assert found[1] == ("llava_pl.model.llava:4 (model, layer 2) imports llava_pl.data.packing.unpack_rows "
                        "(data, layer 2)")
    assert "llava_pl.newcomer has no layer" in found[4]


def test_relative_and_lazy_imports_are_resolved() -> None:
    source = "import os\nfrom ..train import run\n\ndef f():\n    from . import packing\n    import llava_pl.model.llava\n"
    edges = list(imports_in(source, "llava_pl.data.inspector"))
    assert [(edge.target, edge.line) for edge in edges] == [
        ("llava_pl.train.run", 2), ("llava_pl.data.packing", 5), ("llava_pl.model.llava", 6)]
    assert len(violations(edges)) == 2
    assert [edge.target for edge in imports_in("from .task import Task\n", "llava_pl.eval", is_package=True)] == [
        "llava_pl.eval.task.Task"]
