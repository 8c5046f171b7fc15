"""The evaluation as one self-contained HTML page (``python -m zeroshot.evaluate ... --html FILE``).

One UTF-8 file that needs no network: no scripts, the CSS inline, thumbnails
embedded as base64 JPEG ``data:`` URIs (longest side THUMBNAIL_PX, at most
MAX_THUMBNAILS in a page), and a Content-Security-Policy that lets the page
load nothing else. It shows the score and each dataset's accuracy, then per
dataset: each class's accuracy (worst first), the confusion matrix as a heat
map (a table with background colours), the most frequent confusions with a
few of their images, and, given predict.py's run report (``--report``), the
images that fell to the fast or prior tier. Every name (class names, image
ids, paths) is escaped; a name that is not valid UTF-8 shows its lone
surrogates as ``\\udcXX``.

The numbers come from the evaluation as :func:`zeroshot.evaluate.report_dict`
gives it (what ``--json`` writes), the matrix and the confusions from the
ground truth and the predictions. evaluate is the one module that imports this
one; the judge's path never does.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from .datasets import Dataset
from .images import ImageError, load_image
from .outputs import Predictions, write_bytes_atomic

logger = logging.getLogger(__name__)

THUMBNAIL_PX = 96  # longest side of a thumbnail
JPEG_QUALITY = 70
MAX_THUMBNAILS = 400  # in the whole page (about 3 to 4 KB each), shared evenly by the datasets
MIN_THUMBNAILS_PER_DATASET = 12
TOP_CONFUSIONS = 10  # per dataset
THUMBNAILS_PER_CONFUSION = 4
THUMBNAILS_PER_TIER = 8  # per dataset, of the images on the fast and on the prior tier
IDS_PER_TIER = 40  # named (as text) after those thumbnails
PROBLEMS_SHOWN = 20  # per dataset, from the run report
MAX_MATRIX_CLASSES = 60  # a larger confusion matrix is left out (the confusions list still shows the worst pairs)
TIERS_BELOW_FULL = ("fast", "prior")
MISSING = None  # the "predicted class" of an image the predictions do not have

Pair = Tuple[int, Optional[int]]  # (true class, predicted class or MISSING)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.heat td { width: 1.8em; height: 1.6em; text-align: center; font-size: 80%; padding: 0; }
table.heat th { font-size: 80%; font-weight: normal; }
figure { display: inline-block; margin: 2px; vertical-align: top; text-align: center; }
figure img { display: block; margin: auto; }
figcaption { font-size: 70%; max-width: 96px; overflow-wrap: anywhere; }
.nothumb { display: inline-block; font-size: 75%; padding: 2px 4px; border: 1px dashed #aaa; margin: 2px; }
.note { color: #666; font-size: 90%; }
"""
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def esc(value: Any) -> str:
    """``value`` as HTML text or attribute value: escaped (quotes too); lone surrogates as ``\\udcXX``."""
    text = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return html.escape(text, quote=True)


def percent(correct: int, total: int) -> str:
    """Accuracy x 100 with two decimals, as evaluate prints it."""
    return f"{100.0 * correct / total:.2f}" if total else "0.00"


def class_label(names: List[str], label: Optional[int]) -> str:
    """'3 кошка' for a class with a name, '3' without one, '(missing)' for an image with no prediction."""
    if label is MISSING:
        return "(missing)"
    if 0 <= label < len(names):
        return f"{label} {names[label]}"
    return str(label)


def confusion_pairs(truth: Dict[str, int], guess: Dict[str, int]) -> Dict[Pair, List[str]]:
    """(true class, predicted class or MISSING) -> the sorted ids of the images with that pair."""
    pairs: Dict[Pair, List[str]] = {}
    for image_id in sorted(truth):
        pairs.setdefault((truth[image_id], guess.get(image_id, MISSING)), []).append(image_id)
    return pairs


def top_confusions(pairs: Dict[Pair, List[str]], n: int = TOP_CONFUSIONS) -> List[Tuple[Pair, List[str]]]:
    """The ``n`` most frequent wrong pairs, most images first (ties by true, then predicted class)."""
    wrong = [(pair, ids) for pair, ids in pairs.items() if pair[0] != pair[1]]
    wrong.sort(key=lambda item: (-len(item[1]), item[0][0], item[0][1] is MISSING, item[0][1] or 0))
    return wrong[:n]


def thumbnail_uri(path: Path, size: int = THUMBNAIL_PX, quality: int = JPEG_QUALITY) -> str:
    """A ``data:image/jpeg;base64,...`` URI of ``path`` with its longest side at most ``size`` pixels.

    Decoded by the runtime's :func:`zeroshot.images.load_image` (draft mode, EXIF
    orientation, the decode limits); raises its ImageError for a bad file.
    """
    img = load_image(path, size)
    img.thumbnail((size, size))
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class Thumbnails:
    """Thumbnails of one dataset's images, at most ``limit``; past it, or without a file, the id as text."""

    def __init__(self, images: Dict[str, Path], limit: int) -> None:
        self.images, self.limit = images, limit
        self.uris: Dict[str, Optional[str]] = {}  # id -> its data URI, None when it cannot be decoded
        self.skipped: Set[str] = set()  # ids shown as text because the limit was reached

    @property
    def made(self) -> int:
        return sum(uri is not None for uri in self.uris.values())

    @staticmethod
    def _make(path: Path) -> Optional[str]:
        try:
            return thumbnail_uri(path)
        except ImageError as exc:
            logger.warning("HTML report: no thumbnail: %s", exc)
            return None

    def figure(self, image_id: str, title: str) -> str:
        """One image as a <figure> with its id as caption (``title`` on hover), or a text placeholder."""
        path = self.images.get(image_id)
        if path is not None and image_id not in self.uris:
            if len(self.uris) < self.limit:
                self.uris[image_id] = self._make(path)
            else:
                self.skipped.add(image_id)
        uri = self.uris.get(image_id)
        if uri is None:
            return f'<span class="nothumb" title="{esc(title)}">{esc(image_id)}</span>'
        return (f'<figure><img src="{uri}" alt="{esc(image_id)}" title="{esc(title)}">'
                f"<figcaption>{esc(image_id)}</figcaption></figure>")


@dataclass
class DatasetView:
    """What the page shows of one dataset."""

    score: Dict[str, Any]  # one entry of report_dict()["datasets"]
    truth: Dict[str, int]
    guess: Dict[str, int]
    names: List[str]  # class names ([] without the datasets folder)
    run: Optional[Dict[str, Any]]  # the run report's entry (None without one)

    @property
    def name(self) -> str:
        return str(self.score["name"])

    def class_counts(self) -> List[Tuple[int, int, int]]:
        """(class, images, correct) per true class, worst accuracy first (ties by class)."""
        rows = [(int(label), int(total), int(correct)) for label, (total, correct) in self.score["classes"].items()]
        return sorted(rows, key=lambda r: (r[2] / r[1] if r[1] else 0.0, r[0]))


def heat_colour(share: float, diagonal: bool) -> Tuple[str, str]:
    """(background, text colour) of a matrix cell: white when empty, else green on the diagonal and red off it,
    darker for a larger share of the row (by its square root, so one image in thirty still shows)."""
    if share <= 0:
        return "#fff", "#222"
    lightness = 92 - 50 * share ** 0.5
    background = f"hsl({140 if diagonal else 5}, {55 if diagonal else 75}%, {lightness:.0f}%)"
    return background, "#fff" if lightness < 60 else "#222"


def dataset_table(views: List[DatasetView], runs: bool) -> str:
    """The summary table: dataset, images, correct, accuracy x 100, missing, extra (and tiers with a run report)."""
    head = "<tr><th>dataset</th><th class=num>images</th><th class=num>correct</th><th class=num>accuracy</th>" \
           "<th class=num>missing</th><th class=num>extra</th>" + ("<th>tiers</th>" if runs else "") + "</tr>"
    rows = []
    for i, v in enumerate(views):
        s = v.score
        tiers = ""
        if runs:
            counts = (v.run or {}).get("tiers", {})
            tiers = "<td>" + esc(", ".join(f"{k} {n}" for k, n in counts.items() if n) or "-") + "</td>"
        rows.append(f'<tr data-dataset="{esc(v.name)}"><td><a href="#ds{i}">{esc(v.name)}</a></td>'
                    f'<td class=num>{s["total"]}</td><td class=num>{s["correct"]}</td>'
                    f'<td class="num acc">{percent(s["correct"], s["total"])}</td>'
                    f'<td class=num>{len(s["missing"])}</td><td class=num>{len(s["extra"])}</td>{tiers}</tr>')
    return f'<table id="datasets">{head}{"".join(rows)}</table>'


def class_table(view: DatasetView, pairs: Dict[Pair, List[str]]) -> str:
    """Each true class: images, correct, accuracy x 100 and its most frequent wrong prediction."""
    most_often: Dict[int, str] = {}
    for (t, p), ids in top_confusions(pairs, len(pairs)):
        most_often.setdefault(t, f"{class_label(view.names, p)} ({len(ids)})")
    rows = []
    for label, total, correct in view.class_counts():
        most = most_often.get(label, "")
        rows.append(f'<tr data-label="{label}"><td>{esc(class_label(view.names, label))}</td>'
                    f'<td class=num>{total}</td><td class=num>{correct}</td>'
                    f'<td class="num acc">{percent(correct, total)}</td><td>{esc(most)}</td></tr>')
    return (f'<table class="classes" data-dataset="{esc(view.name)}"><tr><th>class</th><th class=num>images</th>'
            "<th class=num>correct</th><th class=num>accuracy</th><th>most often taken for</th></tr>"
            f'{"".join(rows)}</table>')


def heat_map(view: DatasetView, pairs: Dict[Pair, List[str]]) -> str:
    """The confusion matrix (rows: true class, columns: predicted), each cell shaded by its share of the row."""
    true_classes = sorted({t for t, _ in pairs})
    predicted = {p for _, p in pairs}
    cols: List[Optional[int]] = sorted(set(true_classes) | {p for p in predicted if p is not MISSING})
    if MISSING in predicted:
        cols.append(MISSING)
    if len(cols) > MAX_MATRIX_CLASSES:
        return (f'<p class="note">{len(cols)} classes: the heat map is left out above {MAX_MATRIX_CLASSES}; '
                "the most frequent confusions are listed below.</p>")
    head = "".join(f'<th title="{esc(class_label(view.names, c))}">{"-" if c is MISSING else c}</th>' for c in cols)
    body = []
    for t in true_classes:
        total = sum(len(ids) for (tt, _), ids in pairs.items() if tt == t)
        cells = []
        for c in cols:
            count = len(pairs.get((t, c), []))
            background, colour = heat_colour(count / total if total else 0.0, c == t)
            title = f"{class_label(view.names, t)} -> {class_label(view.names, c)}: {count} of {total}"
            cells.append(f'<td style="background:{background};color:{colour}" title="{esc(title)}">'
                         f'{count or ""}</td>')
        body.append(f'<tr><th>{esc(class_label(view.names, t))}</th>{"".join(cells)}</tr>')
    return (f'<table class="heat" data-dataset="{esc(view.name)}"><tr><th>true \\ predicted</th>{head}</tr>'
            f'{"".join(body)}</table>')


def confusion_list(view: DatasetView, pairs: Dict[Pair, List[str]], thumbs: Thumbnails) -> str:
    """The most frequent wrong pairs, each with a few of its images."""
    top = top_confusions(pairs)
    if not top:
        return '<p class="note">No confusions: every image is right.</p>'
    rows = []
    for (t, p), ids in top:
        title = f"true {class_label(view.names, t)}, predicted {class_label(view.names, p)}"
        figures = "".join(thumbs.figure(i, f"{i}: {title}") for i in ids[:THUMBNAILS_PER_CONFUSION])
        more = f' <span class="note">and {len(ids) - THUMBNAILS_PER_CONFUSION} more</span>' \
            if len(ids) > THUMBNAILS_PER_CONFUSION else ""
        rows.append(f"<tr><td class=num>{len(ids)}</td><td>{esc(class_label(view.names, t))}</td>"
                    f"<td>{esc(class_label(view.names, p))}</td><td>{figures}{more}</td></tr>")
    return ('<table class="confusions"><tr><th class=num>images</th><th>true class</th><th>predicted</th>'
            f'<th>examples</th></tr>{"".join(rows)}</table>')


def tier_section(view: DatasetView, thumbs: Thumbnails) -> str:
    """The images on the fast and prior tiers (run report ``fallback``), and the run's problems."""
    if view.run is None:
        return '<p class="note">Not in the run report.</p>'
    parts = []
    for tier in TIERS_BELOW_FULL:
        count = int(view.run.get("tiers", {}).get(tier, 0))
        if not count:
            continue
        ids = list(view.run.get("fallback", {}).get(tier, []))
        if not ids:
            parts.append(f'<p>{count} images on the <b>{tier}</b> tier (this run report does not name them).</p>')
            continue
        figures = []
        for i in ids[:THUMBNAILS_PER_TIER]:
            title = (f"{i}: true {class_label(view.names, view.truth[i]) if i in view.truth else '?'}, "
                     f"predicted {class_label(view.names, view.guess.get(i, MISSING))}")
            figures.append(thumbs.figure(i, title))
        named = ids[THUMBNAILS_PER_TIER:THUMBNAILS_PER_TIER + IDS_PER_TIER]
        rest = count - min(len(ids), THUMBNAILS_PER_TIER + IDS_PER_TIER)
        text = esc(", ".join(named)) + (f" and {rest} more" if rest > 0 else "")
        parts.append(f'<div class="tier" data-tier="{tier}"><p>{count} images on the <b>{tier}</b> tier:</p>'
                     f'{"".join(figures)}<p class="note">{text}</p></div>')
    if not parts:
        parts.append('<p class="note">Every image on the full tier.</p>')
    problems = list(view.run.get("problems", []))
    if problems:
        items = "".join(f"<li>{esc(p)}</li>" for p in problems[:PROBLEMS_SHOWN])
        more = f"<li>and {len(problems) - PROBLEMS_SHOWN} more</li>" if len(problems) > PROBLEMS_SHOWN else ""
        parts.append(f"<details><summary>{len(problems)} problems</summary><ul>{items}{more}</ul></details>")
    return "".join(parts)


def dataset_section(index: int, view: DatasetView, thumbs: Thumbnails, runs: bool) -> str:
    """One dataset: per-class accuracy, heat map, confusions and (with a run report) tiers."""
    pairs = confusion_pairs(view.truth, view.guess)
    s = view.score
    parts = [f'<section id="ds{index}"><h2>{esc(view.name)}: {percent(s["correct"], s["total"])}</h2>',
             "<h3>Accuracy per class, worst first</h3>", class_table(view, pairs),
             "<h3>Confusion matrix</h3>", heat_map(view, pairs),
             "<h3>Most frequent confusions</h3>", confusion_list(view, pairs, thumbs)]
    if runs:
        parts += ["<h3>Images on the fast and prior tiers</h3>", tier_section(view, thumbs)]
    if thumbs.skipped:
        parts.append(f'<p class="note">{len(thumbs.skipped)} more images named without a thumbnail '
                     f"(at most {thumbs.limit} thumbnails per dataset).</p>")
    parts.append("</section>")
    return "".join(parts)


def run_summary(run_report: Dict[str, Any]) -> str:
    """One line on the run: model, variant, status, threads, seconds, images/s."""
    model = run_report.get("model") or {}
    fields = [("model", model.get("name")), ("variant", model.get("variant")), ("status", run_report.get("status")),
              ("threads", run_report.get("threads")), ("seconds", run_report.get("seconds")),
              ("images/s", run_report.get("images_per_s"))]
    return '<p class="run">Run: ' + esc("; ".join(f"{k} {v}" for k, v in fields if v is not None)) + "</p>"


def render(evaluation: Dict[str, Any], gt: Predictions, pred: Predictions,
           datasets: Optional[Dict[str, Dataset]] = None, run_report: Optional[Dict[str, Any]] = None,
           sources: Iterable[Tuple[str, str]] = (), max_thumbnails: int = MAX_THUMBNAILS) -> str:
    """The page as text. ``evaluation``: report_dict() of evaluate(gt, pred); ``datasets``: name -> Dataset
    (class names and image files; thumbnails need it); ``run_report``: predict.py's ``--report`` JSON;
    ``sources``: (what, path) pairs named under the title."""
    datasets = datasets or {}
    runs = (run_report or {}).get("datasets", {})
    views = [DatasetView(s, gt.get(s["name"], {}), pred.get(s["name"], {}),
                         list(datasets[s["name"]].classes) if s["name"] in datasets else [],
                         runs.get(s["name"])) for s in evaluation["datasets"]]
    share = max(MIN_THUMBNAILS_PER_DATASET, max_thumbnails // max(len(views), 1))
    title = f"zeroshot evaluation: score {evaluation['score']:.2f}"
    parts = [f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
             f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
             '<meta name="viewport" content="width=device-width, initial-scale=1">'
             f'<link rel="icon" href="data:,"><title>{esc(title)}</title><style>{STYLE}</style></head><body>',
             f'<h1>zeroshot evaluation</h1><p>Score (mean accuracy x 100 over {len(views)} datasets): '
             f'<b id="score">{evaluation["score"]:.2f}</b></p>']
    if sources:
        parts.append("<ul>" + "".join(f"<li>{esc(what)}: <code>{esc(path)}</code></li>" for what, path in sources)
                     + "</ul>")
    if run_report is not None:
        parts.append(run_summary(run_report))
    parts.append(dataset_table(views, run_report is not None))
    if evaluation.get("extra_datasets"):
        parts.append('<p class="note">Predicted but not in the ground truth: '
                     f'{esc(", ".join(evaluation["extra_datasets"]))}</p>')
    made = 0
    for i, view in enumerate(views):
        ds = datasets.get(view.name)
        thumbs = Thumbnails(dict(zip(ds.ids, ds.images)) if ds is not None else {}, share)
        parts.append(dataset_section(i, view, thumbs, run_report is not None))
        made += thumbs.made
    parts.append("</body></html>\n")
    logger.info("HTML report: %d datasets, %d thumbnails", len(views), made)
    return "".join(parts)


def write_html(path: Path, page: str) -> None:
    """Write the page to ``path`` atomically, UTF-8."""
    write_bytes_atomic(Path(path), page.encode("utf-8"), durable=False)
