"""Image captioning from code indices: a transformer encoder over the codes and a caption
decoder over the text encoder's tokens, with greedy and beam-search decoding.

Targets are the text encoder's token ids of the captions. The decoder's output layer covers
only the ids that occur in the training captions (about 60 for the shapes captions, of
MiniLM's 30,522): a captioner cannot learn to emit a word it never saw, and the full
softmax would make the output layer the most expensive part of training on a CPU.
Input tokens are embedded through the text encoder's frozen word embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lgvq.checks import check_positive
from lgvq.tasks.codes import (
    CodeDataset,
    check_code_indices,
    code_grid,
    frozen_codebook,
    model_device,
)
from lgvq.tasks.layers import (
    CodeEmbedding,
    TransformerSize,
    causal_mask,
    decoder_stack,
    encoder_stack,
)
from lgvq.tasks.text_features import check_texts
from lgvq.tasks.training import TrainSettings, train_network


class CaptionNetwork(nn.Module):
    """Codes (B, n) -> memory; caption prefix (B, t) in vocabulary ids -> (B, t, V) logits."""

    def __init__(
        self,
        codebook: torch.Tensor,
        grid: tuple[int, int],
        token_embeddings: torch.Tensor,
        max_tokens: int,
        size: TransformerSize,
    ):
        super().__init__()
        self.grid = tuple(grid)
        self.codes = CodeEmbedding(codebook, self.grid[0] * self.grid[1], size.width)
        self.encoder = encoder_stack(size)
        self.memory_norm = nn.LayerNorm(size.width)  # pre-norm decoders do not normalise memory
        self.register_buffer("token_embeddings", token_embeddings.detach().float().clone())
        self.tokens = nn.Linear(token_embeddings.shape[1], size.width)
        self.token_position = nn.Parameter(torch.randn(1, max_tokens, size.width) * 0.02)
        self.decoder = decoder_stack(size)
        self.norm = nn.LayerNorm(size.width)
        self.head = nn.Linear(size.width, token_embeddings.shape[0])

    @property
    def n_embed(self) -> int:
        return self.codes.n_embed

    @property
    def max_tokens(self) -> int:
        return self.token_position.shape[1]

    def encode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.memory_norm(self.encoder(self.codes(codes)))

    def forward(self, codes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(codes), tokens)

    def decode(self, memory: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        x = self.tokens(self.token_embeddings[tokens]) + self.token_position[:, :t]
        x = self.decoder(x, memory, tgt_mask=causal_mask(t, x.device))
        return self.head(self.norm(x))


class Captioner:
    """A CaptionNetwork, its output vocabulary (tokenizer ids) and the tokenizer's special ids.

    ``vocabulary[j]`` is the tokenizer id of output class j; ``start`` and ``end`` are output
    classes (the first and last token of every tokenized caption: [CLS]/[SEP] for BERT-like
    encoders, <|startoftext|>/<|endoftext|> for CLIP).
    """

    def __init__(
        self, network: CaptionNetwork, vocabulary: torch.Tensor, text_encoder, start: int, end: int
    ):
        self.network = network
        self.vocabulary = vocabulary
        self.text_encoder = text_encoder
        self.start = start
        self.end = end

    @classmethod
    def build(
        cls, vq_model, text_encoder, captions, size: TransformerSize = TransformerSize()
    ) -> Captioner:
        """A captioner whose vocabulary is every token of ``captions`` (the training captions)."""
        tokens = text_encoder.tokenize(check_texts("captions", captions))
        vocabulary = tokens.ids[tokens.attention_mask.bool()].unique()
        first_row_end = int(tokens.attention_mask[0].sum()) - 1
        start, end = (
            int(torch.searchsorted(vocabulary, tokens.ids[0, i])) for i in (0, first_row_end)
        )
        network = CaptionNetwork(
            frozen_codebook(vq_model),
            code_grid(vq_model),
            text_encoder.word_embeddings[vocabulary.to(text_encoder.device)].cpu(),
            text_encoder.max_length,
            size,
        ).to(model_device(vq_model))
        return cls(network, vocabulary, text_encoder, start, end)

    @property
    def device(self) -> torch.device:
        return self.network.head.weight.device

    def targets(self, captions) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (N, L) in vocabulary classes, mask (N, L) bool of real tokens) of captions."""
        tokens = self.text_encoder.tokenize(check_texts("captions", captions))
        mask = tokens.attention_mask.bool()
        ids = tokens.ids.masked_fill(~mask, int(self.vocabulary[self.end]))
        classes = torch.searchsorted(self.vocabulary, ids).clamp(max=len(self.vocabulary) - 1)
        unknown = self.vocabulary[classes] != ids
        if bool(unknown.any()):
            row = int(unknown.any(1).nonzero()[0])
            raise ValueError(
                f"captions[{row}] has tokens outside the captioner's vocabulary (built from the "
                f"training captions): {captions[row]!r}"
            )
        return classes, mask

    def loss(
        self, indices: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Mean cross-entropy of each real next token given the codes and the tokens before it."""
        indices = check_code_indices("indices", indices, self.network.n_embed, self.network.grid)
        logits = self.network(indices.flatten(1), targets[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), targets[:, 1:].flatten(), reduction="none")
        weights = mask[:, 1:].flatten().float()
        return (loss * weights).sum() / weights.sum()

    def fit(self, codes: CodeDataset, settings: TrainSettings) -> list[float]:
        targets, mask = self.targets(codes.captions)

        def batch_loss(rows: torch.Tensor) -> torch.Tensor:
            return self.loss(
                codes.indices[rows].to(self.device),
                targets[rows].to(self.device),
                mask[rows].to(self.device),
            )

        return train_network(self.network, batch_loss, len(codes), settings)

    @torch.no_grad()
    def generate(
        self, indices: torch.Tensor, *, beam_size: int | None = None, length_penalty: float = 1.0
    ) -> list[str]:
        """One caption per (h, w) code grid: greedy when ``beam_size`` is None, else beam search
        whose finished hypotheses are ranked by log-probability / length ** length_penalty."""
        indices = check_code_indices("indices", indices, self.network.n_embed, self.network.grid)
        if beam_size is not None:
            check_positive("beam_size", beam_size)
            if beam_size > len(self.vocabulary):
                raise ValueError(
                    f"beam_size must be <= the vocabulary size {len(self.vocabulary)}, got {beam_size}"
                )
        self.network.eval()
        memory = self.network.encode(indices.flatten(1).to(self.device))
        if beam_size is None:
            classes = self._greedy(memory)
        else:
            classes = self._beam_search(memory, beam_size, length_penalty)
        return self._to_text(classes)

    def _next_logits(self, memory: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return self.network.decode(memory, classes)[:, -1].float()

    def _greedy(self, memory: torch.Tensor) -> torch.Tensor:
        classes = torch.full((len(memory), 1), self.start, dtype=torch.int64, device=memory.device)
        finished = torch.zeros(len(memory), dtype=torch.bool, device=memory.device)
        while classes.shape[1] < self.network.max_tokens and not bool(finished.all()):
            next_class = self._next_logits(memory, classes).argmax(-1)
            next_class = next_class.masked_fill(finished, self.end)  # finished rows repeat the end
            classes = torch.cat([classes, next_class[:, None]], dim=1)
            finished |= next_class == self.end
        return classes

    def _beam_search(
        self, memory: torch.Tensor, beam_size: int, length_penalty: float
    ) -> torch.Tensor:
        batch, k = len(memory), beam_size
        device = memory.device
        memory = memory.repeat_interleave(k, dim=0)
        classes = torch.full((batch * k, 1), self.start, dtype=torch.int64, device=device)
        # all beams start identical: only the first may expand, or the k beams would be copies
        scores = torch.full((batch, k), float("-inf"), device=device)
        scores[:, 0] = 0.0
        finished = torch.zeros(batch * k, dtype=torch.bool, device=device)
        lengths = torch.zeros(batch * k, device=device)
        beam_base = torch.arange(batch, device=device)[:, None] * k
        while classes.shape[1] < self.network.max_tokens and not bool(finished.all()):
            log_probs = self._next_logits(memory, classes).log_softmax(-1)
            # a finished hypothesis continues with the end token at no cost: its score stays
            log_probs[finished] = float("-inf")
            log_probs[finished, self.end] = 0.0
            vocab = log_probs.shape[1]
            candidates = (scores.view(-1, 1) + log_probs).view(batch, k * vocab)
            scores, flat = candidates.topk(k, dim=-1)
            origin = (flat // vocab + beam_base).view(-1)
            next_class = (flat % vocab).view(-1)
            classes = torch.cat([classes[origin], next_class[:, None]], dim=1)
            lengths = lengths[origin] + (~finished[origin]).float()
            finished = finished[origin] | (next_class == self.end)
        ranked = scores / lengths.view(batch, k).clamp(min=1.0) ** length_penalty
        best = ranked.argmax(-1) + beam_base[:, 0]
        return classes[best]

    def _to_text(self, classes: torch.Tensor) -> list[str]:
        captions = []
        for row in classes.cpu():
            words = row[1:]
            ends = (words == self.end).nonzero()
            words = words[: int(ends[0])] if len(ends) else words
            ids = self.vocabulary[words].tolist()
            captions.append(
                self.text_encoder.tokenizer.decode(ids, skip_special_tokens=True).strip()
            )
        return captions
