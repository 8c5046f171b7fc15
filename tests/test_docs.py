"""The docs: a README a newcomer reads in five minutes, and docs that name only what exists.

Every command, flag, make target, path and link that README.md and docs/*.md
name is checked against the tree: `make X` must be a Makefile target (and
`make X VAR=...` a variable the Makefile reads), `python -m M --flag` a module
whose parser (or what it imports) defines the flag, a path under zeroshot/,
train/, contest/, tests/ or docs/ an existing file or folder, a link a file
(and its #anchor a heading there). The manifest examples of
docs/model-folder.md must be manifests the runtime accepts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

from conftest import REPO
from test_layout import imported_files

README = REPO / "README.md"
DOCS = REPO / "docs"
README_MAX_LINES = 220
CHECKED_ROOTS = ("zeroshot", "train", "contest", "tests", "docs")  # data/ arrives with the dev set's own branch
ENTRY_SCRIPTS = {"predict.sh": "zeroshot.cli", "predict.py": "zeroshot.cli"}

_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
_SPAN = re.compile(r"`([^`\n]+(?:\n[^`\n]+)*)`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
_MAKE = re.compile(r"(?:^|[\s;(])make ([a-z][a-z0-9-]*)((?: [A-Z][A-Z0-9_]*=\S*)*)")
_PYTHON_M = re.compile(r"python3? -m ([a-z_][\w.]*)")
_PATH = re.compile(r"(?<![\w./$-])((?:%s)/[\w./-]*)" % "|".join(CHECKED_ROOTS))
_ISSUE = re.compile(r"\bissues? \d+|(?<![\w&])#\d+\b|\bPR \d+", re.I)


def doc_files() -> List[Path]:
    """README.md and every docs/*.md."""
    return [README] + sorted(DOCS.glob("*.md"))


def code_texts(text: str) -> List[str]:
    """The contents of fenced code blocks (continuation lines joined) and of inline code spans."""
    blocks = [b.replace("\\\n", " ") for b in _FENCE.findall(text)]
    prose = _FENCE.sub("", text)
    return blocks + [s.replace("\n", " ") for s in _SPAN.findall(prose)]


def command_lines(text: str) -> Iterator[str]:
    """Every line of code, without its trailing shell comment."""
    for code in code_texts(text):
        for line in code.splitlines():
            yield re.split(r"\s#\s", " " + line, maxsplit=1)[0].strip()


def make_targets() -> Set[str]:
    """The Makefile's rule names (file targets such as model/manifest.json left out)."""
    return set(re.findall(r"^([a-z][a-z0-9-]*):(?!=)", (REPO / "Makefile").read_text(encoding="utf-8"), re.M))


def make_uses(text: str) -> List[Tuple[str, List[str]]]:
    """(target, [VAR, ...]) of every `make target VAR=value ...` the text's code names."""
    found = []
    for line in command_lines(text):
        for target, assignments in _MAKE.findall(line):
            found.append((target, re.findall(r"([A-Z][A-Z0-9_]*)=", assignments)))
    return found


def python_uses(text: str) -> List[Tuple[str, List[str]]]:
    """(module, [--flag, ...]) of every `python -m module ...` (or predict.sh / predict.py) in the text's code."""
    found = []
    for line in command_lines(text):
        match = _PYTHON_M.search(line)
        module = match.group(1) if match else next((m for s, m in ENTRY_SCRIPTS.items()
                                                    if re.search(r"(^|[\s/])%s\b" % re.escape(s), line)), None)
        if module is not None:
            rest = line[match.end():] if match else line
            found.append((module, _FLAG.findall(rest)))
    return found


def module_sources(module: str) -> str:
    """The source of ``module`` and of every repo module it imports (a package's __main__ included)."""
    files = set(imported_files(module, ("train", "zeroshot", "contest")))
    main = REPO.joinpath(*module.split("."), "__main__.py")
    if main.is_file():
        files |= imported_files(module + ".__main__", ("train", "zeroshot", "contest"))
    return "\n".join((REPO / f).read_text(encoding="utf-8") for f in sorted(files))


def module_exists(module: str) -> bool:
    path = REPO.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> Set[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def broken_links(path: Path) -> List[str]:
    """Relative links of ``path`` whose file, or #anchor in it, does not exist."""
    broken = []
    for target in _LINK.findall(_FENCE.sub("", path.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in anchors(dest)):
            broken.append(target)
    return broken


def path_exists(name: str) -> bool:
    """``name`` is a file or folder of the repository, or ``dir/module.attribute`` of a module there."""
    module, _, attribute = name.rpartition(".")
    return (REPO / name).exists() or (attribute.isidentifier() and (REPO / f"{module}.py").is_file())


def missing_paths(text: str) -> List[str]:
    """Repository paths the text names (zeroshot/..., train/..., ...) that do not exist."""
    names = {p.rstrip(".,;:") for p in _PATH.findall(text)}
    return sorted(p for p in names if not path_exists(p))


def problems(path: Path) -> Dict[str, List[str]]:
    """Everything ``path`` names that the tree lacks, by kind."""
    text = path.read_text(encoding="utf-8")
    targets = make_targets()
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    found: Dict[str, List[str]] = {"make targets": [], "make variables": [], "modules": [], "flags": [],
                                   "paths": missing_paths(text), "links": broken_links(path),
                                   "issue numbers": _ISSUE.findall(text)}
    for target, variables in make_uses(text):
        if target not in targets:
            found["make targets"].append(target)
        found["make variables"] += [v for v in variables if f"$({v})" not in makefile]
    for module, flags in python_uses(text):
        if not module_exists(module):
            found["modules"].append(module)
            continue
        source = module_sources(module)
        found["flags"] += [f"{module} {flag}" for flag in flags if flag != "--help" and f'"{flag}"' not in source]
    return {kind: sorted(set(items)) for kind, items in found.items() if items}


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/ (at most {README_MAX_LINES})"


def test_readme_links_every_doc() -> None:
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in _LINK.findall(README.read_text(encoding="utf-8"))}
    docs = sorted(DOCS.glob("*.md"))
    assert len(docs) >= 7
    assert [d.name for d in docs if d.resolve() not in linked] == []


def test_readme_names_the_two_quickstart_commands() -> None:
    text = README.read_text(encoding="utf-8")
    quickstart = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"^make ([a-z-]+)", _FENCE.findall(quickstart)[0], re.M) == ["run", "test"]


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.name)
def test_everything_a_doc_names_exists(path: Path) -> None:
    assert problems(path) == {}


def test_the_checks_can_fail(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## A section\n", encoding="utf-8")
    bad = tmp_path / "bad.md"
    bad.write_text("\n".join([
        "# Bad", "",
        "See [other](other.md#a-section), [gone](gone.md), [no anchor](other.md#nowhere) and issue 12 (#9).",
        "Run `make run DATA=x NOPE=y` or `make nonsense`; `zeroshot/nothing.py`, `train/vocab/` and "
        "`train/manifest_io.write_manifest` exist?", "",
        "```bash",
        "python -m zeroshot.cli --model DIR --no-such-flag \\",
        "    --strict   # a comment with --ignored",
        "python -m zeroshot.nothing --x",
        "./predict.sh DATA OUT --bogus",
        "```", ""]), encoding="utf-8")
    assert problems(bad) == {
        "make targets": ["nonsense"], "make variables": ["NOPE"], "modules": ["zeroshot.nothing"],
        "flags": ["zeroshot.cli --bogus", "zeroshot.cli --no-such-flag"], "paths": ["zeroshot/nothing.py"],
        "links": ["gone.md", "other.md#nowhere"], "issue numbers": ["#9", "issue 12"]}


def test_model_folder_examples_are_manifests_the_runtime_reads() -> None:
    """Each JSON example of docs/model-folder.md validates as a manifest and survives a write and read."""
    from zeroshot.manifest import FORMAT_VERSION, Manifest

    blocks = re.findall(r"^```json\n(.*?)^```", (DOCS / "model-folder.md").read_text(encoding="utf-8"), re.S | re.M)
    assert len(blocks) >= 2
    for block in blocks:
        manifest = Manifest.from_dict(json.loads(block), DOCS / "model-folder.md")
        assert manifest.format_version == FORMAT_VERSION
        assert Manifest.from_dict(json.loads(manifest.to_json())) == manifest
