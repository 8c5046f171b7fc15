"""The visual concept bank at run time (zeroshot.visual_bank): matching class names to concepts, the logits it adds,
the manifest's ``visual_bank`` section and files, and its effect through predict on a tiny model."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from conftest import read_json
from datagen import make_dataset

from zeroshot import cli
from zeroshot.manifest import MANIFEST_NAME, Manifest, VisualBankConfig, sha256_file, validate_manifest
from zeroshot.visual_bank import Bank, ClassMatch, bank_logits, load_bank

NORMALIZE = ["strip", "collapse_spaces", "lowercase", "yo", "trailing_punct"]
E = np.eye(4, dtype=np.float32)  # name embeddings: orthogonal unit vectors


def _cfg(**changes: object) -> VisualBankConfig:
    values: Dict[str, object] = {"embedding_output": "text_embeds", "threshold": 0.5, "scale": 10.0, "weight": 1.0,
                                 "margin": 0.0, "center": False}
    values.update(changes)
    return VisualBankConfig(**values)  # type: ignore[arg-type]


def _bank(names: List[List[str]], sources: List[str], embeddings: np.ndarray, prototypes: np.ndarray,
          **cfg: object) -> Bank:
    return Bank(names, sources, np.asarray(embeddings, np.float32), np.asarray(prototypes, np.float32), _cfg(**cfg),
                NORMALIZE)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ------------------------------------------------------------------------------------------- matching


def test_an_equal_normalised_name_scores_one_even_when_the_embeddings_disagree() -> None:
    bank = _bank([["Ёжик"], ["кот"]], ["a/a", "b/b"], E[[0, 1]], [[3.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    classes = ["  ЕЖИК. ", "собака"]
    vecs = np.stack([-E[0], E[2]])  # the first class's embedding points away from the concept's name
    scores = bank.concept_scores(classes, vecs)
    np.testing.assert_allclose(scores, [[1.0, 0.0], [0.0, 0.0]], atol=1e-6)
    match = bank.match(classes, vecs)
    assert match.matched.tolist() == [True, False] and match.concepts == [[0], []]
    np.testing.assert_allclose(match.prototypes, [[1.0, 0.0, 0.0]], atol=1e-6)  # one row per matched class


def test_a_name_below_the_threshold_is_unmatched_and_the_margin_pools_near_best_concepts() -> None:
    """A class vector at cosine 0.6 to concept A's name and 0.8 to concept B's."""
    bank = _bank([["альфа"], ["бета"]], ["a/a", "b/b"], E[[0, 1]], [[3.0, 0.0, 0.0], [0.0, 0.5, 0.0]])
    vecs = (0.6 * E[0] + 0.8 * E[1])[None]
    np.testing.assert_allclose(bank.concept_scores(["гамма"], vecs), [[0.6, 0.8]], atol=1e-6)
    unmatched = bank.match(["гамма"], vecs, cfg=_cfg(threshold=0.9))
    assert not unmatched.any and unmatched.concepts == [[]]
    assert unmatched.prototypes.shape == (0, 3)
    best = bank.match(["гамма"], vecs, cfg=_cfg(threshold=0.7, margin=0.1))
    assert best.concepts == [[1]]
    np.testing.assert_allclose(best.prototypes, [[0.0, 1.0, 0.0]], atol=1e-6)
    pooled = bank.match(["гамма"], vecs, cfg=_cfg(threshold=0.7, margin=0.25))
    assert pooled.concepts == [[0, 1]]
    # the mean of the unit prototypes, normalised (not the mean of the stored vectors, which leans to A)
    np.testing.assert_allclose(pooled.prototypes, [[2 ** -0.5, 2 ** -0.5, 0.0]], atol=1e-6)


def test_the_banks_own_threshold_applies_without_a_cfg() -> None:
    bank = _bank([["альфа"]], ["a/a"], E[[0]], [[1.0, 0.0]], threshold=0.9)
    assert not bank.match(["гамма"], (0.8 * E[0] + 0.6 * E[1])[None]).any
    assert bank.match(["гамма"], E[[0]]).any


def test_exclude_removes_the_concepts_of_a_source() -> None:
    bank = _bank([["кошка"], ["кот"]], ["x/cats", "y/pets"], E[[0, 1]], [[1.0, 0.0], [0.0, 1.0]])
    vecs = (0.6 * E[2] + 0.8 * E[1])[None]
    scores = bank.concept_scores(["кошка"], vecs, exclude={"x/cats"})
    assert scores[0, 0] == -np.inf and scores[0, 1] == pytest.approx(0.8, abs=1e-6)
    assert bank.match(["кошка"], vecs).concepts == [[0]]
    assert bank.match(["кошка"], vecs, exclude=["x/cats"]).concepts == [[1]]
    gone = bank.match(["кошка"], vecs, exclude=["x/cats", "y/pets"])
    assert not gone.any and gone.prototypes.shape == (0, 2)


def test_synonyms_count_as_names() -> None:
    """Concept 0 has two names (two embedding rows); concept 1's one name is the third row."""
    bank = _bank([["собака", "пёс"], ["кот"]], ["a/a", "b/b"], E[[0, 1, 2]], [[1.0, 0.0], [0.0, 1.0]])
    classes = ["Пес", "псина", "кот"]
    vecs = np.stack([E[3], E[1], E[3]])  # "псина" is embedded exactly as the synonym "пёс"
    np.testing.assert_allclose(bank.concept_scores(classes, vecs), [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], atol=1e-6)
    assert bank.match(classes, vecs).concepts == [[0], [0], [1]]


def test_counts_that_disagree_are_refused() -> None:
    with pytest.raises(ValueError, match="2 name embeddings for 3 names"):
        _bank([["собака", "пёс"], ["кот"]], ["a/a", "b/b"], E[[0, 1]], [[1.0], [1.0]])
    with pytest.raises(ValueError, match="1 prototypes for 2 concepts"):
        _bank([["собака"], ["кот"]], ["a/a", "b/b"], E[[0, 1]], [[1.0]])


# -------------------------------------------------------------------------------------------- logits


@pytest.fixture()
def logits_case() -> Dict[str, np.ndarray]:
    """4 images (the third not decoded, its features garbage) x 3 classes; classes 0 and 1 matched."""
    rng = np.random.default_rng(0)
    protos = np.zeros((3, 2), np.float32)
    protos[0] = [1.0, 0.0]
    protos[1] = _unit(np.array([0.6, 0.8], np.float32))
    return {"logits": rng.normal(size=(4, 3)).astype(np.float32),
            "features": np.array([[2.0, 0.0], [1.0, 1.0], [1000.0, -1000.0], [0.0, 3.0]], np.float32),
            "valid": np.array([True, True, False, True]),
            "match": ClassMatch(protos[:2], np.array([True, True, False]), [[0], [1], []])}


def _expected(c: Dict[str, np.ndarray], rows: np.ndarray, protos: np.ndarray, scale: float,
              weight: float) -> np.ndarray:
    """The documented formula: weight * log(m * softmax(scale * cos)) on the matched columns 0 and 1."""
    expected = c["logits"].copy()
    for row in (0, 1, 3):
        z = scale * np.array([float(_unit(rows[row]) @ _unit(p)) for p in protos])
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        expected[row, :2] += weight * np.log(2 * p)
    return expected


def test_bank_logits_add_the_matched_classes_log_share_to_the_valid_rows(logits_case: Dict[str, np.ndarray]) -> None:
    c = logits_case
    out = bank_logits(c["logits"], c["features"], c["valid"], c["match"], _cfg(scale=3.0, weight=2.0))
    np.testing.assert_allclose(out, _expected(c, c["features"], c["match"].prototypes[:2], 3.0, 2.0),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out[2], c["logits"][2])  # not decoded
    np.testing.assert_array_equal(out[:, 2], c["logits"][:, 2])  # not matched
    # the matched classes as a group keep their share: their m * p sum to m
    gain = (out - c["logits"])[c["valid"]][:, :2] / 2.0
    np.testing.assert_allclose(np.exp(gain).sum(axis=1), 2.0, rtol=1e-5)


def test_one_matched_class_alone_gets_no_push(logits_case: Dict[str, np.ndarray]) -> None:
    c = logits_case
    alone = ClassMatch(c["match"].prototypes[1:], np.array([False, True, False]), [[], [1], []])
    out = bank_logits(c["logits"], c["features"], c["valid"], alone, _cfg(scale=3.0, weight=2.0))
    np.testing.assert_allclose(out, c["logits"], atol=1e-6)


def test_centring_uses_the_valid_rows_mean_on_both_sides(logits_case: Dict[str, np.ndarray]) -> None:
    c = logits_case
    out = bank_logits(c["logits"], c["features"], c["valid"], c["match"], _cfg(scale=3.0, center=True))
    unit_rows = np.stack([_unit(f) for f in c["features"]])  # features are normalised like the prototypes
    mean = unit_rows[c["valid"]].mean(axis=0)  # the undecoded row's garbage is not in it
    expected = _expected(c, unit_rows - mean, c["match"].prototypes[:2] - mean, 3.0, 1.0)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    uncentred = bank_logits(c["logits"], c["features"], c["valid"], c["match"], _cfg(scale=3.0))
    assert not np.allclose(out, uncentred)


def test_bank_logits_leave_the_scores_alone_without_a_match_features_or_images(
        logits_case: Dict[str, np.ndarray]) -> None:
    c = logits_case
    cfg = _cfg(weight=5.0, center=True)
    none_matched = ClassMatch(np.zeros((0, 2), np.float32), np.zeros(3, bool), [[], [], []])
    for features, valid, match in [(c["features"], c["valid"], None), (None, c["valid"], c["match"]),
                                   (c["features"], c["valid"], none_matched),
                                   (c["features"], np.zeros(4, bool), c["match"])]:
        np.testing.assert_array_equal(bank_logits(c["logits"], features, valid, match, cfg), c["logits"])


# ------------------------------------------------------------------------------------------ manifest


def _with_bank_section(data: dict, files: tuple = ("visual_concepts", "visual_names", "visual_prototypes"),
                       section: bool = True, **changes: object) -> dict:
    out = copy.deepcopy(data)
    if section:
        out["visual_bank"] = dict({"embedding_output": "text_embeds", "threshold": 0.7, "scale": 10.0, "weight": 1.0},
                                  **changes)
    for role in files:
        out["files"][role] = {"path": f"{role}.bin", "sha256": "0" * 64}
    return out


def test_the_manifest_section_and_its_files_go_together(tiny_model: Path) -> None:
    data = read_json(tiny_model / MANIFEST_NAME)
    manifest = validate_manifest(_with_bank_section(data), Path("m.json"))
    assert manifest.visual_bank == _cfg(threshold=0.7, margin=0.02, center=True)
    assert Manifest.from_dict(json.loads(manifest.to_json()), Path("m.json")) == manifest
    for bad in (_with_bank_section(data, files=()), _with_bank_section(data, section=False),
                _with_bank_section(data, files=("visual_concepts", "visual_names"))):
        with pytest.raises(ValueError, match=r"m\.json: invalid manifest: a visual_bank section and files\."):
            validate_manifest(bad, Path("m.json"))


@pytest.mark.parametrize("changes, message", [
    ({"gain": 1.0}, r"unknown key visual_bank\.gain "),
    ({"threshold": 1.5}, r"visual_bank\.threshold must be in \[-1, 1\]"),
    ({"threshold": -1.01}, r"visual_bank\.threshold must be in \[-1, 1\]"),
    ({"weight": -1.0}, r"visual_bank\.weight must be >= 0"),
    ({"scale": 0.0}, r"visual_bank\.scale must be > 0"),
    ({"margin": -0.1}, r"visual_bank\.margin must be >= 0"),
])
def test_bad_section_values_are_named(tiny_model: Path, changes: Dict[str, object], message: str) -> None:
    data = read_json(tiny_model / MANIFEST_NAME)
    with pytest.raises(ValueError, match=r"m\.json: invalid manifest: " + message):
        validate_manifest(_with_bank_section(data, **changes), Path("m.json"))


def test_the_threshold_bounds_are_allowed(tiny_model: Path) -> None:
    data = read_json(tiny_model / MANIFEST_NAME)
    for threshold in (-1.0, 1.0):
        assert validate_manifest(_with_bank_section(data, threshold=threshold), Path("m.json")).visual_bank.threshold \
            == threshold


# ------------------------------------------------------------------------------- a model with a bank

CAT, TRACTOR = "кошка", "трактор"
SECTION = {"embedding_output": "text_embeds", "threshold": 0.5, "scale": 50.0, "weight": 5.0, "margin": 0.0,
           "center": False}


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, object]:
    """A tiny model without balancing or transductive steps (its own zero-shot scores decide), a dataset
    (tractors, then cats: alternating colours) and a written bank whose concepts "кошка" and "трактор" have
    the cat and the tractor images' mean features as their prototypes (and "самолёт" a random one)."""
    from train.tiny_model import build_tiny_model
    from train.visual_bank import write_bank
    from zeroshot.embed import embed_images
    from zeroshot.encoders import Model

    root = tmp_path_factory.mktemp("visual_bank")
    plain = root / "plain"
    build_tiny_model(plain, seed=0, overrides={"balance": None, "transductive": None})
    data = root / "data"
    truth = make_dataset(data, "zoo", [TRACTOR, CAT], 16, seed=3)
    paths = sorted((data / "zoo" / "img").iterdir())
    emb = embed_images(Model(plain, threads=1, spinning=False), paths)
    assert emb.valid.all()
    cats = np.array([truth[p.name[:-len(".jpg")]] == 1 for p in paths])
    prototype = _unit(emb.features[cats]).mean(axis=0)
    tractor = _unit(emb.features[~cats]).mean(axis=0)
    records = [{"ru": CAT, "synonyms": ["котик"], "source": "cats", "repo": "someone/cats", "commit": "0" * 40,
                "images": 8},
               {"ru": TRACTOR, "synonyms": [], "source": "farm", "repo": "someone/farm", "commit": "2" * 40,
                "images": 8},
               {"ru": "самолёт", "synonyms": [], "source": "planes", "repo": "someone/planes", "commit": "1" * 40,
                "images": 8}]
    other = np.random.default_rng(1).normal(size=prototype.shape)
    write_bank(root / "bank", records, np.stack([prototype, tractor, other]), {}, [], None)
    return {"root": root, "plain": plain, "data": data, "truth": truth, "bank": root / "bank"}


def _with_bank(scene: Dict[str, object], model: Path, name: str, **changes: object) -> Path:
    """A copy of ``model`` with the scene's bank added (train.visual_bank.add_to_model)."""
    from train.visual_bank import add_to_model

    out = Path(scene["root"]) / name
    shutil.copytree(model, out)
    added = add_to_model(out, Path(scene["bank"]), dict(SECTION, **changes))
    assert added["concepts"] == 3 and added["names"] == 4
    return out


def _predict(scene: Dict[str, object], model: Path, *extra: str) -> Dict[str, int]:
    out = Path(scene["root"]) / f"{model.name}.json"
    assert cli.main([str(scene["data"]), str(out), "--model", str(model), "--threads", "1", *extra]) == 0
    return read_json(out)["zoo"]


def test_the_bank_moves_the_images_like_its_prototype_to_the_matched_class(scene: Dict[str, object]) -> None:
    truth: Dict[str, int] = scene["truth"]  # type: ignore[assignment]
    cats = [k for k, v in truth.items() if v == 1]
    base = _predict(scene, Path(scene["plain"]))
    assert sum(base[k] == 1 for k in cats) < len(cats), "the random model alone must miss some cats"
    banked_model = _with_bank(scene, Path(scene["plain"]), "banked")
    assert load_bank(banked_model, Manifest.load(banked_model), None).prototypes.shape == (3, 16)
    banked = _predict(scene, banked_model)
    assert all(banked[k] == 1 for k in cats)
    assert sum(banked[k] == v for k, v in truth.items()) > sum(base[k] == v for k, v in truth.items())


def test_a_bank_of_weight_zero_changes_nothing(scene: Dict[str, object], tiny_model: Path) -> None:
    """On the full tiny model (balancing and transductive steps on) and on the plain one."""
    for model in (tiny_model, Path(scene["plain"])):
        banked = _with_bank(scene, model, f"zero-{model.name}", weight=0.0)
        assert _predict(scene, banked) == _predict(scene, model)


@pytest.mark.parametrize("how", ["bytes", "rehashed"])
def test_a_corrupt_concept_file_costs_the_bank_not_the_run(
        scene: Dict[str, object], how: str, caplog: pytest.LogCaptureFixture) -> None:
    """``bytes``: the file no longer matches its sha256; ``rehashed``: the manifest vouches for a file that is not
    a concept list. Either way predict runs without the bank (a warning names the file) and predicts as the
    model without a bank does."""
    model = _with_bank(scene, Path(scene["plain"]), f"corrupt-{how}")
    concepts = model / "visual_bank.json"
    if how == "bytes":
        concepts.write_bytes(concepts.read_bytes()[:-5])
    else:
        concepts.write_text('{"concepts": [{"ru": "кошка"}]}', encoding="utf-8")
        manifest = read_json(model / MANIFEST_NAME)
        manifest["files"]["visual_concepts"].update(sha256=sha256_file(concepts), size=concepts.stat().st_size)
        (model / MANIFEST_NAME).write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    out = Path(scene["root"]) / f"corrupt-{how}.json"
    caplog.clear()
    assert cli.main([str(scene["data"]), str(out), "--model", str(model), "--threads", "1"]) == 0
    assert str(concepts) in caplog.text and "visual concept bank not used" in caplog.text
    assert read_json(out) == {"zoo": _predict(scene, Path(scene["plain"]))}


# ---------------------------------------------------------------------------------------- load_bank


@pytest.fixture(scope="module")
def bank_model(scene: Dict[str, object]) -> Path:
    return _with_bank(scene, Path(scene["plain"]), "bank-model")


@pytest.fixture()
def bank_folder(bank_model: Path, tmp_path: Path) -> Path:
    """A fresh copy of the plain model with the bank, for editing its files (read with verify=False)."""
    return Path(shutil.copytree(bank_model, tmp_path / "m"))


@pytest.mark.parametrize("text", [
    "{not json", '{"concepts": [{"ru": "кошка"}, {"ru": "самолёт"}]}', '{"concepts": {"ru": "кошка"}}', "[1]",
    '{"concepts": [{"ru": 5, "source": "a"}, {"ru": "самолёт", "source": "b"}]}',
    '{"concepts": [{"ru": "кошка", "synonyms": "кот", "source": "a"}]}',
])
def test_a_malformed_concept_list_is_an_error_naming_the_file(bank_folder: Path, text: str) -> None:
    path = bank_folder / "visual_bank.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=f"{path}: not a concept list"):
        load_bank(bank_folder, Manifest.load(bank_folder), None, verify=False)


@pytest.mark.parametrize("role", ["visual_names", "visual_prototypes"])
def test_counts_that_disagree_with_the_concept_list_name_the_file(bank_folder: Path, role: str) -> None:
    manifest = Manifest.load(bank_folder)
    path = bank_folder / manifest.file(role).path
    stored = np.load(path)
    np.save(path, np.concatenate([stored, stored[:1]]))
    with pytest.raises(ValueError, match=str(path)):
        load_bank(bank_folder, manifest, None, verify=False)


# ------------------------------------------------------------------- your own folders, any model folder


def test_own_folders_become_concepts_and_install_into_a_model(scene: Dict[str, object]) -> None:
    """add-folders: one concept per folder, named by the folder, encoded by the given model; install: the bank
    into a model folder through the command line, after which predict uses it (it moves the cats)."""
    from train.visual_bank import main, read_bank

    root = Path(scene["root"]) / "own"
    truth: Dict[str, int] = scene["truth"]  # type: ignore[assignment]
    images = Path(scene["data"]) / "zoo" / "img"
    for name, label in ((CAT, 1), (TRACTOR, 0), ("пусто", None)):
        (root / "folders" / name).mkdir(parents=True)
        for path in sorted(images.iterdir()):
            if truth[path.name[:-len(".jpg")]] == label:
                shutil.copy(path, root / "folders" / name / path.name)
    bank = root / "bank"
    assert main(["add-folders", str(root / "folders"), "--source", "mine", "--model", str(scene["plain"]),
                 "--rung", "", "--out", str(bank)]) == 0
    records, protos = read_bank(bank)
    assert sorted(r["ru"] for r in records) == sorted([CAT, TRACTOR])  # the empty folder is no concept
    assert {r["source"] for r in records} == {"mine"} and protos.shape == (2, 16)
    assert main(["add-folders", str(root / "folders"), "--source", "mine", "--model", str(scene["plain"]),
                 "--rung", "", "--out", str(bank)]) == 0
    assert len(read_bank(bank)[0]) == 2  # a re-run replaces the source's concepts
    model = root / "model"
    shutil.copytree(Path(scene["plain"]), model)
    assert main(["install", "--model", str(model), "--bank", str(bank), "--embedding-output", "text_embeds",
                 "--threshold", "0.5", "--scale", "50", "--weight", "5", "--center", "no"]) == 0
    assert Manifest.load(model).visual_bank == _cfg(threshold=0.5, scale=50.0, weight=5.0, margin=0.02)
    cats = [k for k, v in truth.items() if v == 1]
    assert all(_predict(scene, model)[k] == 1 for k in cats)


def test_many_classes_are_matched_block_by_block_as_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """Matching in blocks (bounded memory for 50,000 class names) gives what one block gives."""
    import zeroshot.visual_bank as vb

    rng = np.random.default_rng(0)
    names = [["альфа", "а"], ["бета"], ["гамма", "г", "гам"]]
    bank = _bank(names, ["a/a", "b/b", "c/c"], rng.normal(size=(6, 4)), rng.normal(size=(3, 5)), threshold=0.3,
                 margin=0.2)
    classes = [f"класс {i}" for i in range(23)] + ["гамма"]
    vecs = rng.normal(size=(24, 4))
    whole = bank.match(classes, vecs)
    monkeypatch.setattr(vb, "MATCH_BLOCK", 5)
    blocks = bank.match(classes, vecs)
    assert whole.any and blocks.matched.tolist() == whole.matched.tolist() and blocks.concepts == whole.concepts
    np.testing.assert_allclose(blocks.prototypes, whole.prototypes, atol=1e-6)
    assert len(whole.prototypes) == int(whole.matched.sum()) and 2 in whole.concepts[-1]


def test_prototypes_of_another_feature_space_cost_the_bank_not_the_run(
        scene: Dict[str, object], caplog: pytest.LogCaptureFixture) -> None:
    """A bank whose prototypes do not have the image features' width (another model's, another rung's) is
    refused by install, and when a model folder carries one anyway, predict runs without it."""
    from train.visual_bank import add_to_model, write_bank

    root = Path(scene["root"]) / "width"
    write_bank(root / "bank", [{"ru": CAT, "synonyms": [], "source": "x", "repo": "x/x", "commit": "",
                                "images": 8}], np.ones((1, 5)), {}, [], None)
    model = Path(shutil.copytree(Path(scene["plain"]), root / "model"))
    with pytest.raises(ValueError, match="16-d features, the bank's prototypes give 5"):
        add_to_model(model, root / "bank", dict(SECTION))
    banked = _with_bank(scene, Path(scene["plain"]), "width-model")
    path = banked / "visual_bank.default.npy"
    np.save(path, np.ones((3, 5), np.float16))
    manifest = read_json(banked / MANIFEST_NAME)
    manifest["files"]["visual_prototypes"].update(sha256=sha256_file(path), size=path.stat().st_size)
    (banked / MANIFEST_NAME).write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    caplog.clear()
    assert _predict(scene, banked) == _predict(scene, Path(scene["plain"]))
    assert "visual concept bank not used" in caplog.text and "5-d" in caplog.text


def test_install_on_a_laddered_model_gives_each_rung_its_slice_and_drops_stale_files(tmp_path: Path) -> None:
    """A 32-d bank whose first 16 columns are the defaults' space and last 16 a rung's own: that rung gets its
    own file; installed again with the defaults' slice for every rung, the rung's own file is dropped."""
    from train.tiny_model import LADDER, build_tiny_model
    from train.visual_bank import add_to_model, write_bank
    from zeroshot.encoders import Model

    model = tmp_path / "model"
    build_tiny_model(model, ladder=True)
    rung = list(LADDER)[-1]
    rng = np.random.default_rng(0)
    write_bank(tmp_path / "bank", [{"ru": n, "synonyms": [], "source": "x", "repo": "x/x", "commit": "",
                                    "images": 8} for n in (CAT, TRACTOR)], rng.normal(size=(2, 32)), {}, [], None)
    slices = {name: (0, 16) for name in [None, *LADDER]}
    added = add_to_model(model, tmp_path / "bank", dict(SECTION), {**slices, rung: (16, 32)})
    assert added["concepts"] == 2
    manifest = Manifest.load(model)
    assert manifest.file("visual_prototypes", rung).path != manifest.file("visual_prototypes").path
    np.testing.assert_allclose(Model(model, threads=1, variant=rung).bank.prototypes,
                               _unit(np.load(tmp_path / "bank" / "prototypes.npy").astype(np.float32)[:, 16:]),
                               atol=1e-2)
    add_to_model(model, tmp_path / "bank", dict(SECTION), slices)
    manifest = Manifest.load(model)
    assert all("visual_prototypes" not in v.files for v in manifest.variants.values())
    assert Model(model, threads=1, variant=rung).bank.prototypes.shape == (2, 16)
