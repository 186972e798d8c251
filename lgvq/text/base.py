"""The text-encoder interface LG-VQ consumes, shared by every concrete encoder.

LG-VQ needs four things from a frozen text encoder: contextual word features W (B, L, Dt),
a sentence feature s (B, Ds), the token ids with their padding / special-token masks, and the
encoder's input word-embedding matrix E (V, Dt) that the masked-text-prediction head scores
against. ``TextEncoder`` provides them with a fixed caption length L so that the guidance
module can allocate per-position parameters (the learned mask vectors are (L, Dt)).

Subclasses only load a Hugging Face model + tokenizer and implement ``_run_model``;
tokenisation, validation, freezing, masking and caching live here once.

The unmasked features of a caption are a function of the caption alone (``encode``): whatever
batch it arrives in, it is read in a chunk of the same fixed shape, so a cached feature, a
feature computed in another batch and one computed in this batch are the same bits.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lgvq.checks import check_tensor, is_strict
from lgvq.text.cache import CaptionFeatureCache, CaptionFeatures
from lgvq.text.fingerprint import encoder_fingerprint, weights_state

DEFAULT_MAX_LENGTH = 30  # the LG-VQ release truncates CLIP captions to 30 tokens
MIN_MAX_LENGTH = 3  # start + end token + at least one word
DEFAULT_CACHE_SIZE = 4096
#: On the CPU a batch is encoded in this many runs of similar caption length (``_length_groups``).
LENGTH_GROUPS = 4
#: Encoders that can pack (``packs``) read the masked captions end to end in runs of
#: at most this many tokens: one (1, ≤ PACK_TOKENS) sequence per run, whose (T, T) attention
#: mask and scores stay small (1 MiB at 512 tokens).
PACK_TOKENS = 512
#: ``encode`` reads captions in chunks of exactly CHUNK_ROWS rows (filled up with copies of
#: the last caption), each as wide as its captions' length rounded up to LENGTH_STEP tokens.
#: A matmul's rounding depends on its shape (a caption's features differ by ~1e-6 between a
#: batch of 1 and a batch of 4 of the same length); within one shape the rows are independent.
CHUNK_ROWS = 8
LENGTH_STEP = 4


@dataclass(frozen=True)
class TokenizedText:
    """Fixed-length token ids of a batch of captions.

    ids: (B, L) int64. attention_mask: (B, L) int64, 1 = real token (special tokens
    included), 0 = padding. special_mask: (B, L) bool, True at start/end/cls/sep/padding
    positions, which masked text prediction must never mask. captions: the source strings
    when built by ``TextEncoder.tokenize``; ``encode`` uses them as cache keys and trusts
    that they match ``ids``. None for ids that no longer spell the captions (masked ids).
    lengths: the real tokens of each row (host integers, read once from the tokenizer's
    output, so that ``encode`` can cut its chunks without reading a device tensor); None:
    read from ``attention_mask`` when needed.
    """

    ids: torch.Tensor
    attention_mask: torch.Tensor
    special_mask: torch.Tensor
    captions: tuple[str, ...] | None = None
    lengths: tuple[int, ...] | None = None

    def to(self, device: torch.device | str) -> TokenizedText:
        # non_blocking: a host→device copy then needs no stream sync (safe from pageable memory)
        return TokenizedText(
            ids=self.ids.to(device, non_blocking=True),
            attention_mask=self.attention_mask.to(device, non_blocking=True),
            special_mask=self.special_mask.to(device, non_blocking=True),
            captions=self.captions,
            lengths=self.lengths,
        )

    def rows(self, index: Sequence[int]) -> TokenizedText:
        """The sub-batch of the given rows (used to encode only the cache misses)."""
        rows = torch.as_tensor(list(index), dtype=torch.long, device=self.ids.device)
        captions = None if self.captions is None else tuple(self.captions[i] for i in index)
        lengths = None if self.lengths is None else tuple(self.lengths[i] for i in index)
        return TokenizedText(
            ids=self.ids[rows],
            attention_mask=self.attention_mask[rows],
            special_mask=self.special_mask[rows],
            captions=captions,
            lengths=lengths,
        )

    def real_lengths(self) -> tuple[int, ...]:
        """``lengths``, or the last real position + 1 of every row (a host read of the mask)."""
        if self.lengths is not None:
            return self.lengths
        positions = torch.arange(1, self.ids.shape[1] + 1, device=self.attention_mask.device)
        return tuple((self.attention_mask.ne(0) * positions).amax(dim=1).tolist())


@dataclass(frozen=True)
class EncodedText:
    """Frozen text features of a batch, on the encoder's device.

    words: (B, L, Dt) float32 contextual word features, zero at padding positions.
    sentence: (B, Ds) float32 sentence feature (Ds = Dt for MiniLM and CLIP ViT-B/32).
    tokens: the tokens the encoder actually read (for ``encode_masked``: the masked ids).
    """

    words: torch.Tensor
    sentence: torch.Tensor
    tokens: TokenizedText


def check_captions(captions) -> list[str]:
    """Validate a batch of captions early, naming the offending index.

    A bare string is rejected because iterating it would silently encode one caption per
    character; empty captions are rejected because they carry no words to align or mask.
    """
    if isinstance(captions, str) or not isinstance(captions, (list, tuple)):
        raise TypeError(f"captions must be a list of str, got {type(captions).__name__}")
    if len(captions) == 0:
        raise ValueError("captions must be a non-empty list of str, got an empty list")
    for i, caption in enumerate(captions):
        if not isinstance(caption, str):
            raise TypeError(f"captions[{i}] must be a str, got {type(caption).__name__}")
        if not caption.strip():
            raise ValueError(f"captions[{i}] is empty or whitespace-only: {caption!r}")
    return list(captions)


def check_max_length(max_length, position_limit: int | None) -> int:
    """L must hold start + end + one word and fit the encoder's position embeddings."""
    if isinstance(max_length, bool) or not isinstance(max_length, int):
        raise TypeError(f"max_length must be an int, got {type(max_length).__name__}")
    if max_length < MIN_MAX_LENGTH:
        raise ValueError(
            f"max_length must be >= {MIN_MAX_LENGTH} (start and end tokens plus one word), "
            f"got {max_length}"
        )
    if position_limit is not None and max_length > position_limit:
        raise ValueError(
            f"max_length must be <= {position_limit} (the encoder's position embeddings), "
            f"got {max_length}"
        )
    return max_length


def check_tokenizer_fits(tokenizer, vocab_size: int) -> None:
    """Refuse a tokenizer that cannot belong to the model: one whose ids index past the
    embedding matrix, or one that knows no words besides its special tokens."""
    size = len(tokenizer)
    if size > vocab_size:
        raise ValueError(
            f"the tokenizer has {size} tokens but the model embeds only {vocab_size}; "
            "they come from different checkpoints"
        )
    if size <= len(set(tokenizer.all_special_ids)):
        raise ValueError(f"the tokenizer knows no words besides its {size} special tokens")


def additive_attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype, *, causal: bool) -> torch.Tensor:
    """The 4-D additive mask (B, 1, 1 or L, L) for a Hugging Face encoder, from the (B, L) 0/1 mask.

    Given a 2-D mask, transformers asks the device whether any position is padded (to skip
    the mask when none is): a host sync on every encode. A 4-D mask is used as it is.
    """
    keep = attention_mask.bool()[:, None, None, :]
    if causal:
        length = attention_mask.shape[1]
        keep = keep & torch.ones(length, length, dtype=torch.bool, device=keep.device).tril()
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (B, L, D) over real tokens, as sentence-transformers pools."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def _token_runs(lengths: Sequence[int], budget: int) -> list[slice]:
    """Consecutive rows in runs of at most ``budget`` tokens (a longer row alone)."""
    runs, start, total = [], 0, 0
    for row, length in enumerate(lengths):
        if row > start and total + length > budget:
            runs.append(slice(start, row))
            start, total = row, 0
        total += length
    runs.append(slice(start, len(lengths)))
    return runs


class TextEncoder(nn.Module, abc.ABC):
    """A frozen pre-trained text encoder with a fixed caption length.

    The wrapped model never trains: its parameters do not require grad, every encode runs
    under ``torch.no_grad`` and the model stays in eval mode (no dropout) even when a
    parent module calls ``.train()``, so the text features are a fixed target.
    Captions longer than ``max_length`` tokens (start/end included) are truncated; shorter
    ones are padded, so every batch is (B, max_length).

    ``encode`` reads each caption in a chunk of fixed shape (CHUNK_ROWS rows, its length
    rounded up to LENGTH_STEP), so its features are the same bits in any batch. With
    ``cache=True`` they are kept on CPU in an LRU map keyed by the caption string (at most
    ``cache_size`` captions, about n_tokens * Dt * 4 bytes each) and served bit-identical to
    a fresh encode; the map is emptied when the encoder's weights, dtype or device change
    (``fingerprint``). A ``CaptionFeatureTable`` (a memory-mapped file of a whole dataset's
    features, ``lgvq.text.table``) can be attached as ``table``; it is consulted first and
    refused once it no longer matches the encoder.

    ``encode_masked`` (the leak-free Lmtp input, new every step) is not cached. On the CPU it
    reads no padding (``trim_padding``, on by default): an encoder that can pack
    (``packs``) reads the captions' real tokens end to end (``_encode_packed``), the
    others read captions of similar length together, each group only up to its longest
    caption (``_length_groups``); the features are padded back to ``max_length``.
    """

    trim_padding = True

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        max_length: int,
        mask_token_id: int,
        sentence_dim: int,
        cache: bool,
        cache_size: int,
    ) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        check_tokenizer_fits(tokenizer, model.get_input_embeddings().num_embeddings)
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"  # CLIP's causal attention needs right padding
        position_limit = getattr(model.config, "max_position_embeddings", None)
        self._max_length = check_max_length(max_length, position_limit)
        self._mask_token_id = int(mask_token_id)
        self._sentence_dim = int(sentence_dim)
        self.cache = CaptionFeatureCache(cache_size) if cache else None
        self.table = None  # a CaptionFeatureTable, attached by lgvq.text.table.attach_caption_table
        self._fingerprint: tuple[tuple, str] | None = None  # (weights_state, digest)

    @abc.abstractmethod
    def _run_model(
        self, ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the wrapped model: (last hidden state (B, L, Dt), sentence feature (B, Ds))."""

    # ----------------------------------------------------------------- properties

    @property
    def word_embeddings(self) -> torch.Tensor:
        """The encoder's input word-embedding matrix E (V, Dt), frozen (shares storage)."""
        return self.model.get_input_embeddings().weight.detach()

    @property
    def dim(self) -> int:
        """Dt: width of the word features and of E."""
        return self.word_embeddings.shape[1]

    @property
    def sentence_dim(self) -> int:
        """Ds: width of the sentence feature (CLIP's projection width, else Dt)."""
        return self._sentence_dim

    @property
    def vocab_size(self) -> int:
        """V: rows of E, i.e. the classes masked text prediction scores."""
        return self.word_embeddings.shape[0]

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def mask_token_id(self) -> int:
        """The id that replaces masked words in ``encode_masked``."""
        return self._mask_token_id

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def device(self) -> torch.device:
        return self.word_embeddings.device

    def fingerprint(self) -> str:
        """A digest of everything the unmasked features depend on: weights, model config,
        tokenizer settings, the chunk shape rule, device, dtype and torch build
        (``lgvq.text.fingerprint``). Hashing the weights takes a fraction of a second, so the
        digest is recomputed only when ``weights_state`` (tensor addresses, in-place version
        counters, dtypes, devices) says a weight may have changed."""
        state = weights_state(self.model)
        if self._fingerprint is None or self._fingerprint[0] != state:
            self._fingerprint = (state, encoder_fingerprint(self, recipe=(CHUNK_ROWS, LENGTH_STEP)))
        return self._fingerprint[1]

    def train(self, mode: bool = True) -> TextEncoder:
        """Record ``mode`` but keep the frozen model in eval mode (dropout off)."""
        super().train(mode)
        self.model.eval()
        return self

    # ----------------------------------------------------------------- tokenise

    def tokenize(self, captions: list[str]) -> TokenizedText:
        """Tokenise to exactly ``max_length`` tokens per caption (truncating, padding)."""
        captions = check_captions(captions)
        batch = self.tokenizer(
            captions,
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_attention_mask=True,
            return_special_tokens_mask=True,
            return_tensors="pt",
        )
        attention_mask = batch["attention_mask"].long()
        special_mask = batch["special_tokens_mask"].bool() | (attention_mask == 0)
        no_words = (~special_mask).sum(1) == 0
        if bool(no_words.any()):
            i = int(no_words.nonzero()[0])
            raise ValueError(f"captions[{i}] has no tokens besides special ones: {captions[i]!r}")
        return TokenizedText(
            ids=batch["input_ids"].long(),
            attention_mask=attention_mask,
            special_mask=special_mask,
            captions=tuple(captions),
            lengths=tuple(attention_mask.sum(1).tolist()),  # right padding: the count is the length
        )

    def _check_tokens(self, tokens) -> TokenizedText:
        if not isinstance(tokens, TokenizedText):
            raise TypeError(
                f"tokens must be a TokenizedText (from .tokenize), got {type(tokens).__name__}"
            )
        ids = check_tensor("tokens.ids", tokens.ids, ndim=2, dtypes=(torch.int64,))
        if ids.shape[1] != self.max_length:
            raise ValueError(
                f"tokens.ids must have length max_length={self.max_length}, got shape "
                f"{tuple(ids.shape)}"
            )
        check_tensor(
            "tokens.attention_mask", tokens.attention_mask, dtypes=(torch.int64, torch.bool)
        )
        check_tensor("tokens.special_mask", tokens.special_mask, dtypes=(torch.bool,))
        for name in ("attention_mask", "special_mask"):
            if getattr(tokens, name).shape != ids.shape:
                raise ValueError(
                    f"tokens.{name} must have the shape of tokens.ids {tuple(ids.shape)}, got "
                    f"{tuple(getattr(tokens, name).shape)}"
                )
        for name in ("captions", "lengths"):
            given = getattr(tokens, name)
            if given is not None and len(given) != ids.shape[0]:
                raise ValueError(f"tokens.{name} has {len(given)} entries for {ids.shape[0]} rows")
        if is_strict() and (bool((ids < 0).any()) or bool((ids >= self.vocab_size).any())):
            raise ValueError(f"tokens.ids must lie in [0, {self.vocab_size})")
        return tokens

    # ----------------------------------------------------------------- encode

    def forward(self, captions: list[str]) -> EncodedText:
        return self.encode(self.tokenize(captions))

    @torch.no_grad()
    def encode(self, tokens: TokenizedText) -> EncodedText:
        """Word and sentence features of ``tokens``, each row a function of its caption alone
        (``_encode_rows``); served from the table and the cache when they are on."""
        tokens = self._check_tokens(tokens)
        if tokens.captions is not None and (self.cache is not None or self.table is not None):
            return self._assemble(self._cached_rows(tokens), tokens)
        return self._assemble(self._encode_rows(tokens), tokens)

    @torch.no_grad()
    def encode_masked(self, tokens: TokenizedText, mask: torch.Tensor) -> EncodedText:
        """Re-encode with the ``mask`` (B, L) positions replaced by ``mask_token_id``.

        This is the leak-free input of masked text prediction: the contextual features of
        the unmasked neighbours are computed without ever seeing the masked words. Masking a
        special or padding position is a bug in the caller; strict mode (``lgvq.set_strict``)
        checks for it, and for ids outside the vocabulary (both checks read the device).
        """
        tokens = self._check_tokens(tokens)
        check_tensor("mask", mask, ndim=2, dtypes=(torch.bool,), nonempty=False)
        if mask.shape != tokens.ids.shape:
            raise ValueError(
                f"mask must have the shape of tokens.ids {tuple(tokens.ids.shape)}, got "
                f"{tuple(mask.shape)}"
            )
        mask = mask.to(tokens.ids.device)
        if is_strict() and bool((mask & tokens.special_mask).any()):
            raise ValueError(
                "mask must not cover special or padding positions (tokens.special_mask)"
            )
        masked = TokenizedText(
            ids=tokens.ids.masked_fill(mask, self.mask_token_id),
            attention_mask=tokens.attention_mask,
            special_mask=tokens.special_mask,
            lengths=tokens.lengths,
        )
        return self._encode_batch(masked)

    @property
    def packs(self) -> bool:
        """Whether ``_run_packed`` can read several captions as one sequence (default: no)."""
        return False

    def _run_packed(self, ids: torch.Tensor, positions: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        """The last hidden state (T, Dt) of T tokens of several captions laid end to end: token
        t at position ``positions[t]`` of caption ``segments[t]``, attending only to its own
        caption's tokens. Only for encoders that ``packs``."""
        raise NotImplementedError(f"{type(self).__name__} does not pack captions")

    def _encode_batch(self, tokens: TokenizedText) -> EncodedText:
        """``encode_masked``'s model runs: the whole batch, packed or in ``_length_groups`` on the CPU."""
        tokens = tokens.to(self.device)
        if self.packs and self._trims(tokens.ids):
            return self._encode_packed(tokens)
        ids, attention = tokens.ids, tokens.attention_mask.long()
        words = sentence = None
        for rows, length in self._length_groups(attention):
            hidden, pooled = self._run_model(ids[rows, :length], attention[rows, :length])
            if words is None:
                words = hidden.new_zeros(*ids.shape, hidden.shape[-1], dtype=torch.float32)
                sentence = pooled.new_empty(ids.shape[0], pooled.shape[-1], dtype=torch.float32)
            words[rows, :length] = hidden.float()
            sentence[rows] = pooled.float()
        real = tokens.attention_mask.unsqueeze(-1).to(torch.float32)
        return EncodedText(words=words * real, sentence=sentence, tokens=tokens)

    def _length_groups(self, attention: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
        """(rows, length) runs of the model: the rows of a batch and how many leading positions
        it must read.

        Padding is masked out of every attention, so the features of real tokens do not
        depend on how much padding follows them (to float rounding). With ``trim_padding``
        on the CPU the rows are sorted by caption length and cut into ``LENGTH_GROUPS``
        groups, each read up to its own longest caption: captions of 6 to 30 tokens (the
        shapes data) then cost 58 % of their padded length instead of 100 %. On an
        accelerator the lengths would need a host sync and padding costs little, so the
        whole batch runs at ``max_length``. Under ``torch.compile`` the lengths would be
        data-dependent shapes (a graph break), so a compiled step also runs at ``max_length``.
        """
        batch, width = attention.shape
        if not self._trims(attention):
            return [(torch.arange(batch, device=attention.device), width)]
        # the last real position + 1, so a mask with holes is still read in full
        positions = torch.arange(1, width + 1, device=attention.device)
        lengths = (attention.ne(0) * positions).amax(dim=1)
        order = lengths.argsort(stable=True)
        return [(rows, int(lengths[rows[-1]])) for rows in order.chunk(min(LENGTH_GROUPS, batch))]

    def _trims(self, like: torch.Tensor) -> bool:
        """Whether ``encode_masked`` skips padding: on the CPU, outside torch.compile (see
        ``_length_groups`` for why not elsewhere), with ``trim_padding`` on."""
        return self.trim_padding and like.device.type == "cpu" and not torch.compiler.is_compiling()

    def _encode_packed(self, tokens: TokenizedText) -> EncodedText:
        """The batch's real tokens read end to end, in runs of whole captions of at most
        ``PACK_TOKENS`` tokens (a caption longer than that alone).

        Each token keeps its column as its position and attends to its own caption alone, so
        every feature is the padded run's to float rounding; but the matmuls are one (T, Dt)
        product per layer instead of one per length group (``bench.training`` times the
        re-encoding). A mask with holes keeps its columns.
        """
        real = tokens.attention_mask.bool()
        batch, width = real.shape
        lengths = real.sum(dim=1)
        columns = torch.arange(width, device=real.device).expand(batch, width)
        words = torch.zeros(batch, width, self.dim, device=real.device, dtype=torch.float32)
        sentence = torch.zeros(batch, self.dim, device=real.device, dtype=torch.float32)
        for rows in _token_runs(lengths.tolist(), PACK_TOKENS):
            keep, counts = real[rows], lengths[rows]
            segments = torch.arange(keep.shape[0], device=real.device).repeat_interleave(counts)
            hidden = self._run_packed(tokens.ids[rows][keep], columns[rows][keep], segments).float()
            words[rows][keep] = hidden
            sentence[rows].index_add_(0, segments, hidden).div_(counts.clamp_min(1)[:, None])
        return EncodedText(words=words, sentence=sentence, tokens=tokens)

    def _chunks(self, lengths: Sequence[int]) -> list[tuple[list[int], int]]:
        """(rows, width) of every model run of ``_encode_rows``: rows of one width, at most
        CHUNK_ROWS of them, in batch order. The width is a function of the length alone."""
        by_width: dict[int, list[int]] = {}
        for row, length in enumerate(lengths):
            width = min(self.max_length, math.ceil(length / LENGTH_STEP) * LENGTH_STEP)
            by_width.setdefault(width, []).append(row)
        return [(rows[i:i + CHUNK_ROWS], width) for width, rows in by_width.items()
                for i in range(0, len(rows), CHUNK_ROWS)]

    def _encode_rows(self, tokens: TokenizedText) -> list[CaptionFeatures]:
        """Per row: (words (n, Dt) at the n real tokens, sentence (Ds,)), on the encoder's device.

        Every model run has the shape (CHUNK_ROWS, width): a short chunk is filled up with
        copies of its last row, whose outputs are dropped. A row's features then depend on
        its own tokens only, not on the batch, its position in it or its neighbours: the
        same bits cached or not, in the first epoch or after a resume.
        """
        lengths = tokens.real_lengths()
        features: list[CaptionFeatures | None] = [None] * len(lengths)
        for rows, width in self._chunks(lengths):
            filled = torch.tensor(rows + rows[-1:] * (CHUNK_ROWS - len(rows)), device=tokens.ids.device)
            hidden, pooled = self._run_model(
                tokens.ids[filled, :width].to(self.device, non_blocking=True),
                tokens.attention_mask[filled, :width].long().to(self.device, non_blocking=True),
            )
            for j, row in enumerate(rows):
                features[row] = (hidden[j, :lengths[row]].float(), pooled[j].float())
        return features

    def _assemble(self, features: Sequence[CaptionFeatures], tokens: TokenizedText) -> EncodedText:
        """The batch (B, L, Dt) of per-row features, zero at padding, on the encoder's device."""
        first_words, first_sentence = features[0]
        words = first_words.new_zeros(len(features), self.max_length, first_words.shape[-1])
        for row, (row_words, _) in enumerate(features):
            words[row, :row_words.shape[0]] = row_words
        sentence = torch.stack([row_sentence for _, row_sentence in features])
        return EncodedText(
            words=words.to(self.device, non_blocking=True),
            sentence=sentence.to(self.device, non_blocking=True),
            tokens=tokens.to(self.device),
        )

    def _cached_rows(self, tokens: TokenizedText) -> list[CaptionFeatures]:
        """Per-row features from the table, then the cache, encoding the rest (each distinct
        caption once). Both stores are checked against ``fingerprint`` first: after the
        encoder changed, the cache is emptied and a table raises rather than serve stale rows."""
        fingerprint = self.fingerprint()
        if self.table is not None:
            self.table.check_fingerprint(fingerprint)
        if self.cache is not None:
            self.cache.match(fingerprint)
        features: dict[str, CaptionFeatures] = {}
        first_miss_row: dict[str, int] = {}
        for row, caption in enumerate(tokens.captions):
            if caption in features or caption in first_miss_row:
                continue
            hit = self._lookup(caption)
            if hit is None:
                first_miss_row[caption] = row
            else:
                features[caption] = hit
        if first_miss_row:
            fresh = self._encode_rows(tokens.rows(list(first_miss_row.values())))
            for caption, (words, sentence) in zip(first_miss_row, fresh):
                if self.cache is not None:
                    features[caption] = self.cache.put(caption, words, sentence)
                else:
                    features[caption] = (words.to("cpu", copy=True), sentence.to("cpu", copy=True))
        return [features[caption] for caption in tokens.captions]

    def _lookup(self, caption: str) -> CaptionFeatures | None:
        hit = None if self.table is None else self.table.get(caption)
        if hit is None and self.cache is not None:
            hit = self.cache.get(caption)
        return hit

    @torch.no_grad()
    def cache_captions(self, captions: Sequence[str]) -> None:
        """Encode the captions not yet in the cache together, in full chunks (``encode_ahead``)."""
        if self.cache is None or not captions:
            return
        distinct = list(dict.fromkeys(captions))
        self._cached_rows(self.tokenize(distinct))
