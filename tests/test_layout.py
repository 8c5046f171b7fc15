"""The tree's shape: one typing style everywhere, every command on the shared CLI skeleton."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path
from typing import List, Sequence, Set

from conftest import REPO
from import_graph import closure, import_graph, module_files

PACKAGES = ("zeroshot", "train", "contest", "tests")
PYTHON_FILES = sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py") if "__pycache__" not in p.parts)
BUILTIN_GENERICS = {"list", "dict", "tuple", "set", "frozenset", "type"}


def _annotations(tree: ast.AST) -> List[ast.AST]:
    out: List[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            args += [a for a in (node.args.vararg, node.args.kwarg) if a is not None]
            out += [a.annotation for a in args if a.annotation is not None]
            out += [node.returns] if node.returns is not None else []
        elif isinstance(node, ast.AnnAssign):
            out.append(node.annotation)
    return out


def modern_annotations(paths: Sequence[Path]) -> List[str]:
    """``file:line`` of annotations written as list[...]/dict[...] or X | Y instead of typing's names."""
    found = []
    for path in paths:
        for ann in _annotations(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            for node in ast.walk(ann):
                builtin = (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name)
                           and node.value.id in BUILTIN_GENERICS)
                union = isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr)
                if builtin or union:
                    found.append(f"{path.name}:{node.lineno}")
                    break
    return found


def test_one_typing_style() -> None:
    assert PYTHON_FILES
    assert modern_annotations(PYTHON_FILES) == []


def test_typing_style_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f(x: list[int], y: Optional[int] = None) -> Dict[str, int]:\n    z: int | None = 1\n")
    assert modern_annotations([bad]) == ["bad.py:1", "bad.py:2"]


def test_every_command_uses_the_shared_skeleton() -> None:
    commands = [p for p in PYTHON_FILES if p.parts[-2] != "tests" and 'if __name__ == "__main__":' in p.read_text(
        encoding="utf-8")]
    assert commands
    for path in commands:
        source = path.read_text(encoding="utf-8")
        assert "make_parser(" in source and "parse_args(" in source, path
        assert "def main(argv: Optional[List[str]] = None) -> int:" in source, path
        assert "argparse.ArgumentParser(" not in source and "basicConfig" not in source, path


def test_the_judges_limits_are_the_contest_rules() -> None:
    """Yandex ML Cup 2021 CV: 23 minutes, 8 GB, archive <= 700 MB; about 2,200 test images."""
    from zeroshot import limits

    assert (limits.JUDGE_TIME_LIMIT_S, limits.JUDGE_MEMORY_GB, limits.ARCHIVE_CAP_MB, limits.JUDGE_IMAGES) == (
        23 * 60, 8.0, 700.0, 2200)
    assert limits.REPO_ROOT == REPO and limits.DEVSETS_DIR == REPO.parent / "shared" / "devsets"


def test_no_fact_is_typed_twice() -> None:
    """The limits and the dev set's location appear as literals only in zeroshot/limits.py."""
    patterns = ("23 * 60", "= 2200", "8_000_000_000", "700.0", '"shared"', "shared/devsets", "/work/")
    for path in PYTHON_FILES:
        if path.name in ("limits.py", "test_layout.py"):
            continue
        source = path.read_text(encoding="utf-8")
        assert not [p for p in patterns if p in source], path


def test_the_model_contract_is_typed_once_in_train() -> None:
    """File names, text input names and tokenizer ids come from train/contract.py in every exporter."""
    patterns = ('"input_ids"', '"attention_mask"', '"tokenizer.model"', '"text_encoder.onnx"', '"image_encoder.onnx"',
                '"image_encoder.int8.onnx"', '"bos_id": ', 'bos_id=1', '"eos_id": ', 'eos_id=2', '"sentencepiece"',
                '"collapse_spaces"')
    for path in sorted((REPO / "train").rglob("*.py")):
        if path.name != "contract.py":
            source = path.read_text(encoding="utf-8")
            assert not [p for p in patterns if p in source], path


def test_text_config_is_what_the_runtime_reads(tmp_path: Path) -> None:
    """The tiny model's manifest carries contract.text_config, and the runtime's Tokenizer follows its ids."""
    from train.contract import SENTENCEPIECE_IDS, text_config, token_feeds, tokenizer
    from train.tiny_model import build_tiny_model
    from zeroshot.encoders import Model
    from zeroshot.manifest import TextConfig, read_section, to_dict

    manifest = build_tiny_model(tmp_path, seed=1)
    assert manifest.text == read_section(TextConfig, text_config("text_embeds", ["{}", "фото: {}"]))
    model = Model(tmp_path, threads=1)
    feeds = token_feeds(tokenizer(tmp_path / manifest.files["tokenizer"].path, to_dict(manifest.text.tokenizer)),
                        ["кот", "рыжий кот"])
    ids, mask = model.tokenizer.batch(["кот", "рыжий кот"])
    assert (feeds["input_ids"] == ids).all() and (feeds["attention_mask"] == mask).all()
    assert ids[0, 0] == SENTENCEPIECE_IDS["bos_id"] and ids[0, mask[0].sum() - 1] == SENTENCEPIECE_IDS["eos_id"]


def test_every_command_answers_help(capsys) -> None:
    """Each command's parser builds (defaults included) and --help exits 0."""
    import importlib

    import pytest

    commands = [p for p in PYTHON_FILES if p.parts[-2] != "tests" and 'if __name__ == "__main__":' in p.read_text(
        encoding="utf-8")]
    for path in commands:
        module = importlib.import_module(".".join(path.relative_to(REPO).with_suffix("").parts))
        with pytest.raises(SystemExit) as exit_info:
            module.main(["--help"])
        assert exit_info.value.code == 0, path
        assert "usage:" in capsys.readouterr().out, path


def imported_files(module: str, packages: Sequence[str] = ("train", "zeroshot")) -> Set[str]:
    """Repo-relative files of ``module`` and everything it imports from ``packages``, at any depth
    (imports inside functions included), with the packages' __init__.py files."""
    files = module_files()
    names = {m for m in closure(import_graph(files), module) if m.split(".")[0] in packages}
    names |= {".".join(m.split(".")[:i]) for m in names for i in range(1, m.count(".") + 1)}
    return {files[m].relative_to(REPO).as_posix() for m in names if m in files}


def make_variable(name: str) -> List[str]:
    """The value of a Makefile variable, as make expands it."""
    proc = subprocess.run(["make", "-s", "--no-print-directory", "-f", "Makefile", "-f", "-", "_print_variable"],
                          input=f"_print_variable:\n\t@echo $({name})\n", capture_output=True, text=True,
                          cwd=REPO, check=True)
    return proc.stdout.split()


def test_the_model_rule_depends_on_every_file_the_builder_reads() -> None:
    sources = set(make_variable("MODEL_SOURCES"))
    needed = imported_files("train.build_default")
    assert {"train/build_default.py", "train/contract.py", "zeroshot/images.py"} <= needed
    assert needed <= sources, f"make model misses {sorted(needed - sources)}"
    assert {p.relative_to(REPO).as_posix() for p in (REPO / "train" / "vocab").glob("*.tsv")} <= sources


def test_import_closure_follows_lazy_and_relative_imports(tmp_path: Path) -> None:
    assert "train/text_encoder.py" in imported_files("train.build_default")  # imported inside a function
    assert "train/onnx_compat.py" in imported_files("train.text_encoder")    # relative import
    assert imported_files("zeroshot.images") == {"zeroshot/__init__.py", "zeroshot/images.py", "zeroshot/manifest.py",
                                                 "zeroshot/resources.py"}


def test_every_onnx_writer_in_train_finalizes() -> None:
    """onnx_compat's promise: a train/ module that writes ONNX also calls finalize_onnx (opset/IR limits)."""
    writers = ("onnx.save(", "torch.onnx.export(", "quantize_static(", "optimized_model_filepath")
    checked = []
    for path in sorted((REPO / "train").rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        if path.name != "onnx_compat.py" and any(w in source for w in writers):
            checked.append(path.name)
            assert "finalize_onnx(" in source, path
    assert {"image_encoder.py", "text_encoder.py", "use_m.py", "tiny_model.py", "variants.py", "parity.py"} <= set(checked)
