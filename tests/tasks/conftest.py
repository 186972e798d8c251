"""Shared fixtures: a tiny untrained VQ model, tiny shapes datasets, their codes, and the
embedded text encoder (loaded once per session: loading it is the slowest step here)."""

import pytest
import torch

from lgvq.data import ShapesDataset
from lgvq.models import build_model
from lgvq.tasks import CodeDataset, TaskBudget, TrainSettings, TransformerSize, encode_dataset
from lgvq.text import load_text_encoder

TINY = TransformerSize(width=32, depth=1, heads=2)


def fit_settings(steps: int = 40, lr: float = 3e-3) -> TrainSettings:
    return TrainSettings(steps=steps, batch_size=8, lr=lr, seed=0)


def assert_loss_decreased(losses: list[float], factor: float = 0.8) -> None:
    """The mean of the last fifth must be clearly below the mean of the first fifth (means
    rather than single steps: one minibatch can be unusually easy or hard)."""
    fifth = max(1, len(losses) // 5)
    first, last = sum(losses[:fifth]) / fifth, sum(losses[-fifth:]) / fifth
    assert last < factor * first, f"loss went from {first:.4f} to {last:.4f}"


def greedy_by_hand(transformer, batch_size: int, *, condition=None, cells=None) -> torch.Tensor:
    """Greedy decoding written out: append the argmax of the last position's logits."""
    codes = torch.zeros(batch_size, 0, dtype=torch.int64)
    with torch.no_grad():
        while codes.shape[1] < transformer.num_codes:
            logits = transformer(codes, condition, cells)[:, -1]
            codes = torch.cat([codes, logits.argmax(-1, keepdim=True)], dim=1)
    return codes.view(batch_size, *transformer.grid)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These tensors are tiny: intra-op threading costs more in synchronisation than it saves,
    and on a loaded machine a descheduled second thread stalls every op. Module-scoped so it
    also covers the module-scoped training fixtures; restored after each module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def text_encoder():
    return load_text_encoder()


@pytest.fixture(scope="session")
def vq_model():
    torch.manual_seed(0)
    return build_model("vqvae-tiny").eval()


@pytest.fixture(scope="session")
def train_set():
    return ShapesDataset(24, 32, 0, split="train")


@pytest.fixture(scope="session")
def test_set():
    return ShapesDataset(6, 32, 0, split="test")


@pytest.fixture(scope="session")
def codes(vq_model, train_set) -> CodeDataset:
    return encode_dataset(vq_model, train_set, batch_size=10)


@pytest.fixture(scope="session")
def tiny_budget() -> TaskBudget:
    """A few steps of every task network on a dozen images: seconds, not minutes."""
    return TaskBudget(steps=6, batch_size=4, width=32, depth=1, heads=2, train_items=12, eval_items=4,
                      questions_per_image=2, classifier_steps=4, classifier_batch_size=4, beam_size=2,
                      meteor=False)
