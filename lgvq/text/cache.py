"""In-memory LRU cache of per-caption text features, and the look-ahead that fills it.

A frozen encoder maps a caption to the same features every epoch, so a dataset's captions
need encoding only once. ``TextEncoder.encode`` computes each caption's features in a chunk
of fixed shape, so they do not depend on the batch: a cached entry is the same bits as a
fresh encode. Entries live on CPU, so the cache never competes with training for
accelerator memory, and hold only the caption's real tokens (n, Dt), not its padding.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator

import torch

from lgvq.checks import check_positive

#: (words (n, Dt) at the caption's n real tokens, sentence (Ds,))
CaptionFeatures = tuple[torch.Tensor, torch.Tensor]
#: ``encode_ahead`` encodes the captions of this many upcoming batches together.
LOOKAHEAD_BATCHES = 16


class CaptionFeatureCache:
    """Maps caption -> ``CaptionFeatures``, evicting the least recently used.

    ``fingerprint`` is the encoder's (``TextEncoder.fingerprint``) the entries were computed
    under; ``match`` empties the cache when the encoder no longer has it.
    """

    def __init__(self, max_entries: int) -> None:
        check_positive("cache_size", max_entries)
        self.max_entries = int(max_entries)
        self.fingerprint: str | None = None
        self._entries: OrderedDict[str, CaptionFeatures] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, caption: str) -> bool:
        return caption in self._entries

    def match(self, fingerprint: str) -> None:
        """Drop every entry unless they were computed under ``fingerprint``."""
        if fingerprint != self.fingerprint:
            self._entries.clear()
            self.fingerprint = fingerprint

    def get(self, caption: str) -> CaptionFeatures | None:
        entry = self._entries.get(caption)
        if entry is not None:
            self._entries.move_to_end(caption)
        return entry

    def put(self, caption: str, words: torch.Tensor, sentence: torch.Tensor) -> CaptionFeatures:
        """Store CPU copies (copies, so an entry never pins the chunk it was cut from); return them."""
        entry = (words.to("cpu", copy=True), sentence.to("cpu", copy=True))
        self._entries[caption] = entry
        self._entries.move_to_end(caption)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return entry


def encode_ahead(batches: Iterable[tuple], encoder, lookahead: int = LOOKAHEAD_BATCHES) -> Iterable[tuple]:
    """Yield ``batches`` ((images, captions) pairs) unchanged, after encoding the captions of
    the next ``lookahead`` batches into ``encoder``'s cache together.

    In a run's first epoch nearly every caption is new; encoded per batch, they would fill
    many chunks only partly (``TextEncoder._encode_rows`` pads every chunk to CHUNK_ROWS
    rows). Read ahead, they fill whole chunks. The features are the same bits either way
    (they do not depend on the batch), so this changes nothing but the time. The cache must
    hold ``lookahead`` batches of captions, or the first are evicted before they are used.
    """
    check_positive("lookahead", lookahead)
    return batches if encoder.cache is None else _read_ahead(iter(batches), encoder, lookahead)


def _read_ahead(iterator: Iterator[tuple], encoder, lookahead: int) -> Iterator[tuple]:
    window: deque[tuple] = deque()
    while True:
        if not window:
            for batch in iterator:
                window.append(batch)
                if len(window) == lookahead:
                    break
            if not window:
                return
            encoder.cache_captions([caption for _, captions in window for caption in captions])
        yield window.popleft()
