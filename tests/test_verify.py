"""zeroshot.verify: claim parsing, presence scores, calibration, the command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from datagen import COLORS, photo

from zeroshot import verify
from zeroshot.scoring import softmax


@pytest.mark.parametrize("text, obj, negated", [
    ("На фото корова", "корова", False),
    ("There is no cow here", "cow", True),
    ("Кошки на фото нет", "кошки", True),
    ("Is there a cow in the picture?", "cow", False),
    ("На этой картинке изображена большая рыжая кошка", "большая рыжая кошка", False),
    ("инь и янь на фото", "инь и янь", False),
    ("The cow is absent", "cow", True),
    ("Корова отсутствует", "корова", True),
    ("There isn't a dog", "dog", True),
    ("Здесь не видно слона", "слона", True),
    ("Это не «гаечный ключ»", "гаечный ключ", True),
    ("Ёж не отсутствует", "еж", False),
    ("на фото", "", False),
    ("Absent from the photo: a cat", "cat", True),
])
def test_parse_claim(text: str, obj: str, negated: bool) -> None:
    claim = verify.parse_claim(text)
    assert (claim.object, claim.negated) == (obj, negated)


def test_presence_is_a_softmax_over_the_allowed_alternatives() -> None:
    obj = np.array([[2.0, 0.0]])
    alt = np.array([[1.0, 3.0, 0.5]])
    keep = np.array([[True, False, True], [True, True, True]])
    got = verify.presence_scores(obj, alt, keep)
    assert got[0, 0] == pytest.approx(softmax(np.array([2.0, 1.0, 0.5]))[0])
    assert got[0, 1] == pytest.approx(softmax(np.array([0.0, 1.0, 3.0, 0.5]))[0])


def test_alternatives_sharing_a_stem_or_a_vector_are_left_out() -> None:
    vecs = np.eye(3)
    keep = verify.alternatives_mask(["слона", "гаечный ключ"], ["слон", "ключ", "дом"], vecs[:2],
                                    np.stack([vecs[2], vecs[2], vecs[0]]))
    assert keep.tolist() == [[False, True, False], [True, False, True]]


def test_best_threshold_maximises_balanced_accuracy() -> None:
    threshold, balanced = verify.best_threshold(np.array([0.6, 0.8, 0.9]), np.array([0.1, 0.2, 0.7, 0.3]))
    assert 0.3 < threshold < 0.6 and balanced == pytest.approx((1.0 + 0.75) / 2)


def test_first_positional_skips_option_values() -> None:
    assert verify.first_positional(["--model", "calibrate", "x.jpg", "кот"]) == "x.jpg"
    assert verify.first_positional(["--log-level", "INFO", "calibrate", "d"]) == "calibrate"


def test_calibrate_then_verify(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                              caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "labelled"
    for label, name in enumerate(["красный", "зелёный", "синий"]):
        (data / name).mkdir(parents=True)
        for i in range(3):
            photo(rng, COLORS[label], (36, 36)).save(data / name / f"{i}.jpg")
    (data / "синий" / "bad.jpg").write_bytes(b"bad")
    out = tmp_path / "calib.json"
    assert verify.main(["--model", str(tiny_model), "calibrate", str(data), "--out", str(out)]) == 0
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved["images"] == 9 and saved["positives"] == 9 and saved["negatives"] == 18 and saved["skipped"] == 1
    capsys.readouterr()
    image = data / "красный" / "0.jpg"
    code = verify.main(["--model", str(tiny_model), str(image), "На фото красный", "Красного здесь нет",
                        "на фото", "--calibration", str(out)])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert code == 0 and len(lines) == 3
    first, second, empty = lines
    assert set(first) == {"claim", "object", "negated", "present", "score", "true"}
    assert first["present"] == (first["score"] >= saved["threshold"])
    assert first["true"] == first["present"] and second["negated"] and second["object"] == "красного"
    assert second["true"] == (not second["present"])
    assert empty["object"] == "" and empty["present"] is None
    # an unreadable image: every claim is still answered, with nulls
    code = verify.main(["--model", str(tiny_model), str(data / "синий" / "bad.jpg"), "кот", "--calibration",
                        str(out)])
    captured = capsys.readouterr()
    assert code == 1 and json.loads(captured.out)["score"] is None and "bad.jpg" in caplog.text
    assert verify.main(["--model", str(tiny_model), str(image), "кот", "--calibration",
                        str(tmp_path / "none.json")]) == 2
    saved["model"] = "another-model"
    out.write_text(json.dumps(saved), encoding="utf-8")
    caplog.clear()
    assert verify.main(["--model", str(tiny_model), str(image), "кот", "--calibration", str(out)]) == 0
    assert "calibrated with model 'another-model'" in caplog.text
