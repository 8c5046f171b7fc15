"""The two ONNX encoders behind one small interface.

:class:`Model` loads ``manifest.json``, checks every model file's sha256 and
opens onnxruntime sessions with thread counts that follow the CPUs this
process may really use (:func:`zeroshot.resources.effective_cpus`: affinity
mask and cgroup quota). With one CPU the intra-op threads do not spin: a
spinning worker burns the quota the decoding and the main thread need.
Prompts are capped in characters and tokens, so any class name costs bounded
time and memory. Nothing here knows which model it runs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np

from .visual_bank import Bank, load_bank
from .linear import load_head
from .manifest import ImageConfig, Manifest, TextConfig, resolve_file
from .resources import effective_cpus
from .text import build_prompts, fill, load_tokenizer, normalize_name

logger = logging.getLogger(__name__)


# Prompts longer than this are cut before tokenising (bounds the tokenizer's time on any input).
MAX_PROMPT_CHARS = 1024
# Token cap per prompt when the manifest's tokenizer fixes no context length (bounds the
# text encoder's memory, which grows with the square of the length in attention).
MAX_PROMPT_TOKENS = 64
TEXT_BATCH = 64


def make_session(path: Path, threads: int, spinning: Optional[bool] = None) -> Any:
    """An onnxruntime CPU session using ``threads`` intra-op threads.

    ``spinning``: let idle intra-op threads spin-wait (default: only with more
    than one thread); one inter-op thread, sequential execution.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    spin = threads > 1 if spinning is None else spinning
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if spin else "0")
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ValueError(f"{path}: onnxruntime cannot load this model: {exc}") from exc


def _check_io(session: Any, path: Path, inputs: Sequence[str], output: str) -> None:
    """Raise ValueError if the graph lacks an input or output the manifest names."""
    have_in = {i.name for i in session.get_inputs()}
    have_out = {o.name for o in session.get_outputs()}
    missing = [n for n in inputs if n not in have_in] + ([output] if output not in have_out else [])
    if missing:
        raise ValueError(f"{path}: graph has no input/output named {missing} "
                         f"(inputs {sorted(have_in)}, outputs {sorted(have_out)})")


class Model:
    """Image encoder, text encoder and tokenizer described by one manifest."""

    def __init__(self, model_dir: Path, threads: Optional[int] = None, verify: bool = True,
                 variant: Optional[str] = None, spinning: Optional[bool] = None) -> None:
        """``threads``: onnxruntime intra-op threads (at most, and by default, the effective CPUs); ``spinning``: see
        :func:`make_session`; ``variant``: a name from the manifest's ``variants`` (e.g. "int8")
        whose files replace the defaults."""
        self.dir = Path(model_dir)
        self.manifest = Manifest.load(self.dir)
        self.threads = effective_cpus(threads).cpus  # --threads lowers the count, never above what we may use
        self.variant = variant
        img_path = resolve_file(self.manifest, self.dir, "image_encoder", verify, variant)
        txt_path = resolve_file(self.manifest, self.dir, "text_encoder", verify, variant)
        self.image_cfg: ImageConfig = self.manifest.image_for(variant)
        self.text_cfg: TextConfig = self.manifest.text
        self.tokenizer = load_tokenizer(self.manifest, self.dir, verify, variant)
        self._image = make_session(img_path, self.threads, spinning)
        self._image_outputs = [self.image_cfg.output] + ([self.image_cfg.features_output]
                                                         if self.image_cfg.features_output else [])
        for name in self._image_outputs:
            _check_io(self._image, img_path, [self.image_cfg.input], name)
        self._text = make_session(txt_path, self.threads, spinning)
        text_inputs = [self.text_cfg.input_ids] + ([self.text_cfg.attention_mask]
                                                   if self.text_cfg.attention_mask else [])
        _check_io(self._text, txt_path, text_inputs, self.text_cfg.output)
        self.head = load_head(self.dir, self.manifest, verify)
        self.bank: Optional[Bank] = None
        try:  # optional: a damaged or mismatched bank costs its gain, never the run
            self.bank = load_bank(self.dir, self.manifest, variant, verify)
            if self.bank is not None:
                _check_io(self._text, txt_path, text_inputs, self.bank.cfg.embedding_output)
                width = self.features_width()
                if width is not None and width != self.bank.prototypes.shape[1]:
                    raise ValueError(f"{self.dir}: the visual bank's prototypes are {self.bank.prototypes.shape[1]}-d, "
                                     f"the image encoder's features {width}-d")
        except Exception as exc:  # noqa: BLE001 - anything wrong with an optional file
            self.bank = None
            logger.warning("visual concept bank not used: %s", exc)
        self._text_dim: Optional[int] = None

    def features_width(self) -> Optional[int]:
        """F, the length of the image encoder's features (its ``features_output``, else its output), when the
        graph states it."""
        name = self._image_outputs[-1]
        shape = next(o.shape for o in self._image.get_outputs() if o.name == name)
        last = shape[-1] if shape else None
        return int(last) if isinstance(last, int) else None

    @property
    def batch_size(self) -> int:
        return self.manifest.batch_size

    def encode_images(self, pixels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """float32 (B, 3, S, S) preprocessed images -> (vectors (B, D), features (B, F)), float32.

        The vectors are scored against the class vectors; the features feed the
        transductive step (the manifest's image.features_output, else the vectors).
        """
        cfg = self.image_cfg
        outs = self._image.run(self._image_outputs, {cfg.input: pixels.astype(np.float32, copy=False)})
        arrays = [np.asarray(o, dtype=np.float32).reshape(len(pixels), -1) for o in outs]
        return arrays[0], arrays[-1]

    def token_batch(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """int64 (len(texts), L) ids and mask, each prompt cut to MAX_PROMPT_CHARS characters and
        to the tokenizer's context length (MAX_PROMPT_TOKENS if it fixes none), EOS kept."""
        ids, mask = self.tokenizer.batch([t[:MAX_PROMPT_CHARS] for t in texts])
        cap = self.tokenizer.context_length or MAX_PROMPT_TOKENS
        if ids.shape[1] <= cap:
            return ids, mask
        lengths = mask.sum(axis=1)
        ids, mask = ids[:, :cap].copy(), mask[:, :cap].copy()
        eos = self.tokenizer.eos_id
        if eos is not None:
            ids[lengths > cap, cap - 1] = eos
        return ids, mask

    def encode_texts(self, texts: Sequence[str], batch: int = TEXT_BATCH, output: Optional[str] = None) -> np.ndarray:
        """Prompts -> float32 (len(texts), D) text vectors (the graph's ``output``, default the manifest's),
        ``batch`` prompts per run."""
        cfg = self.text_cfg
        chunks: List[np.ndarray] = []
        for start in range(0, len(texts), batch):
            ids, mask = self.token_batch(texts[start:start + batch])
            feeds = {cfg.input_ids: ids}
            if cfg.attention_mask:
                feeds[cfg.attention_mask] = mask
            out = self._text.run([output or cfg.output], feeds)[0]
            chunks.append(np.asarray(out, dtype=np.float32).reshape(len(ids), -1))
        return np.concatenate(chunks, axis=0)

    def name_vectors(self, names: Sequence[str],
                     give_up: Optional[Callable[[int, int], bool]] = None) -> Optional[np.ndarray]:
        """Class names -> float32 (C, T): the text encoder's ``visual_bank.embedding_output`` of each normalised name
        (no template), for matching names to the concept bank; None when ``give_up(done, total)`` says so."""
        if self.bank is None:
            raise ValueError(f"{self.dir}: the model has no concept bank")
        cfg = self.text_cfg
        normalized = [normalize_name(n, cfg.normalize) for n in names]
        chunks: List[np.ndarray] = []
        for start in range(0, len(normalized), TEXT_BATCH):
            if give_up is not None and give_up(start, len(normalized)):
                return None
            chunks.append(self.encode_texts(normalized[start:start + TEXT_BATCH],
                                            output=self.bank.cfg.embedding_output))
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)

    def text_dim(self) -> int:
        """D, the length of a text vector: from the graph's output shape, else by encoding one prompt."""
        if self._text_dim is None:
            shape = next(o.shape for o in self._text.get_outputs() if o.name == self.text_cfg.output)
            last = shape[-1] if shape else None
            self._text_dim = int(last) if isinstance(last, int) else int(self.encode_texts(["a"]).shape[1])
        return self._text_dim

    def template_vectors(self, names: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        """Class names -> float32 (T, C, D): every template's prompt of every class, encoded (the tuning tools
        cache them per template; prediction uses :meth:`class_vectors`)."""
        prompts = build_prompts(names, templates, self.text_cfg.normalize)
        return self.encode_texts(prompts).reshape(len(templates), len(names), -1)

    def class_vectors(self, names: Sequence[str],
                      give_up: Optional[Callable[[int, int], bool]] = None) -> Optional[np.ndarray]:
        """Class names -> float32 (C, D): each class's prompts encoded and averaged.

        With cosine similarity each prompt vector is L2-normalised before the
        mean (the CLIP recipe); the mean is normalised again when scoring.
        Prompts are formed and encoded TEXT_BATCH at a time (template-major:
        prompt ``t * C + c`` is template t of class c) and summed into one
        (C, D) array, so memory holds the class vectors once, not a vector
        per prompt. ``give_up(done, total)`` is asked before each batch with
        the prompts encoded so far; when it returns True the encoding stops
        and None is returned.
        """
        templates = self.text_cfg.templates
        normalized = [normalize_name(n, self.text_cfg.normalize) for n in names]
        total = len(templates) * len(normalized)
        out: Optional[np.ndarray] = None
        for start in range(0, total, TEXT_BATCH):
            if give_up is not None and give_up(start, total):
                return None
            rows = np.arange(start, min(start + TEXT_BATCH, total)) % len(normalized)
            prompts = [fill(templates[i // len(normalized)], normalized[i % len(normalized)])
                       for i in range(start, start + len(rows))]
            vecs = prompt_vectors(self.encode_texts(prompts), self.manifest.score.similarity)
            if out is None:
                out = np.zeros((len(normalized), vecs.shape[1]), dtype=np.float32)
            np.add.at(out, rows, vecs)
        if out is None:
            return np.zeros((0, self.text_dim()), dtype=np.float32)
        out /= len(templates)
        return out


def prompt_vectors(vecs: np.ndarray, similarity: str) -> np.ndarray:
    """float32 (..., D) prompt vectors as they enter a class's mean: L2-normalised with cosine similarity
    (the CLIP recipe), as they are otherwise."""
    if similarity == "cosine":
        return vecs / np.maximum(np.linalg.norm(vecs, axis=-1, keepdims=True), 1e-12)
    return vecs


def mean_over_templates(vecs: np.ndarray, similarity: str) -> np.ndarray:
    """float32 (T, C, D) prompt vectors -> (C, D) class vectors: the mean over the T templates of
    :func:`prompt_vectors`, as :meth:`Model.class_vectors` forms them batch by batch."""
    return prompt_vectors(vecs, similarity).mean(axis=0)
