"""The frozen text-feature cache and table: exact, keyed by the encoder, rebuilt when it changes,
one writer under torch.distributed, and the first-epoch look-ahead."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from lgvq.text import (
    BertLikeEncoder,
    CaptionFeatureTable,
    StaleTableError,
    attach_caption_table,
    build_caption_table,
    encode_ahead,
)
from lgvq.text.base import CHUNK_ROWS
from lgvq.text.local_files import default_minilm_dir
from lgvq.text.table import caption_table_dir

CAPTIONS = ["a dog sits on a red mat", "two birds", "a small yellow bird with black wings", "the mat",
            "a cat", "one dog and one cat on the mat", "a red bird", "birds on a branch", "a very small dog"]


def write_tiny_bert(directory, seed: int = 0):
    """A two-layer, 32-wide random BERT on MiniLM's vocabulary."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(directory)
    if not (directory / "vocab.txt").exists():
        (directory / "vocab.txt").symlink_to(default_minilm_dir() / "vocab.txt")
    return directory


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def model_rows_seen(encoder):
    """The input ids of every model run, recorded by a hook on the word embeddings."""
    seen = []
    handle = encoder.model.get_input_embeddings().register_forward_hook(
        lambda module, inputs, output: seen.append(inputs[0].detach().clone()))
    return seen, handle


def perturb(encoder):
    """Change the weights in place, as a load_state_dict of other weights does."""
    state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in encoder.model.state_dict().items()}
    encoder.model.load_state_dict(state)


def assert_same_bits(a, b):
    assert torch.equal(a.words, b.words) and torch.equal(a.sentence, b.sentence)


# ---- fingerprint and the in-memory cache ----------------------------------------------------

def test_fingerprint_follows_weights_and_settings(bert_dir, tmp_path):
    encoder = BertLikeEncoder(bert_dir)
    assert encoder.fingerprint() == BertLikeEncoder(bert_dir).fingerprint()  # a property of the files
    assert encoder.fingerprint() != BertLikeEncoder(bert_dir, max_length=12).fingerprint()
    other = write_tiny_bert(tmp_path, seed=1)
    assert encoder.fingerprint() != BertLikeEncoder(other).fingerprint()
    before = encoder.fingerprint()
    perturb(encoder)
    perturbed = encoder.fingerprint()
    with torch.no_grad():
        encoder.model.get_input_embeddings().weight[5, 0] += 1.0  # one value, in place
    assert len({before, perturbed, encoder.fingerprint()}) == 3


def test_cache_is_exact_and_emptied_when_the_encoder_changes(bert_dir):
    cached = BertLikeEncoder(bert_dir, cache=True)
    first = cached(CAPTIONS)
    assert_same_bits(first, BertLikeEncoder(bert_dir)(CAPTIONS))
    perturb(cached)
    seen, handle = model_rows_seen(cached)
    try:
        after = cached(CAPTIONS[:3])
    finally:
        handle.remove()
    assert seen, "a changed encoder must not be served the old features"
    fresh = BertLikeEncoder(bert_dir)
    fresh.model.load_state_dict(cached.model.state_dict())
    assert_same_bits(after, fresh(CAPTIONS[:3]))
    assert not torch.equal(after.words, first.words[:3])
    assert len(cached.cache) == 3  # the old entries are gone


# ---- the memory-mapped table ----------------------------------------------------------------

def test_table_serves_exact_features_without_running_the_model(bert_dir, tmp_path):
    encoder = BertLikeEncoder(bert_dir)
    table = attach_caption_table(encoder, CAPTIONS + CAPTIONS[:2], tmp_path)
    assert len(table) == len(CAPTIONS) and table.directory == caption_table_dir(tmp_path, CAPTIONS)
    assert json.loads((table.directory / "meta.json").read_text())["fingerprint"] == encoder.fingerprint()
    batch = [CAPTIONS[4], CAPTIONS[0], "a caption the table lacks", CAPTIONS[4]]
    seen, handle = model_rows_seen(encoder)
    try:
        out = encoder(batch)
    finally:
        handle.remove()
    assert len(seen) == 1 and seen[0].shape[0] == CHUNK_ROWS  # the one missing caption only
    assert_same_bits(out, BertLikeEncoder(bert_dir)(batch))


def test_a_stale_table_is_refused_and_rebuilt(bert_dir, tmp_path):
    encoder = BertLikeEncoder(bert_dir)
    first = attach_caption_table(encoder, CAPTIONS, tmp_path)
    perturb(encoder)
    with pytest.raises(StaleTableError, match="built by another text encoder"):
        encoder(CAPTIONS[:2])  # the attached table no longer matches: never served
    rebuilt = attach_caption_table(encoder, CAPTIONS, tmp_path)
    assert rebuilt.directory == first.directory and rebuilt.fingerprint == encoder.fingerprint() != first.fingerprint
    fresh = BertLikeEncoder(bert_dir)
    fresh.model.load_state_dict(encoder.model.state_dict())
    assert_same_bits(encoder(CAPTIONS), fresh(CAPTIONS))
    # a table left by another encoder is rebuilt when attached, not reused
    other = BertLikeEncoder(bert_dir)
    attach_caption_table(other, CAPTIONS, tmp_path)
    assert CaptionFeatureTable(first.directory).fingerprint == other.fingerprint()
    assert_same_bits(other(CAPTIONS), BertLikeEncoder(bert_dir)(CAPTIONS))


def test_a_current_table_is_reused_and_an_incomplete_one_rebuilt(bert_dir, tmp_path, monkeypatch):
    encoder = BertLikeEncoder(bert_dir)
    directory = build_caption_table(encoder, CAPTIONS, caption_table_dir(tmp_path, CAPTIONS))
    builds = []
    monkeypatch.setattr("lgvq.text.table.build_caption_table", lambda *a: builds.append(a) or directory)
    attach_caption_table(encoder, CAPTIONS, tmp_path)
    assert builds == []
    (directory / "offsets.npy").unlink()  # e.g. deleted by hand
    with pytest.raises(FileNotFoundError, match="missing offsets.npy"):
        CaptionFeatureTable(directory)
    monkeypatch.undo()
    table = attach_caption_table(encoder, CAPTIONS, tmp_path)
    assert len(table) == len(CAPTIONS)


def _rank_attaches(rank: int, world: int, port: int, bert_dir, root, report) -> None:
    import torch.distributed as dist

    import lgvq.text.table as table_module

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        built = []
        original = table_module.build_caption_table
        table_module.build_caption_table = lambda *a: built.append(1) or original(*a)
        encoder = BertLikeEncoder(bert_dir)
        attach_caption_table(encoder, CAPTIONS, root)
        out = encoder(CAPTIONS)
        torch.save({"built": len(built), "words": out.words, "sentence": out.sentence}, report / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_under_torch_distributed_rank_0_writes_and_every_rank_reads(bert_dir, tmp_path):
    (tmp_path / "report").mkdir()
    mp.spawn(_rank_attaches, args=(2, _free_port(), bert_dir, tmp_path / "tables", tmp_path / "report"), nprocs=2)
    reports = [torch.load(tmp_path / "report" / f"{rank}.pt") for rank in range(2)]
    assert [r["built"] for r in reports] == [1, 0]
    expected = BertLikeEncoder(bert_dir)(CAPTIONS)
    for report in reports:
        assert torch.equal(report["words"], expected.words) and torch.equal(report["sentence"], expected.sentence)


# ---- the look-ahead -----------------------------------------------------------------------

def test_encode_ahead_yields_the_batches_unchanged_after_caching_their_captions(bert_dir):
    encoder = BertLikeEncoder(bert_dir, cache=True)
    batches = [(torch.full((1,), i), CAPTIONS[i:i + 3]) for i in range(5)]
    stream = encode_ahead(iter(batches), encoder, lookahead=3)
    seen, handle = model_rows_seen(encoder)
    try:
        first = next(stream)
        assert first is batches[0]
        assert {c for _, captions in batches[:3] for c in captions} == set(encoder.cache._entries)
        runs = len(seen)
        assert [next(stream) for _ in range(2)] == batches[1:3] and len(seen) == runs  # served, not rerun
        assert list(stream) == batches[3:]
    finally:
        handle.remove()
    assert encode_ahead(batches, BertLikeEncoder(bert_dir)) is batches  # no cache: nothing to fill
    with pytest.raises(ValueError, match="lookahead"):
        encode_ahead(batches, encoder, lookahead=0)
