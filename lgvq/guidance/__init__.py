"""LG-VQ language guidance: visual tokens, Lgsa, Lmtp, Lras and the alignment metrics."""

from lgvq.guidance.language_guidance import GuidanceOutput, LanguageGuidance

__all__ = ["LanguageGuidance", "GuidanceOutput"]
