"""LRU cache of per-caption text features.

A frozen encoder maps a caption to the same features every epoch, so a dataset's captions
need encoding only once. Entries live on CPU so the cache never competes with training for
accelerator memory.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from lgvq.checks import check_positive


class CaptionFeatureCache:
    """Maps caption -> (words (L, Dt), sentence (Ds,)), evicting the least recently used."""

    def __init__(self, max_entries: int) -> None:
        check_positive("cache_size", max_entries)
        self.max_entries = int(max_entries)
        self._entries: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, caption: str) -> bool:
        return caption in self._entries

    def get(self, caption: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        entry = self._entries.get(caption)
        if entry is not None:
            self._entries.move_to_end(caption)
        return entry

    def put(
        self, caption: str, words: torch.Tensor, sentence: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store CPU copies (copies, so a row never pins its whole batch) and return them."""
        entry = (words.to("cpu", copy=True), sentence.to("cpu", copy=True))
        self._entries[caption] = entry
        self._entries.move_to_end(caption)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return entry
