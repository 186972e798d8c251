"""Encoder / Decoder: shapes for f = 4, 8, 16, taming's structure, and bad arguments."""

import pytest
import torch

from lgvq.models import AttnBlock, Decoder, Encoder, ResnetBlock

SMALL = dict(ch=32, num_res_blocks=1, z_channels=8)


@pytest.mark.parametrize(
    "ch_mult,resolution,attn,latent",
    [((1, 2, 2), 16, (4,), 4), ((1, 1, 2, 2), 32, (16,), 4), ((1, 1, 1, 1, 1), 32, (2, 32), 2)],
    ids=["f4", "f8", "f16"],
)
def test_shapes(ch_mult, resolution, attn, latent):
    encoder = Encoder(ch_mult=ch_mult, attn_resolutions=attn, in_channels=3, resolution=resolution, **SMALL)
    decoder = Decoder(ch_mult=ch_mult, attn_resolutions=attn, out_channels=3, resolution=resolution, **SMALL)
    x = torch.randn(1, 3, resolution, resolution)
    z = encoder(x)
    assert z.shape == (1, 8, latent, latent)
    x_rec = decoder(z)
    assert x_rec.shape == x.shape
    # every block built is also used: each parameter gets a gradient (a level, attention or
    # mid block that is constructed but skipped in forward would get none)
    (x_rec * torch.randn_like(x_rec)).sum().backward()
    for name, p in (*encoder.named_parameters(prefix="encoder"), *decoder.named_parameters(prefix="decoder")):
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_attention_only_at_requested_resolutions():
    encoder = Encoder(ch_mult=(1, 2, 2), attn_resolutions=(16,), in_channels=3, resolution=32, **SMALL)
    assert [len(level.attn) for level in encoder.down] == [0, 1, 0]
    decoder = Decoder(ch_mult=(1, 2, 2), attn_resolutions=(16,), out_channels=3, resolution=32, **SMALL)
    assert [len(level.attn) for level in decoder.up] == [0, 2, 0]  # num_res_blocks + 1 per level
    plain = Encoder(ch_mult=(1, 2), in_channels=3, resolution=16, mid_attention=False, **SMALL)
    assert not any(isinstance(m, AttnBlock) for m in plain.modules())


def test_paper_architecture_matches_taming_layout():
    """256², ch 128, ch_mult (1,1,2,2,4), 2 blocks, attention at 16: taming's parameter names and
    shapes (built on the meta device: no memory, no init cost)."""
    with torch.device("meta"):
        arch = dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,), resolution=256,
                    z_channels=256)
        encoder, decoder = Encoder(in_channels=3, **arch), Decoder(out_channels=3, **arch)
        assert encoder(torch.empty(1, 3, 256, 256)).shape == (1, 256, 16, 16)
        assert decoder(torch.empty(1, 256, 16, 16)).shape == (1, 3, 256, 256)
    enc = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    dec = {k: tuple(v.shape) for k, v in decoder.state_dict().items()}
    assert enc["conv_in.weight"] == (128, 3, 3, 3)
    assert enc["down.2.block.0.nin_shortcut.weight"] == (256, 128, 1, 1)
    assert enc["down.3.downsample.conv.weight"] == (256, 256, 3, 3)
    assert enc["down.4.attn.1.proj_out.weight"] == (512, 512, 1, 1)
    assert "down.4.downsample.conv.weight" not in enc
    assert enc["mid.attn_1.q.weight"] == (512, 512, 1, 1)
    assert enc["conv_out.weight"] == (256, 512, 3, 3)
    assert dec["conv_in.weight"] == (512, 256, 3, 3)
    assert dec["up.4.attn.2.k.weight"] == (512, 512, 1, 1)
    assert dec["up.1.upsample.conv.weight"] == (128, 128, 3, 3)
    assert "up.0.upsample.conv.weight" not in dec
    assert dec["conv_out.weight"] == (3, 128, 3, 3)
    total = sum(p.numel() for p in (*encoder.parameters(), *decoder.parameters()))
    assert 60e6 < total < 80e6


def test_resnet_block_skip():
    block = ResnetBlock(32, 64, dropout=0.1)
    assert block(torch.randn(1, 32, 4, 4)).shape == (1, 64, 4, 4)
    assert not any("nin_shortcut" in key for key in ResnetBlock(32).state_dict())


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        (dict(ch=48), "multiple of 32"),
        (dict(resolution=30), "multiple of the downsampling factor"),
        (dict(attn_resolutions=(12,)), r"attn_resolutions \[12\] never occur"),
        (dict(ch_mult=()), "ch_mult"),
        (dict(num_res_blocks=0), "num_res_blocks"),
    ],
)
def test_bad_architecture(kwargs, msg):
    args = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, in_channels=3, resolution=32, z_channels=8)
    with pytest.raises(ValueError, match=msg):
        Encoder(**{**args, **kwargs})


def test_attention_matches_taming_bmm_formulation():
    block = AttnBlock(32)
    x = torch.randn(2, 32, 3, 5)
    with torch.no_grad():
        h = block.norm(x)
        q, k, v = (conv(h).reshape(2, 32, 15) for conv in (block.q, block.k, block.v))
        w = torch.softmax(torch.bmm(q.permute(0, 2, 1), k) * 32**-0.5, dim=2)  # (b, hw_q, hw_k)
        expected = x + block.proj_out(torch.bmm(v, w.permute(0, 2, 1)).reshape(2, 32, 3, 5))
        assert torch.allclose(block(x), expected, atol=1e-5)
