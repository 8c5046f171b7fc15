"""The import graph: no cycle anywhere in the repository, the judge's path imports only the runtime core, the side
tools share one library (zeroshot/embed.py) and never import each other; a tool's own parts (the HTML report, the
retrieval index's shards and FAISS index) serve that tool alone."""

from __future__ import annotations

from pathlib import Path

from import_graph import closure, cycles, depth, import_graph, module_files
# what predict.py runs: the judge's path (zeroshot/cli.py and what it imports)
CORE = {"zeroshot", "zeroshot.budget", "zeroshot.cli", "zeroshot.command", "zeroshot.datasets", "zeroshot.encoders",
        "zeroshot.images", "zeroshot.ladder", "zeroshot.limits", "zeroshot.linear", "zeroshot.manifest",
        "zeroshot.outputs", "zeroshot.pipeline", "zeroshot.progress", "zeroshot.report", "zeroshot.resources",
        "zeroshot.scoring", "zeroshot.text", "zeroshot.visual_bank"}
SIDE_TOOLS = {"zeroshot.retrieve", "zeroshot.verify", "zeroshot.head", "zeroshot.evaluate"}
SIDE_LIBRARY = "zeroshot.embed"
# a side tool's own part, imported by that tool (or its other parts) alone: module -> the tool
TOOL_PARTS = {"zeroshot.html_report": "zeroshot.evaluate",
              # zeroshot.retrieve's index: the shards, and the FAISS index (faiss stays off the judge's path)
              "zeroshot.retrieve_store": "zeroshot.retrieve", "zeroshot.retrieve_index": "zeroshot.retrieve"}


GRAPH = import_graph(module_files())


def test_no_import_cycle_in_the_repository() -> None:
    assert cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle(tmp_path: Path) -> None:
    for name, text in {"a.py": "from . import b\n", "b.py": "def f():\n    from .a import x\n", "c.py": ""}.items():
        (tmp_path / "zeroshot" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "zeroshot" / name).write_text(text)
    (tmp_path / "zeroshot" / "__init__.py").write_text("")
    (tmp_path / "predict.py").write_text("")
    for package in ("train", "contest"):
        (tmp_path / package).mkdir()
    assert cycles(import_graph(module_files(tmp_path))) == [["zeroshot.a", "zeroshot.b"]]


def test_the_judges_path_imports_only_the_runtime_core() -> None:
    assert closure(GRAPH, "predict") - {"predict"} <= CORE
    assert depth(GRAPH, "predict") <= 7  # predict, cli, pipeline, encoders, linear, scoring, manifest


def test_side_tools_import_the_core_and_their_library_never_each_other() -> None:
    for tool in SIDE_TOOLS | {SIDE_LIBRARY} | set(TOOL_PARTS):
        owner = TOOL_PARTS.get(tool, tool)
        own = {part for part, o in TOOL_PARTS.items() if o == owner}
        imported = {m for m in GRAPH[tool] if m.startswith("zeroshot")}
        assert imported <= CORE | {SIDE_LIBRARY} | own, (tool, imported - CORE)
    for module in CORE:
        assert not GRAPH[module] & (SIDE_TOOLS | {SIDE_LIBRARY} | set(TOOL_PARTS)), module
    for module, imported in GRAPH.items():  # within the runtime package; train/ and contest/ may measure a part
        for part in imported & set(TOOL_PARTS):
            assert not module.startswith("zeroshot") or TOOL_PARTS.get(module, module) == TOOL_PARTS[part], (
                module, part)
