"""Parts of train.export in isolation: the int32 ArgMax rewrite, fp16 storage, int8 on the judge's
onnxruntime, vocabulary trimming, the default-variant choice and the torchvision stand-ins."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from train.export import build, trim, variants
from train.export.onnx_text import export_text_encoder, onnx_text_embeddings
from train.export.ort116 import check_judge_runtime
from train.export.parity import row_cosines

REPO = Path(__file__).resolve().parent.parent
VENDOR = REPO / "vendor"
torch.set_num_threads(1)


class EotText(nn.Module):
    """CLIP-style text tower: embeddings, one linear layer, pooled at the argmax id (the EOT token)."""

    def __init__(self, vocab: int = 50, dim: int = 8) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.table(ids))
        return x[torch.arange(x.shape[0]), ids.argmax(dim=-1)]


def _ids(n: int = 12, length: int = 6, vocab: int = 50) -> np.ndarray:
    rng = np.random.default_rng(0)
    ids = rng.integers(1, vocab - 1, size=(n, length))
    ids[:, -2] = vocab - 1  # the EOT id is the largest
    return ids.astype(np.int64)


def test_eot_argmax_reads_int32_and_loads_on_the_judge_runtime(tmp_path: Path) -> None:
    path = tmp_path / "text.onnx"
    record = export_text_encoder(EotText().eval(), path, _ids(), fixed_length=True)
    assert record["argmax_casts"] == 1 and record["min_cosine"] >= 0.9999
    graph = onnx.load(str(path)).graph
    argmax = next(n for n in graph.node if n.op_type == "ArgMax")
    producer = next(n for n in graph.node if argmax.input[0] in n.output)
    assert producer.op_type == "Cast" and producer.attribute[0].i == onnx.TensorProto.INT32
    if not list(VENDOR.glob("onnxruntime-1.16.3-cp%d%d-*.whl" % sys.version_info[:2])):
        pytest.skip("vendor/ has no onnxruntime 1.16.3 wheel for this Python (make vendor)")
    assert check_judge_runtime([path], VENDOR)["onnxruntime"] == "1.16.3"


def test_export_fails_loudly_when_onnx_differs_from_torch(tmp_path: Path) -> None:
    class Noisy(EotText):
        def forward(self, ids: torch.Tensor) -> torch.Tensor:  # differs between trace and check runs
            return super().forward(ids) + torch.randn(1).item()

    with pytest.raises(ValueError, match="cosine"):
        export_text_encoder(Noisy().eval(), tmp_path / "t.onnx", _ids(), fixed_length=True, min_cosine=0.999999)


def test_fp16_storage_halves_the_file_and_keeps_fp32_compute(tmp_path: Path) -> None:
    src, dst = tmp_path / "t.onnx", tmp_path / "t.fp16.onnx"
    module = EotText(vocab=2000, dim=64).eval()
    export_text_encoder(module, src, _ids(vocab=2000), fixed_length=True)
    assert variants.to_fp16_storage(src, dst) >= 1
    assert dst.stat().st_size < 0.6 * src.stat().st_size
    graph = onnx.load(str(dst)).graph
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    cos = row_cosines(onnx_text_embeddings(src, _ids(vocab=2000)), onnx_text_embeddings(dst, _ids(vocab=2000)))
    assert cos.min() > 0.999


def test_int8_quantizes_matmul_and_gather_only(tmp_path: Path) -> None:
    src, dst = tmp_path / "t.onnx", tmp_path / "t.int8.onnx"
    export_text_encoder(EotText(vocab=2000, dim=64).eval(), src, _ids(vocab=2000), fixed_length=True)
    variants.to_int8_dynamic(src, dst, text=True)
    ops = {n.op_type for n in onnx.load(str(dst)).graph.node}
    assert "ConvInteger" not in ops and ({"MatMulInteger", "DynamicQuantizeLinear"} & ops)
    assert dst.stat().st_size < 0.5 * src.stat().st_size


def test_vocabulary_trimming_maps_unknown_ids_to_unk_and_keeps_pad() -> None:
    def tokenize(texts):  # a toy tokenizer: one id per character code mod 40, <s>=0 <pad>=1 </s>=2 <unk>=3
        rows = [[0] + [4 + ord(c) % 36 for c in t] + [2] for t in texts]
        width = max(map(len, rows))
        ids = np.full((len(rows), width), 1, np.int64)
        mask = np.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, :len(r)], mask[i, :len(r)] = r, 1
        return ids, mask

    kept = trim.choose_vocabulary(tokenize, ["abc", "b"], [0, 1, 2, 3], vocab_size=40)
    assert list(kept[:4]) == [0, 1, 2, 3]
    id_map = trim.build_id_map(kept, 40, unk_id=3)
    assert id_map.dtype == np.int32 and id_map[1] == 1 and id_map[4 + ord("z") % 36] == 3
    table = nn.Embedding(40, 4, padding_idx=1)
    original = table.weight.detach().clone()
    assert trim.trim_embedding(table, kept) == (40, len(kept))
    a = 4 + ord("a") % 36
    assert torch.equal(table.weight[int(id_map[a])], original[a]) and table.padding_idx == 1
    cov = trim.coverage(tokenize, ["ab", "az"], kept)
    assert cov["texts_with_unknown"] == ["az"] and 0 < cov["share"] < 1


def test_default_variant_follows_the_plan() -> None:
    kept = {"fp32": {}, "fp32-int8text": {}}
    fits = {"fits_size": True, "fits_time": True}
    rows = [{"variant": "fp32", "fits_size": False, "fits_time": True, "archive_mb": 900},
            {"variant": "fp32-int8text", "archive_mb": 500, **fits}]
    assert build.choose_default(kept, rows, "auto") == "fp32-int8text"
    assert build.choose_default(kept, [{"variant": "fp32", "archive_mb": 90, **fits}], "auto") == "fp32"
    assert build.choose_default(kept, None, "auto") == "fp32"
    with pytest.raises(ValueError, match="int8"):
        build.choose_default(kept, rows, "int8")


def test_torchvision_stand_ins_import_and_refuse_use() -> None:
    from train.export import torchvision_shim

    in_use = torchvision_shim.install()
    import open_clip  # noqa: F401  (imports torchvision.transforms at module level)
    from open_clip import transform

    if in_use:
        with pytest.raises(torchvision_shim.TorchvisionUnavailable, match="stand-in"):
            transform.image_transform(224, is_train=False)
        import transformers.utils.import_utils as iu
        assert not iu.is_torchvision_available()


def test_variants_are_dropped_from_the_manifest_when_the_archive_cannot_carry_them_all(tmp_path: Path) -> None:
    """The archive ships every file the manifest names: over 700 MB together, only the default stays."""
    for name, mb in (("image_encoder.onnx", 300), ("text_encoder.onnx", 500), ("text_encoder.int8.onnx", 150)):
        with open(tmp_path / name, "wb") as handle:
            handle.truncate(mb * 10 ** 6)  # sparse: the size is what counts
    files = {"image_encoder": "image_encoder.onnx", "text_encoder": "text_encoder.int8.onnx"}
    kept = {"fp32": {"image_encoder": "image_encoder.onnx", "text_encoder": "text_encoder.onnx"},
            "fp32-int8text": dict(files)}
    listed, record = build.fit_archive(tmp_path, files, kept, "fp32-int8text", tmp_path / "no-vendor")
    assert listed == {"fp32-int8text": files} and record["dropped_variants"] == ["fp32"]
    assert 450 < record["mb"] < 700 < record["mb_with_all_variants"]
    small = {"image_encoder": "image_encoder.onnx", "text_encoder": "text_encoder.int8.onnx"}
    listed, record = build.fit_archive(tmp_path, small, {"fp32-int8text": small}, "fp32-int8text",
                                       tmp_path / "no-vendor")
    assert record["dropped_variants"] == [] and listed == {"fp32-int8text": small}
