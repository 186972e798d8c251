"""Visual question answering from code indices: answer classification over ANSWER_VOCAB.

A small bidirectional transformer reads [class token; codes; question words] (codes through
the frozen codebook, the question through the frozen text encoder's word features) and
classifies the class token's output into the dataset's answer vocabulary.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lgvq.data import ANSWER_VOCAB
from lgvq.tasks.codes import (
    CodeDataset,
    check_code_indices,
    code_grid,
    frozen_codebook,
    model_device,
)
from lgvq.tasks.layers import CodeEmbedding, TransformerSize, encoder_stack, init_vector
from lgvq.tasks.text_features import TextFeatures, encode_text_table
from lgvq.tasks.training import TrainSettings, train_network


@dataclass(frozen=True)
class VQAExamples:
    """Question/answer pairs about the rows of a CodeDataset.

    rows: (Q,) the CodeDataset row each question is about; questions: (Q,) rows of
    ``question_features`` (one per distinct question string); answers: (Q,) indices into
    ANSWER_VOCAB.
    """

    rows: torch.Tensor
    questions: torch.Tensor
    answers: torch.Tensor
    question_features: TextFeatures

    def __len__(self) -> int:
        return len(self.rows)


def vqa_examples(
    dataset,
    dataset_indices,
    text_encoder,
    *,
    questions_per_image: int | None = None,
    seed: int = 0,
) -> VQAExamples:
    """The questions ``dataset.vqa(i)`` asks about each ``dataset_indices[r]`` (row r), at most
    ``questions_per_image`` of them per image, drawn reproducibly from ``seed``."""
    if not callable(getattr(dataset, "vqa", None)):
        raise TypeError(
            f"dataset must provide vqa(index) (e.g. ShapesDataset), got {type(dataset).__name__}"
        )
    if questions_per_image is not None and questions_per_image < 1:
        raise ValueError(f"questions_per_image must be >= 1 or None, got {questions_per_image}")
    rows, questions, answers = [], [], []
    for row, index in enumerate(torch.as_tensor(dataset_indices).tolist()):
        pairs = list(zip(*dataset.vqa(index)))
        if questions_per_image is not None and len(pairs) > questions_per_image:
            pairs = random.Random(f"{seed}/{index}").sample(pairs, questions_per_image)
        for question, answer in pairs:
            rows.append(row)
            questions.append(question)
            answers.append(ANSWER_VOCAB.index(answer))
    if not rows:
        raise ValueError("dataset_indices is empty: no questions to ask")
    table, question_rows = encode_text_table(text_encoder, questions, name="questions")
    return VQAExamples(torch.tensor(rows), question_rows, torch.tensor(answers), table)


class VQANetwork(nn.Module):
    """(codes (B, n), question features) -> (B, num_answers) answer logits."""

    def __init__(
        self,
        codebook: torch.Tensor,
        grid: tuple[int, int],
        question_dim: int,
        num_answers: int,
        size: TransformerSize,
    ):
        super().__init__()
        self.grid = tuple(grid)
        self.codes = CodeEmbedding(codebook, self.grid[0] * self.grid[1], size.width)
        self.question = nn.Linear(question_dim, size.width)
        self.cls = init_vector(size.width)
        self.encoder = encoder_stack(size)
        self.norm = nn.LayerNorm(size.width)
        self.head = nn.Linear(size.width, num_answers)

    @property
    def n_embed(self) -> int:
        return self.codes.n_embed

    def forward(self, codes: torch.Tensor, question: TextFeatures) -> torch.Tensor:
        batch, n = codes.shape
        x = torch.cat(
            [self.cls.expand(batch, -1, -1), self.codes(codes), self.question(question.words)],
            dim=1,
        )
        visible = torch.ones(batch, 1 + n, dtype=torch.bool, device=codes.device)
        padding = ~torch.cat([visible, question.mask], dim=1)
        return self.head(self.norm(self.encoder(x, src_key_padding_mask=padding)[:, 0]))


class QuestionAnswerer:
    """A VQANetwork, the text encoder that reads its questions, and its answer labels."""

    def __init__(self, network: VQANetwork, text_encoder, answers: tuple[str, ...] = ANSWER_VOCAB):
        self.network = network
        self.text_encoder = text_encoder
        self.answers = tuple(answers)

    @classmethod
    def build(
        cls, vq_model, text_encoder, size: TransformerSize = TransformerSize()
    ) -> QuestionAnswerer:
        network = VQANetwork(
            frozen_codebook(vq_model),
            code_grid(vq_model),
            text_encoder.dim,
            len(ANSWER_VOCAB),
            size,
        )
        return cls(network.to(model_device(vq_model)), text_encoder)

    @property
    def device(self) -> torch.device:
        return self.network.head.weight.device

    def logits(self, indices: torch.Tensor, questions: TextFeatures) -> torch.Tensor:
        indices = check_code_indices("indices", indices, self.network.n_embed, self.network.grid)
        if len(questions) != len(indices):
            raise ValueError(f"questions has {len(questions)} rows for {len(indices)} code grids")
        return self.network(indices.flatten(1).to(self.device), questions.to(self.device))

    def _batch(self, codes: CodeDataset, examples: VQAExamples, batch: torch.Tensor):
        questions = examples.question_features.rows(examples.questions[batch])
        return (
            codes.indices[examples.rows[batch]],
            questions,
            examples.answers[batch].to(self.device),
        )

    def fit(
        self, codes: CodeDataset, examples: VQAExamples, settings: TrainSettings
    ) -> list[float]:
        def batch_loss(batch: torch.Tensor) -> torch.Tensor:
            indices, questions, answers = self._batch(codes, examples, batch)
            return F.cross_entropy(self.logits(indices, questions), answers)

        return train_network(self.network, batch_loss, len(examples), settings)

    @torch.no_grad()
    def predict(
        self, codes: CodeDataset, examples: VQAExamples, batch_size: int = 256
    ) -> torch.Tensor:
        """(Q,) predicted answer indices of every example."""
        self.network.eval()
        predictions = []
        for batch in torch.arange(len(examples)).split(batch_size):
            indices, questions, _ = self._batch(codes, examples, batch)
            predictions.append(self.logits(indices, questions).argmax(-1).cpu())
        return torch.cat(predictions)

    @torch.no_grad()
    def answer(self, indices: torch.Tensor, questions) -> list[str]:
        """The answer to ``questions[i]`` about code grid ``indices[i]``."""
        table, rows = encode_text_table(self.text_encoder, questions, name="questions")
        self.network.eval()
        return [self.answers[i] for i in self.logits(indices, table.rows(rows)).argmax(-1).tolist()]
