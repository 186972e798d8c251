"""encode_dataset / decode_codes and the shared validation of code indices."""

import pytest
import torch

from lgvq.tasks import CodeDataset, check_code_indices, decode_codes, encode_dataset


def test_encode_dataset_gives_valid_codes_for_every_item(vq_model, train_set, codes):
    assert codes.indices.shape == (len(train_set), 8, 8) and codes.indices.dtype == torch.int64
    assert 0 <= int(codes.indices.min()) and int(codes.indices.max()) < vq_model.config.n_embed
    assert codes.captions == [train_set[i]["caption"] for i in range(len(train_set))]
    assert codes.dataset_indices.tolist() == list(range(len(train_set)))
    expected = vq_model.encode(torch.stack([train_set[i]["image"] for i in range(3)]))[1]
    assert torch.equal(codes.indices[:3], expected)


def test_encode_dataset_restores_training_mode(vq_model, train_set):
    vq_model.train()
    try:
        encode_dataset(vq_model, torch.utils.data.Subset(train_set, [0, 1]))
        assert vq_model.training
    finally:
        vq_model.eval()


def test_decode_codes_returns_images(vq_model, codes):
    images = decode_codes(vq_model, codes.indices[:3])
    assert images.shape == (3, 3, 32, 32)
    assert float(images.min()) >= -1 and float(images.max()) <= 1


@pytest.mark.parametrize(
    "indices, error, message",
    [
        (torch.full((2, 8, 8), -1), ValueError, r"indices must lie in \[0, 256\)"),
        (torch.full((2, 8, 8), 256), ValueError, r"indices must lie in \[0, 256\)"),
        (torch.zeros(2, 64, dtype=torch.int64), ValueError, "indices must have 3 dimensions"),
        (torch.zeros(2, 8, 8), TypeError, "indices must have dtype"),
        (
            torch.zeros(2, 4, 4, dtype=torch.int64),
            ValueError,
            r"indices must have shape \(B, 8, 8\)",
        ),
        (torch.zeros(0, 8, 8, dtype=torch.int64), ValueError, "indices is empty"),
    ],
)
def test_bad_code_indices_are_rejected(indices, error, message):
    with pytest.raises(error, match=message):
        check_code_indices("indices", indices, 256, (8, 8))


def test_code_dataset_rows_must_agree():
    with pytest.raises(ValueError, match="one entry per row"):
        CodeDataset(torch.zeros(2, 8, 8, dtype=torch.int64), ["a red circle"], torch.arange(2), 256)
