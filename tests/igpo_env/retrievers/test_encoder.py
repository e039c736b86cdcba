"""MiniLM encoder: length-sorted batching keeps row order, thread restore, bf16 tolerance."""

from __future__ import annotations

import numpy as np
import pytest

from igpo_env.data import load_corpus
from igpo_env.retrievers.encoder import (
    BF16_MIN_COSINE,
    MODEL_FILES,
    check_threads,
    cpu_has_native_bf16,
    default_model_dir,
    doc_text,
    length_order,
    model_fingerprint,
    resolve_precision,
    shared_encoder,
)
from igpo_env.retrievers.shipped import agreement

QUERIES = [
    "Which NFL team represented the AFC at Super Bowl 50?",
    "who wrote hamlet",
    "capital of France",
    "What is the name of the largest river in South America by discharge volume?",
]


@pytest.fixture(scope="module")
def encoder():
    return shared_encoder(str(default_model_dir()), 256, 1)


@pytest.fixture(scope="module")
def sample_texts() -> list[str]:
    """14 default-corpus documents of mixed lengths (seeded), plus short queries."""
    docs = load_corpus("default")
    rows = np.random.default_rng(7).choice(len(docs), 14, replace=False)
    return [doc_text(docs[i]) for i in rows] + QUERIES


def test_length_order_is_longest_first_and_stable():
    assert length_order([3, 9, 3, 1, 9]).tolist() == [1, 4, 0, 2, 3]
    assert length_order([]).tolist() == []


def test_sorted_batches_keep_input_order(encoder, sample_texts):
    lengths = encoder.token_lengths(sample_texts)
    assert len(set(lengths)) > 5  # the sample really mixes lengths, so sorting reorders it
    assert length_order(lengths).tolist() != list(range(len(sample_texts)))
    batched = encoder.encode(sample_texts, batch_size=6)
    one_by_one = np.stack([encoder.encode([t])[0] for t in sample_texts])
    np.testing.assert_allclose(batched, one_by_one, atol=2e-5)


def test_threads_apply_to_one_call_and_are_restored(encoder):
    torch = encoder.torch
    before = torch.get_num_threads()
    seen = []
    original = encoder._encode_batch

    def spy(batch, bf16):
        seen.append(torch.get_num_threads())
        return original(batch, bf16)

    encoder._encode_batch = spy
    try:
        encoder.encode(QUERIES, batch_size=2, threads=2)
    finally:
        del encoder._encode_batch
    assert seen == [2, 2]
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        encoder.encode(QUERIES, threads=-1)
    assert check_threads(0) >= 1


def test_bf16_rows_stay_float32_and_within_tolerance(encoder, sample_texts):
    fp32 = encoder.encode(sample_texts, batch_size=8, precision="fp32")
    bf16 = encoder.encode(sample_texts, batch_size=8, precision="bf16")
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    np.testing.assert_allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-5)
    low, worst = agreement(fp32, bf16)
    assert low >= BF16_MIN_COSINE, low
    assert worst > 1e-5  # the bf16 path really ran (float32 would agree to ~1e-7)


def test_precision_and_batch_size_are_checked(encoder):
    assert resolve_precision("fp32") == "fp32"
    assert resolve_precision("auto") == ("bf16" if cpu_has_native_bf16() else "fp32")
    with pytest.raises(ValueError, match="precision"):
        encoder.encode(["x"], precision="fp16")
    with pytest.raises(ValueError, match="batch_size"):
        encoder.encode(["x"], batch_size=0)


def test_progress_bar_shows_count_and_eta(encoder, capfd):
    encoder.encode(QUERIES, batch_size=2, progress=True, desc="unit-test encode")
    err = capfd.readouterr().err
    assert "unit-test encode" in err and "4/4" in err and "<" in err  # tqdm's elapsed<ETA


def test_model_fingerprint_follows_the_model_files(tmp_path):
    src = default_model_dir()
    copy = tmp_path / "model"
    copy.mkdir()
    for name in MODEL_FILES:
        if (src / name).is_file():
            (copy / name).symlink_to(src / name)
    assert model_fingerprint(copy) == model_fingerprint(src)
    (copy / "tokenizer_config.json").unlink()
    (copy / "tokenizer_config.json").write_text('{"model_max_length": 128}')
    assert model_fingerprint(copy) != model_fingerprint(src)
