"""LG-VQ language guidance: visual tokens, Lgsa, Lmtp, Lras and the alignment metrics."""

from lgvq.guidance.language_guidance import FLAVOURS, RELEASE_WEIGHTS, GuidanceOutput, LanguageGuidance

__all__ = ["FLAVOURS", "LanguageGuidance", "GuidanceOutput", "RELEASE_WEIGHTS"]
