"""Frozen text encoders: MiniLM (embedded weights) and a tiny random CLIP, all offline."""

from __future__ import annotations

import json
import socket

import pytest
import torch
from torch import nn

from lgvq.checks import strict_mode
from lgvq.text import (
    BertLikeEncoder,
    CLIPTextEncoder,
    EncodedText,
    TokenizedText,
    load_text_encoder,
)
from lgvq.text import base as text_base
from lgvq.text.base import CHUNK_ROWS, LENGTH_STEP
from lgvq.text.local_files import default_minilm_dir

CAPTIONS = ["a dog sits on a red mat", "two birds", "a small yellow bird with black wings"]
L = 30


@pytest.fixture(scope="module")
def offline():
    """Hub access off and any network connection an error, for everything loaded here."""

    def refuse(*args, **kwargs):
        raise AssertionError("text encoders must load without network access")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", refuse)
        yield


@pytest.fixture(scope="module")
def minilm(offline) -> BertLikeEncoder:
    return BertLikeEncoder()


@pytest.fixture(scope="module")
def minilm_reference(offline):
    """MiniLM loaded straight through transformers, to check the wrapper against."""
    from transformers import AutoModel, AutoTokenizer

    path = str(default_minilm_dir())
    return (
        AutoTokenizer.from_pretrained(path, local_files_only=True),
        AutoModel.from_pretrained(path, local_files_only=True).eval(),
    )


def input_ids_seen(encoder):
    """Record the ids every forward of ``encoder`` feeds its word-embedding layer."""
    seen = []
    handle = encoder.model.get_input_embeddings().register_forward_hook(
        lambda module, inputs, output: seen.append(inputs[0].detach().cpu().clone())
    )
    return seen, handle


def position_of(tokens: TokenizedText, row: int, token_id: int) -> int:
    hits = (tokens.ids[row] == token_id).nonzero().flatten()
    assert len(hits) == 1, f"token {token_id} appears {len(hits)} times"
    return int(hits[0])


# --------------------------------------------------------------------------- MiniLM


@pytest.mark.minilm
def test_minilm_loads_offline_with_fixed_shapes(minilm):
    out = minilm(CAPTIONS)
    assert isinstance(out, EncodedText)
    assert out.words.shape == (3, L, 384) and out.words.dtype == torch.float32
    assert out.sentence.shape == (3, 384) and out.sentence.dtype == torch.float32
    assert out.tokens.ids.shape == (3, L) and out.tokens.ids.dtype == torch.int64
    assert out.tokens.attention_mask.dtype == torch.int64
    assert out.tokens.special_mask.dtype == torch.bool
    assert (minilm.dim, minilm.sentence_dim, minilm.vocab_size, minilm.max_length) == (
        384,
        384,
        30522,
        L,
    )
    assert minilm.word_embeddings.shape == (30522, 384)
    assert not minilm.word_embeddings.requires_grad


@pytest.mark.minilm
def test_minilm_special_tokens_and_padding(minilm):
    tok = minilm.tokenizer
    out = minilm(["a dog sits on a red mat"])
    ids, special = out.tokens.ids[0], out.tokens.special_mask[0]
    n = len(tok("a dog sits on a red mat")["input_ids"])  # [CLS] 7 words [SEP]
    assert ids[0] == tok.cls_token_id and ids[n - 1] == tok.sep_token_id
    assert (ids[n:] == minilm.pad_token_id).all()
    assert out.tokens.attention_mask[0].tolist() == [1] * n + [0] * (L - n)
    expected_special = torch.zeros(L, dtype=torch.bool)
    expected_special[[0, n - 1]] = True
    expected_special[n:] = True
    assert torch.equal(special, expected_special)
    assert (out.words[0, n:] == 0).all()
    assert (out.words[0, :n].abs().sum(-1) > 0).all()
    assert minilm.mask_token_id == tok.mask_token_id and minilm.pad_token_id == 0


@pytest.mark.minilm
def test_long_captions_are_truncated_to_max_length(minilm):
    out = minilm(["a bird " * 60])
    assert out.tokens.ids.shape == (1, L)
    assert out.tokens.attention_mask.all()
    assert out.tokens.ids[0, -1] == minilm.tokenizer.sep_token_id
    assert out.tokens.special_mask[0].nonzero().flatten().tolist() == [0, L - 1]


@pytest.mark.minilm
def test_same_caption_gives_identical_features(minilm):
    a, b = minilm(CAPTIONS), minilm(CAPTIONS)
    assert torch.equal(a.words, b.words) and torch.equal(a.sentence, b.sentence)


@pytest.mark.minilm
def test_features_do_not_depend_on_the_batch(minilm):
    """A caption's features are the same bits alone, first or last in a batch, and among
    more captions of its length than fill one chunk (a matmul's rounding depends on its
    shape: batched naively, rows of one batch differ from the same rows alone by ~1e-6)."""
    same_length = [f"a red {word} mat" for word in ("dog", "cat", "bird", "cow", "fox", "pig", "hen", "owl", "rat")]
    batches = [CAPTIONS, CAPTIONS[::-1], same_length + CAPTIONS, CAPTIONS + same_length[::-1]]
    for caption in CAPTIONS + same_length[:2]:
        alone = minilm([caption])
        for batch in batches:
            if caption in batch:
                out = minilm(batch)
                i = batch.index(caption)
                assert torch.equal(out.words[i], alone.words[0]), (caption, batch)
                assert torch.equal(out.sentence[i], alone.sentence[0]), (caption, batch)


@pytest.mark.minilm
def test_features_match_transformers_mean_pooling(minilm, minilm_reference):
    tokenizer, model = minilm_reference
    batch = tokenizer(CAPTIONS, padding=True, return_tensors="pt")  # longest, not 30
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected_sentence = (hidden * mask).sum(1) / mask.sum(1)
    out = minilm(CAPTIONS)
    torch.testing.assert_close(out.sentence, expected_sentence, atol=1e-5, rtol=1e-4)
    width = hidden.shape[1]
    torch.testing.assert_close(out.words[:, :width], hidden * mask, atol=1e-5, rtol=1e-4)


@pytest.mark.minilm
def test_encoder_is_frozen_and_stays_in_eval_mode(minilm):
    assert not any(p.requires_grad for p in minilm.parameters())
    parent = nn.Sequential(nn.Linear(2, 2), minilm)
    parent.train()
    try:
        assert minilm.training
        assert not any(m.training for m in minilm.model.modules())
        with torch.enable_grad():
            out = minilm(CAPTIONS[:1])
        assert not out.words.requires_grad and not out.sentence.requires_grad
    finally:
        parent.eval()


@pytest.mark.minilm
def test_encode_masked_hides_the_masked_word(minilm):
    tok = minilm.tokenizer
    tokens = minilm.tokenize(["a dog sits on a red mat"])
    dog_id = tok.convert_tokens_to_ids("dog")
    pos = position_of(tokens, 0, dog_id)
    mask = torch.zeros_like(tokens.special_mask)
    mask[0, pos] = True

    seen, handle = input_ids_seen(minilm)
    try:
        masked = minilm.encode_masked(tokens, mask)
    finally:
        handle.remove()
    assert len(seen) == 1 and not (seen[0] == dog_id).any()
    assert seen[0][0, pos] == tok.mask_token_id
    assert torch.equal(masked.tokens.ids[0, pos], torch.tensor(tok.mask_token_id))

    plain = minilm.encode(tokens)
    changed = (masked.words[0] - plain.words[0]).abs().amax(-1)
    assert changed[pos] > 0.1  # the masked position itself
    real = tokens.attention_mask[0].bool()
    assert (changed[real] > 0).all()  # bidirectional: every neighbour changes too

    # The same caption with the word replaced by [MASK] as text: if the contextual
    # features of the unmasked caption leaked into encode_masked, these would differ (by
    # 0.1 and more, above). encode reads it in a chunk of another shape: rounding differs.
    by_string = minilm(["a [MASK] sits on a red mat"])
    assert torch.equal(by_string.tokens.ids, masked.tokens.ids)
    torch.testing.assert_close(masked.words, by_string.words, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(masked.sentence, by_string.sentence, atol=1e-5, rtol=1e-5)


@pytest.mark.minilm
def test_encode_masked_validates_the_mask(minilm):
    tokens = minilm.tokenize(CAPTIONS[:2])
    on_cls = torch.zeros_like(tokens.special_mask)
    on_cls[0, 0] = True
    on_pad = torch.zeros_like(tokens.special_mask)
    on_pad[1, -1] = True
    with strict_mode():  # a check that reads the mask: strict mode only
        with pytest.raises(ValueError, match="special or padding"):
            minilm.encode_masked(tokens, on_cls)
        with pytest.raises(ValueError, match="special or padding"):
            minilm.encode_masked(tokens, on_pad)
    with pytest.raises(ValueError, match="shape"):
        minilm.encode_masked(tokens, torch.zeros(2, L - 1, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask"):
        minilm.encode_masked(tokens, torch.zeros(2, L))


@pytest.mark.minilm
def test_encode_validates_tokens(minilm):
    tokens = minilm.tokenize(CAPTIONS)
    with pytest.raises(TypeError, match="TokenizedText"):
        minilm.encode(tokens.ids)
    short = TokenizedText(
        tokens.ids[:, :20], tokens.attention_mask[:, :20], tokens.special_mask[:, :20]
    )
    with pytest.raises(ValueError, match="max_length=30"):
        minilm.encode(short)
    out_of_vocab = TokenizedText(
        tokens.ids + minilm.vocab_size, tokens.attention_mask, tokens.special_mask
    )
    with strict_mode(), pytest.raises(ValueError, match="tokens.ids must lie in"):
        minilm.encode(out_of_vocab)


@pytest.mark.parametrize(
    "captions, error, match",
    [
        ([], ValueError, "non-empty"),
        ("a single string", TypeError, "list of str"),
        (None, TypeError, "list of str"),
        (["a dog", 3], TypeError, r"captions\[1\]"),
        (["a dog", ""], ValueError, r"captions\[1\] is empty"),
        (["a dog", "cat", " \t\n"], ValueError, r"captions\[2\] is empty"),
    ],
)
@pytest.mark.minilm
def test_bad_captions_raise_clearly(minilm, captions, error, match):
    with pytest.raises(error, match=match):
        minilm(captions)


@pytest.mark.parametrize(
    "max_length, error, match",
    [(2, ValueError, ">= 3"), (513, ValueError, "<= 512"), ("30", TypeError, "int")],
)
def test_max_length_is_validated(offline, max_length, error, match):
    with pytest.raises(error, match=match):
        BertLikeEncoder(max_length=max_length)


@pytest.mark.minilm
def test_cache_serves_identical_features_without_rerunning(offline, minilm):
    cached = BertLikeEncoder(cache=True, cache_size=2)
    first = cached(["a dog sits on a red mat", "two birds"])
    assert len(cached.cache) == 2
    seen, handle = input_ids_seen(cached)
    try:
        again = cached(["two birds", "a dog sits on a red mat"])
    finally:
        handle.remove()
    assert seen == []  # both served from the cache
    assert torch.equal(again.words[0], first.words[1])
    assert torch.equal(again.words[1], first.words[0])
    assert torch.equal(again.sentence[0], first.sentence[1])
    assert torch.equal(again.tokens.ids[0], first.tokens.ids[1])
    uncached = minilm(["a dog sits on a red mat", "two birds"])
    assert torch.equal(first.words, uncached.words) and torch.equal(first.sentence, uncached.sentence)
    assert torch.equal(again.words, uncached.words.flip(0)) and torch.equal(again.sentence, uncached.sentence.flip(0))


@pytest.mark.minilm
def test_cache_evicts_least_recent_and_handles_duplicates(offline, minilm):
    cached = BertLikeEncoder(cache=True, cache_size=2)
    cached(["c one", "c two"])
    out = cached(["c three", "c three", "c one"])  # c one refreshed, c two evicted
    assert "c two" not in cached.cache
    assert "c one" in cached.cache and "c three" in cached.cache
    assert torch.equal(out.words[0], out.words[1])
    more_than_fits = ["u one", "u two", "u three"]
    out = cached(more_than_fits)
    assert len(cached.cache) == 2
    torch.testing.assert_close(out.words, minilm(more_than_fits).words, atol=1e-5, rtol=1e-5)


def test_cache_is_not_used_for_masked_encodings(offline):
    cached = BertLikeEncoder(cache=True, cache_size=8)
    out = cached(["a dog sits on a red mat"])
    mask = torch.zeros_like(out.tokens.special_mask)
    mask[0, 2] = True
    masked = cached.encode_masked(out.tokens, mask)
    assert len(cached.cache) == 1
    assert not torch.allclose(masked.words, out.words)
    assert torch.equal(cached(["a dog sits on a red mat"]).words, out.words)


def test_load_text_encoder_defaults_to_embedded_minilm(offline):
    for name in (None, "minilm"):
        encoder = load_text_encoder(name, max_length=12)
        assert isinstance(encoder, BertLikeEncoder) and encoder.max_length == 12
    encoder = load_text_encoder(default_minilm_dir())
    assert isinstance(encoder, BertLikeEncoder)


def test_bad_paths_raise_with_download_hint(offline, tmp_path):
    hint = "download openai/clip-vit-base-patch32 elsewhere"
    with pytest.raises(FileNotFoundError, match=hint):
        load_text_encoder("openai/clip-vit-base-patch32")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CLIPTextEncoder(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_text_encoder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(FileNotFoundError, match=f"no model weights.*{hint}"):
        load_text_encoder(tmp_path)
    with pytest.raises(TypeError, match="str or path"):
        load_text_encoder(123)


def test_missing_or_mismatched_tokenizer_is_refused(offline, tmp_path):
    """transformers would build an empty tokenizer here and encode every word as [UNK]."""
    from transformers import BertConfig, BertModel

    minilm_dir = default_minilm_dir()
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).symlink_to(minilm_dir / name)
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        load_text_encoder(no_tokenizer)

    small_vocab = tmp_path / "small_vocab"
    config = BertConfig(
        vocab_size=100,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
    )
    BertModel(config).save_pretrained(small_vocab)
    (small_vocab / "vocab.txt").symlink_to(minilm_dir / "vocab.txt")
    with pytest.raises(ValueError, match="different checkpoints"):
        load_text_encoder(small_vocab)


@pytest.mark.gpu
@pytest.mark.minilm
def test_outputs_follow_the_model_device(offline, minilm):
    encoder = BertLikeEncoder(cache=True).to("cuda")
    for _ in range(2):  # computed, then from the cache
        out = encoder(CAPTIONS)
        assert out.words.is_cuda and out.sentence.is_cuda and out.tokens.ids.is_cuda
        torch.testing.assert_close(out.words.cpu(), minilm(CAPTIONS).words, atol=1e-4, rtol=1e-4)
    assert encoder.word_embeddings.is_cuda


# --------------------------------------------------------------------------- tiny CLIP

CLIP_WORDS = ["a", "dog", "cat", "sits", "on", "the", "red", "mat", "photo", "of"]


def write_tiny_clip_tokenizer_files(directory):
    """vocab.json + merges.txt of a byte-level BPE that spells CLIP_WORDS as single tokens.

    Every lowercase letter is a token too, so any lowercase caption tokenises.
    """
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {}
    for token in ["!", "!</w>", *letters, *[c + "</w>" for c in letters]]:
        vocab.setdefault(token, len(vocab))
    merges = []
    for word in CLIP_WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            if f"{merged} {piece}" not in merges:
                merges.append(f"{merged} {piece}")
            merged += piece
            vocab.setdefault(merged, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


@pytest.fixture(scope="module")
def tiny_clip_dirs(offline, tmp_path_factory):
    """A random tiny CLIP saved twice: as a text-only checkpoint and as a full CLIPModel."""
    from transformers import (
        CLIPConfig,
        CLIPModel,
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    vocab_dir = tmp_path_factory.mktemp("clip_vocab")
    write_tiny_clip_tokenizer_files(vocab_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(vocab_dir), local_files_only=True)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=32,
        projection_dim=24,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    text_only = tmp_path_factory.mktemp("clip_text")
    CLIPTextModelWithProjection(text_config).save_pretrained(text_only)
    tokenizer.save_pretrained(text_only)

    full = tmp_path_factory.mktemp("clip_full")
    vision = dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        image_size=8, patch_size=4,
    )
    config = CLIPConfig(text_config=text_config.to_dict(), vision_config=vision, projection_dim=24)
    CLIPModel(config).save_pretrained(full)
    tokenizer.save_pretrained(full)
    return {"text_only": text_only, "full": full}


@pytest.fixture(scope="module")
def tiny_clip(tiny_clip_dirs) -> CLIPTextEncoder:
    return CLIPTextEncoder(tiny_clip_dirs["text_only"])


def test_tiny_clip_shapes_special_tokens_and_padding(tiny_clip):
    tok = tiny_clip.tokenizer
    out = tiny_clip(["a dog sits on the red mat", "a cat"])
    assert out.words.shape == (2, L, 32) and out.sentence.shape == (2, 24)
    assert (tiny_clip.dim, tiny_clip.sentence_dim) == (32, 24)
    assert tiny_clip.word_embeddings.shape == (tiny_clip.vocab_size, 32)
    ids = out.tokens.ids[0]
    assert ids[0] == tok.bos_token_id and ids[8] == tok.eos_token_id  # 7 words
    assert (ids[9:] == tiny_clip.pad_token_id).all()
    assert out.tokens.special_mask[0].tolist() == [True] + [False] * 7 + [True] * (L - 8)
    assert out.tokens.attention_mask[1].tolist() == [1] * 4 + [0] * (L - 4)
    assert (out.words[1, 4:] == 0).all() and (out.words[1, :4].abs().sum(-1) > 0).all()
    assert tiny_clip.mask_token_id == tok.get_vocab()["!"]
    assert tiny_clip.mask_token_id not in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert not any(p.requires_grad for p in tiny_clip.parameters())


def test_tiny_clip_matches_transformers(tiny_clip, tiny_clip_dirs):
    from transformers import CLIPModel

    captions = ["a photo of a dog", "the red cat sits on the mat"]
    reference = CLIPModel.from_pretrained(str(tiny_clip_dirs["full"]), local_files_only=True).eval()
    from_full = CLIPTextEncoder(tiny_clip_dirs["full"])
    batch = from_full.tokenizer(captions, padding=True, return_tensors="pt")  # longest, not 30
    with torch.no_grad():
        text = reference.text_model(**batch)
        expected_sentence = reference.text_projection(text.pooler_output)
    out = from_full(captions)
    torch.testing.assert_close(out.sentence, expected_sentence, atol=1e-5, rtol=1e-4)
    mask = batch["attention_mask"].unsqueeze(-1)
    width = mask.shape[1]
    torch.testing.assert_close(
        out.words[:, :width], text.last_hidden_state * mask, atol=1e-5, rtol=1e-4
    )
    token_embedding = reference.text_model.embeddings.token_embedding.weight
    assert torch.equal(from_full.word_embeddings, token_embedding)
    assert tiny_clip(captions).sentence.shape == out.sentence.shape


def test_tiny_clip_encode_masked_is_leak_free(tiny_clip):
    dog_id = tiny_clip.tokenizer.get_vocab()["dog</w>"]
    tokens = tiny_clip.tokenize(["a dog sits on the red mat"])
    pos = position_of(tokens, 0, dog_id)
    mask = torch.zeros_like(tokens.special_mask)
    mask[0, pos] = True
    seen, handle = input_ids_seen(tiny_clip)
    try:
        masked = tiny_clip.encode_masked(tokens, mask)
    finally:
        handle.remove()
    assert not (seen[0] == dog_id).any() and seen[0][0, pos] == tiny_clip.mask_token_id
    plain = tiny_clip.encode_masked(tokens, torch.zeros_like(mask))  # read as encode_masked reads
    changed = (masked.words[0] - plain.words[0]).abs().amax(-1)
    # CLIP is causal: positions before the masked word cannot see it, all later ones do.
    assert (changed[:pos] == 0).all()
    assert (changed[pos:9] > 0).all()
    assert not torch.allclose(masked.sentence, plain.sentence)


def test_load_text_encoder_dispatches_clip_dirs(tiny_clip_dirs):
    for directory in tiny_clip_dirs.values():
        encoder = load_text_encoder(str(directory), max_length=16)
        assert isinstance(encoder, CLIPTextEncoder) and encoder.max_length == 16
        assert encoder(["a cat"]).words.shape == (1, 16, 32)


def test_tiny_clip_validation(tiny_clip_dirs):
    with pytest.raises(ValueError, match="<= 32"):
        CLIPTextEncoder(tiny_clip_dirs["text_only"], max_length=40)
    with pytest.raises(ValueError, match="not in the CLIP tokenizer's vocabulary"):
        CLIPTextEncoder(tiny_clip_dirs["text_only"], mask_token="[MASK]")
    with pytest.raises(ValueError, match="start/end/pad"):
        CLIPTextEncoder(tiny_clip_dirs["text_only"], mask_token="<|endoftext|>")


def test_checkpoint_missing_text_weights_is_refused(tiny_clip_dirs, tmp_path):
    """A CLIP tower without its projection must not load with a random projection."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    source = tiny_clip_dirs["text_only"]
    CLIPTextModel(CLIPTextConfig.from_pretrained(str(source))).save_pretrained(tmp_path)
    CLIPTokenizer.from_pretrained(str(source)).save_pretrained(tmp_path)
    # Which weights the message names depends on transformers: 5.24 finds only text_projection
    # missing, 5.17 matches none of the tower's keys (it lists 37, the first five by name).
    with pytest.raises(ValueError, match=r"lacks \d+ weights of CLIPTextModelWithProjection .*not a complete text encoder"):
        load_text_encoder(tmp_path)


LENGTHS_CAPTIONS = [  # 3 to 14 words, in no order, so that the length groups reorder rows
    "a dog", "a small yellow bird with black wings sits on a branch above the red mat",
    "two birds", "a cat sleeps", "a red mat", "a very small yellow bird with black wings",
    "one dog and one cat", "the mat",
]


@pytest.fixture(params=["minilm", "tiny_clip"])
def any_encoder(request):
    return request.getfixturevalue(request.param)


def untrimmed(encoder, call):
    encoder.trim_padding = False
    try:
        return call()
    finally:
        del encoder.trim_padding  # back to the class default


def model_widths(encoder, call):
    """The (rows, width) of every model run during ``call()``."""
    shapes, handle = [], encoder.model.get_input_embeddings().register_forward_hook(
        lambda module, inputs, output: shapes.append(tuple(inputs[0].shape)))
    try:
        call()
    finally:
        handle.remove()
    return shapes


def test_encode_reads_fixed_chunks_as_wide_as_their_captions(any_encoder):
    """encode: runs of exactly CHUNK_ROWS rows, each the length of its captions rounded up to
    LENGTH_STEP; the features at padding are zero, the rows in batch order."""
    tokens = any_encoder.tokenize(LENGTHS_CAPTIONS)
    shapes = model_widths(any_encoder, lambda: any_encoder.encode(tokens))
    lengths = tokens.attention_mask.sum(1).tolist()
    widths = sorted({min(L, -(-n // LENGTH_STEP) * LENGTH_STEP) for n in lengths})
    assert sorted({w for _, w in shapes}) == widths and len(widths) > 1
    assert {rows for rows, _ in shapes} == {CHUNK_ROWS}
    out = any_encoder.encode(tokens)
    assert (out.words[tokens.attention_mask == 0] == 0).all()
    for i, caption in enumerate(LENGTHS_CAPTIONS):
        assert torch.equal(out.words[i], any_encoder([caption]).words[0])


def test_trimmed_padding_keeps_every_masked_feature(any_encoder, monkeypatch):
    """encode_masked reads fewer positions but gives the padded run's features, rows in
    order: MiniLM packs the real tokens end to end (here in runs of at most 40 tokens), the
    tiny CLIP (causal, pooled at its end token) reads length groups."""
    monkeypatch.setattr(text_base, "PACK_TOKENS", 40)
    tokens = any_encoder.tokenize(LENGTHS_CAPTIONS)
    mask = torch.zeros_like(tokens.special_mask)
    mask[:, 1] = True  # the first word of every caption
    shapes = model_widths(any_encoder, lambda: any_encoder.encode_masked(tokens, mask))
    lengths = tokens.attention_mask.sum(1)
    if isinstance(any_encoder, BertLikeEncoder):
        assert {rows for rows, _ in shapes} == {1} and len(shapes) > 1
        assert sum(w for _, w in shapes) == lengths.sum() and all(w <= 40 or w in lengths for _, w in shapes)
    else:
        assert min(w for _, w in shapes) < max(w for _, w in shapes) <= L  # it read less, in groups
    masked = any_encoder.encode_masked(tokens, mask)
    masked_padded = untrimmed(any_encoder, lambda: any_encoder.encode_masked(tokens, mask))
    torch.testing.assert_close(masked.words, masked_padded.words, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(masked.sentence, masked_padded.sentence, atol=1e-5, rtol=1e-5)
    assert (masked.words[tokens.attention_mask == 0] == 0).all()


def test_packed_captions_keep_their_columns_and_stay_apart(minilm):
    """Packing is exact for any attention mask: a hole in a caption's mask keeps the later
    tokens' positions (their columns), and no caption attends to another; a BERT-like model
    that is not BERT (position ids from the padding, as RoBERTa) is read in length groups."""
    tokens = minilm.tokenize(LENGTHS_CAPTIONS[:4])
    holed = tokens.attention_mask.clone()
    holed[1, 3] = 0
    tokens = TokenizedText(ids=tokens.ids, attention_mask=holed, special_mask=tokens.special_mask | (holed == 0))
    mask = torch.zeros_like(tokens.special_mask)
    mask[:, 2] = True
    assert len(model_widths(minilm, lambda: minilm.encode_masked(tokens, mask))) == 1  # one packed run
    packed = minilm.encode_masked(tokens, mask)
    padded = untrimmed(minilm, lambda: minilm.encode_masked(tokens, mask))
    torch.testing.assert_close(packed.words, padded.words, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed.sentence, padded.sentence, atol=1e-5, rtol=1e-5)
    alone = minilm.encode_masked(tokens.rows([2]), mask[2:3])
    torch.testing.assert_close(packed.words[2], alone.words[0], atol=1e-5, rtol=1e-5)
    config = minilm.model.config
    config.model_type = "roberta"
    try:
        shapes = model_widths(minilm, lambda: minilm.encode_masked(tokens, mask))
    finally:
        config.model_type = "bert"
    assert len(shapes) == 4 and all(w <= L for _, w in shapes)  # a group per caption


