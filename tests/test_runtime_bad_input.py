"""Bad input: every kind of broken or unusual image and dataset, each with a test.

An image that cannot be decoded still gets a prediction and a warning naming
the file; a malformed dataset is reported with its path while the others are
still predicted; predict.sh exits 0 once the JSON is written, 1 with --strict.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import read_json, run_predict_sh
from datagen import make_dataset, photo

from zeroshot.images import ImageError, load_image


def _rgb(path: Path, target: int = 32) -> Image.Image:
    img = load_image(path, target)
    assert img.mode == "RGB"
    return img


# --- single files -----------------------------------------------------------------

def test_truncated_jpeg_is_an_image_error_naming_the_file(tmp_path: Path) -> None:
    buf = io.BytesIO()
    photo(np.random.default_rng(0), (10, 200, 10), (200, 150)).save(buf, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    with pytest.raises(ImageError, match="cut.jpg"):
        load_image(path, 32)


@pytest.mark.parametrize("content", [b"", b"this is not an image\n"])
def test_empty_and_text_files_are_image_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fake.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match="fake.jpg"):
        load_image(path, 32)


def test_png_alpha_is_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (20, 20), (255, 0, 0, 0))  # fully transparent red
    img.save(tmp_path / "a.png")
    assert _rgb(tmp_path / "a.png").getpixel((5, 5)) == (255, 255, 255)


def test_palette_png_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (20, 20), 1)
    img.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    img.save(tmp_path / "p.png", transparency=0)
    assert _rgb(tmp_path / "p.png").getpixel((5, 5)) == (0, 0, 255)


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.full((16, 16), 32768, dtype=np.uint16)  # mid grey in 16 bits
    Image.fromarray(arr).save(tmp_path / "g16.png")
    value = _rgb(tmp_path / "g16.png").getpixel((3, 3))
    assert value == (128, 128, 128)


def test_grayscale_and_cmyk_jpeg(tmp_path: Path) -> None:
    Image.new("L", (30, 20), 77).save(tmp_path / "g.jpg")
    Image.new("CMYK", (30, 20), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    assert _rgb(tmp_path / "g.jpg").getpixel((4, 4))[0] in range(74, 81)
    r, g, b = _rgb(tmp_path / "c.jpg").getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60  # CMYK (0, 255, 255, 0) is red


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    out = _rgb(tmp_path / "rot.jpg", 64)
    assert out.size == (20, 40)
    assert out.getpixel((10, 5))[0] > 200 and out.getpixel((10, 35))[0] < 50  # white half now on top


def test_huge_jpeg_decodes_through_draft_mode(tmp_path: Path) -> None:
    Image.new("L", (20000, 20000), 128).save(tmp_path / "huge.jpg", quality=5)
    out = _rgb(tmp_path / "huge.jpg", 260)
    assert min(out.size) >= 260 and max(out.size) <= 20000 // 4


def test_huge_png_is_refused_without_decoding(tmp_path: Path) -> None:
    Image.new("1", (20000, 20000), 0).save(tmp_path / "huge.png")
    with pytest.raises(ImageError, match="huge.png.*too large"):
        load_image(tmp_path / "huge.png", 32)


@pytest.mark.parametrize("fmt,ext", [("WEBP", ".webp"), ("BMP", ".bmp"), ("TIFF", ".tiff")])
def test_other_formats(tmp_path: Path, fmt: str, ext: str) -> None:
    Image.new("RGB", (30, 20), (0, 200, 0)).save(tmp_path / f"x{ext}", fmt)
    assert _rgb(tmp_path / f"x{ext}").size == (30, 20)


def test_animated_gif_uses_the_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (20, 20), c) for c in [(255, 0, 0), (0, 0, 255)]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    r, _, b = _rgb(tmp_path / "anim.gif").getpixel((5, 5))
    assert r > 200 and b < 50


# --- whole runs ------------------------------------------------------------------

@pytest.fixture()
def messy_dataset(tmp_path: Path) -> Path:
    """One dataset with every kind of odd file in img/, and malformed neighbours."""
    root = tmp_path / "data"
    make_dataset(root, "good", ["кошка", "собака", "птица"], 9)
    img = root / "good" / "img"
    (img / "zero.jpg").write_bytes(b"")
    (img / "text.jpg").write_text("hello")
    buf = io.BytesIO()
    photo(np.random.default_rng(1), (0, 0, 200), (120, 90)).save(buf, "JPEG")
    (img / "cut.jpg").write_bytes(buf.getvalue()[:300])
    Image.new("RGBA", (30, 30), (0, 255, 0, 128)).save(img / "alpha.png")
    Image.new("CMYK", (30, 30), (0, 255, 255, 0)).save(img / "cmyk.jpg")
    Image.new("RGB", (30, 30), (0, 0, 255)).save(img / "w.webp", "WEBP")
    (img / ".hidden.jpg").write_bytes(b"")
    (img / "subfolder").mkdir()
    Image.new("RGB", (8, 8)).save(img / "subfolder" / "inner.jpg")
    make_dataset(root, "single", ["единственный класс"], 3)
    make_dataset(root, "dupes", ["кот", "Кот ", "", "пёс"], 8)
    (root / "empty_img").mkdir()
    (root / "empty_img" / "classes.json").write_text('["а", "б"]', encoding="utf-8")
    (root / "empty_img" / "img").mkdir()
    (root / "no_classes" / "img").mkdir(parents=True)
    for name, content in [("not_list", '{"a": 1}'), ("empty_list", "[]"), ("numbers", "[1, 2]"),
                          ("broken_json", "[\"a\", "), ("latin1", None)]:
        (root / name / "img").mkdir(parents=True)
        classes = root / name / "classes.json"
        if content is None:
            classes.write_bytes("['кот']".encode("cp1251"))
        else:
            classes.write_text(content, encoding="utf-8")
    return root


def test_messy_run_predicts_everything_and_names_every_problem(tiny_model: Path, messy_dataset: Path,
                                                               tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    proc = run_predict_sh(messy_dataset, out, tiny_model)
    assert proc.returncode == 0, proc.stderr
    preds = read_json(out)
    # a dataset whose classes.json cannot be read keeps its images (class 0); these have none
    assert sorted(preds) == ["broken_json", "dupes", "empty_img", "empty_list", "good", "latin1", "not_list",
                             "numbers", "single"]
    assert all(preds[name] == {} for name in ("broken_json", "empty_list", "latin1", "not_list", "numbers"))
    good = preds["good"]
    for key in ("zero", "text", "cut", "alpha", "cmyk", "w"):
        assert key in good
    assert ".hidden" not in good and "inner" not in good and len(good) == 9 + 6
    assert set(preds["single"].values()) == {0}
    assert preds["empty_img"] == {}
    assert set(preds["dupes"].values()) <= {0, 3}, "repeats and empty names are never predicted"
    for fragment in ("zero.jpg", "text.jpg", "cut.jpg", "no_classes", "not_list", "empty_list", "numbers",
                     "broken_json", "latin1", "empty or repeated class names"):
        assert fragment in proc.stderr, fragment


def test_strict_turns_problems_into_exit_1_but_still_writes(tiny_model: Path, messy_dataset: Path,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    proc = run_predict_sh(messy_dataset, out, tiny_model, "--strict")
    assert proc.returncode == 1
    assert "good" in read_json(out)


def test_clean_run_with_strict_exits_0(tiny_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_dataset(root, "ok", ["а", "б"], 4)
    proc = run_predict_sh(root, tmp_path / "o.json", tiny_model, "--strict")
    assert proc.returncode == 0, proc.stderr


def test_missing_datasets_dir_exits_2_naming_it(tiny_model: Path, tmp_path: Path) -> None:
    proc = run_predict_sh(tmp_path / "absent", tmp_path / "o.json", tiny_model)
    assert proc.returncode == 2 and str(tmp_path / "absent") in proc.stderr


def test_undecodable_image_gets_the_datasets_most_likely_class(tmp_path: Path) -> None:
    """The broken image's class is the argmax of the decoded images' mean probability, computed here
    from the encoders directly (no balancing or refinement, so that prior is the whole story)."""
    from train.tiny_model import build_tiny_model
    from zeroshot.encoders import Model
    from zeroshot.images import preprocess
    from zeroshot.scoring import class_logits, softmax

    model_dir = tmp_path / "model"
    build_tiny_model(model_dir, seed=3, overrides={"balance": None, "transductive": None})
    root = tmp_path / "data"
    classes = ["красный", "зелёный", "синий", "жёлтый"]
    make_dataset(root, "ds", classes, 12)
    images = sorted((root / "ds" / "img").iterdir())
    (root / "ds" / "img" / "broken.jpg").write_bytes(b"nope")
    out = tmp_path / "o.json"
    assert run_predict_sh(root, out, model_dir).returncode == 0
    preds = read_json(out)["ds"]

    model = Model(model_dir, threads=1)
    size = model.image_cfg.size
    pixels = np.stack([preprocess(load_image(p, size), model.image_cfg, size) for p in images])
    probs = softmax(class_logits(model.encode_images(pixels)[0], model.class_vectors(classes),
                                 model.manifest.score), axis=1)
    assert [preds[p.name[:-len(".jpg")]] for p in images] == probs.argmax(axis=1).tolist()
    prior = probs.mean(axis=0)
    assert preds["broken"] == int(prior.argmax()) != 0, prior  # not the first class by accident
