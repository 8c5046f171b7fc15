"""The HTML evaluation report (zeroshot/html_report.py, ``zeroshot.evaluate --html``) without a browser:
escaping, the numbers against the evaluation JSON, thumbnails as small embedded JPEGs under a cap, nothing
loaded from elsewhere, and the run report's fast and prior images. tests/test_html_report_browser.py opens
the page in Chromium."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest
from PIL import Image

from conftest import read_json
from datagen import make_dataset, photo

from zeroshot import cli, evaluate, html_report
from zeroshot.html_report import MISSING, confusion_pairs, esc, top_confusions

HOSTILE = 'знак <&"опасно">'  # a class name that breaks unescaped HTML
CLASSES = ["кошка", HOSTILE, "собака"]
SECOND = 'вторая <b>&"'  # a dataset (folder) name that needs escaping too


def make_evaluation(root: Path) -> Dict[str, Path]:
    """A small synthetic evaluation in ``root``: two datasets (one with an unreadable and a large image), ground
    truth, predictions with errors, a missing and an extra id, and a run report with fast and prior images.
    Returns the paths: data, gt, pred, run."""
    data = root / "data"
    first = make_dataset(data, "знаки", CLASSES, 12)
    photo(np.random.default_rng(1), (90, 90, 200), (240, 160)).save(data / "знаки" / "img" / "large.jpg")
    (data / "знаки" / "img" / "broken.jpg").write_bytes(b"not a jpeg")
    first.update({"large": 2, "broken": 0})
    second = make_dataset(data, SECOND, CLASSES[:2], 6, seed=1)
    ids = sorted(first)
    guess = {k: v for k, v in first.items()}
    for k in ids[:3]:
        guess[k] = (first[k] + 1) % 3
    guess[ids[3]] = 0 if first[ids[3]] else 1
    del guess[ids[4]]
    pred = {"знаки": dict(guess, stray=1), SECOND: {k: 0 for k in second}}
    run = {"version": 1, "status": "done", "threads": 1, "model": {"name": "tiny <m>", "dir": "x", "variant": None},
           "datasets": {"знаки": {"images": 14, "classes": 3, "tiers": {"full": 9, "fast": 2, "prior": 3},
                                  "fallback": {"fast": ids[5:7], "prior": ["broken", "large", ids[7]]},
                                  "problems": ["знаки/img/broken.jpg: cannot decode <image>"]},
                        SECOND: {"images": 6, "classes": 2, "tiers": {"full": 6, "fast": 0, "prior": 0},
                                 "fallback": {}, "problems": []}}}
    paths = {"data": data, "gt": root / "gt.json", "pred": root / "pred.json", "run": root / "run.json"}
    for key, value in (("gt", {"знаки": first, SECOND: second}), ("pred", pred), ("run", run)):
        paths[key].write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
    return paths


def write_page(root: Path, *extra: str) -> Tuple[str, dict]:
    """Run ``zeroshot.evaluate --html --json`` on :func:`make_evaluation`; returns the page and the JSON."""
    p = make_evaluation(root)
    page, out = root / "report.html", root / "eval.json"
    assert evaluate.main([str(p["gt"]), str(p["pred"]), "--data", str(p["data"]), "--run-report", str(p["run"]),
                          "--html", str(page), "--json", str(out), *extra]) == 0
    return page.read_text(encoding="utf-8"), read_json(out)


class Page(HTMLParser):
    """The parts of a page the tests check: title, text, img sources, every src/href, and the accuracy cells
    with the data-dataset / data-label of their row and table."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.text: List[str] = []
        self.images: List[str] = []
        self.links: List[str] = []
        self.cells: Dict[Tuple[str, Optional[str]], str] = {}  # (dataset, class label or None) -> accuracy
        self.score = ""
        self._stack: List[Tuple[str, Dict[str, Optional[str]]]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, Optional[str]]]) -> None:
        a = dict(attrs)
        self.links += [v for k, v in attrs if k in ("src", "href") and v is not None]
        if tag == "img":
            self.images.append(a.get("src") or "")
        elif tag not in ("meta", "link"):
            self._stack.append((tag, a))

    def handle_endtag(self, tag: str) -> None:
        while self._stack and self._stack.pop()[0] != tag:
            pass

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if not self._stack:
            return
        tag, a = self._stack[-1]
        if tag == "title":
            self.title += data
        elif a.get("id") == "score":
            self.score += data
        elif tag == "td" and "acc" in (a.get("class") or "").split():
            row = next(attrs for t, attrs in reversed(self._stack) if t == "tr")
            table = next(attrs for t, attrs in reversed(self._stack) if t == "table")
            key = (row.get("data-dataset") or table.get("data-dataset") or "", row.get("data-label"))
            self.cells[key] = self.cells.get(key, "") + data


def expected_cells(evaluation: dict) -> Dict[Tuple[str, Optional[str]], str]:
    """The accuracy x 100 the page must show, computed from the evaluation JSON: per dataset and per class."""
    cells: Dict[Tuple[str, Optional[str]], str] = {}
    for d in evaluation["datasets"]:
        cells[(d["name"], None)] = f"{100 * d['accuracy']:.2f}"
        for label, (total, correct) in d["classes"].items():
            cells[(d["name"], label)] = f"{100 * correct / total:.2f}"
    return cells


def test_the_numbers_shown_are_the_evaluation_json(tmp_path: Path) -> None:
    text, evaluation = write_page(tmp_path)
    page = Page(text)
    assert page.score == f"{evaluation['score']:.2f}" and page.title.endswith(page.score)
    assert page.cells == expected_cells(evaluation)
    assert len(page.cells) == 2 + 3 + 2


def test_every_name_is_escaped(tmp_path: Path) -> None:
    text, _ = write_page(tmp_path)
    assert HOSTILE not in text and esc(HOSTILE) in text and SECOND not in text
    assert "<b>&" not in text and "<image>" not in text and "tiny <m>" not in text
    joined = "".join(Page(text).text)
    assert HOSTILE in joined and SECOND in joined and "cannot decode <image>" in joined
    assert re.search(r"<script|<iframe|<object", text, re.I) is None
    assert text.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in text
    assert esc("a\udcff<") == "a\\udcff&lt;"  # a name that was not valid UTF-8 still writes as UTF-8


def test_thumbnails_are_small_embedded_jpegs_and_nothing_is_loaded_from_elsewhere(tmp_path: Path) -> None:
    text, _ = write_page(tmp_path)
    page = Page(text)
    assert page.images and all(src.startswith("data:image/jpeg;base64,") for src in page.images)
    sizes = [Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size for src in page.images]
    assert max(max(s) for s in sizes) == html_report.THUMBNAIL_PX  # the 240 x 160 image, scaled down
    assert all(link.startswith(("data:", "#")) for link in page.links), page.links
    assert "default-src 'none'" in text
    assert 'class="nothumb" title="broken: true 0 кошка' in text  # the unreadable image, named instead


def test_thumbnails_stop_at_the_cap_and_say_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(html_report, "MAX_THUMBNAILS", 2)
    monkeypatch.setattr(html_report, "MIN_THUMBNAILS_PER_DATASET", 1)
    p = make_evaluation(tmp_path)
    gt, pred = evaluate.read_predictions(p["gt"]), evaluate.read_predictions(p["pred"])
    datasets = {ds.name: ds for ds in evaluate.discover(p["data"])[0]}
    page = html_report.render(evaluate.report_dict(evaluate.evaluate(gt, pred)), gt, pred, datasets,
                              read_json(p["run"]), max_thumbnails=2)
    assert len(Page(page).images) == 1  # two datasets share two thumbnails; the second has no confusions
    assert "more images named without a thumbnail (at most 1 thumbnails per dataset)" in page


def test_the_fast_and_prior_images_of_the_run_report_are_shown(tmp_path: Path) -> None:
    text, _ = write_page(tmp_path)
    assert '<div class="tier" data-tier="fast"><p>2 images on the <b>fast</b> tier' in text
    assert '<div class="tier" data-tier="prior"><p>3 images on the <b>prior</b> tier' in text
    assert 'title="large: true 2 собака, predicted 2 собака"' in text
    assert "1 problems" in text and "Every image on the full tier." in text


def test_confusions_are_counted_and_ranked() -> None:
    truth = {"a": 0, "b": 0, "c": 0, "d": 1, "e": 1, "f": 2}
    guess = {"a": 1, "b": 1, "c": 0, "d": 0, "f": 2}
    pairs = confusion_pairs(truth, guess)
    assert pairs == {(0, 1): ["a", "b"], (0, 0): ["c"], (1, 0): ["d"], (1, MISSING): ["e"], (2, 2): ["f"]}
    assert top_confusions(pairs) == [((0, 1), ["a", "b"]), ((1, 0), ["d"]), ((1, MISSING), ["e"])]
    assert top_confusions(pairs, 1) == [((0, 1), ["a", "b"])]


def test_a_large_confusion_matrix_is_left_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(html_report, "MAX_MATRIX_CLASSES", 2)
    text, _ = write_page(tmp_path)
    assert text.count('class="heat"') == 1  # the second dataset's 2 x 2 is kept
    assert "4 classes: the heat map is left out above 2" in text  # three classes and "missing"


def test_the_heat_map_has_a_cell_per_true_and_predicted_class(tmp_path: Path) -> None:
    text, _ = write_page(tmp_path)
    table = text.split('<table class="heat" data-dataset="знаки">')[1].split("</table>")[0]
    assert table.count("<tr>") == 4 and table.count("<td") == 3 * 4  # 3 true classes x (3 predicted + missing)
    assert 'title="0 кошка -&gt; (missing): 1 of 5">1</td>' in table
    assert 'style="background:#fff;color:#222" title="1 знак &lt;&amp;&quot;опасно&quot;&gt; -&gt; 0 кошка: 0 of 4">' \
        '</td>' in table
    assert html_report.heat_colour(1.0, True) == ("hsl(140, 55%, 42%)", "#fff")
    assert html_report.heat_colour(1 / 25, False) == ("hsl(5, 75%, 82%)", "#222")


def test_evaluate_html_after_a_real_run_names_the_prior_images(tiny_model: Path, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    truth = {"a": make_dataset(data, "a", CLASSES, 6)}
    (tmp_path / "gt.json").write_text(json.dumps(truth), encoding="utf-8")
    out, run, page = tmp_path / "out.json", tmp_path / "run.json", tmp_path / "r" / "report.html"
    assert cli.main([str(data), str(out), "--model", str(tiny_model), "--time-budget", "0",
                     "--report", str(run)]) == 0
    assert read_json(run)["datasets"]["a"]["fallback"] == {"prior": sorted(truth["a"])}
    caplog.set_level(logging.INFO)
    assert evaluate.main([str(tmp_path / "gt.json"), str(out), "--data", str(data), "--run-report", str(run),
                          "--html", str(page)]) == 0
    text = page.read_text(encoding="utf-8")
    assert '<div class="tier" data-tier="prior"><p>6 images on the <b>prior</b> tier' in text
    assert all(f"<figcaption>{i}</figcaption>" in text for i in truth["a"])
    assert f"wrote the HTML report {page}" in caplog.text


def test_evaluate_html_errors_are_exit_2(tmp_path: Path) -> None:
    p = make_evaluation(tmp_path)
    (tmp_path / "file").write_text("")
    base = [str(p["gt"]), str(p["pred"])]
    assert evaluate.main(base + ["--html", str(tmp_path / "file" / "r.html")]) == 2
    assert evaluate.main(base + ["--html", str(tmp_path / "r.html"), "--run-report", str(p["gt"])]) == 2
    assert evaluate.main(base + ["--html", str(tmp_path / "r.html"), "--run-report", str(tmp_path / "no")]) == 2
    assert evaluate.main(base + ["--html", str(tmp_path / "r.html")]) == 0  # no --data: no thumbnails, numbers only
    assert "data:image" not in (tmp_path / "r.html").read_text(encoding="utf-8")
