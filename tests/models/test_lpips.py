"""LPIPS from local files: torchvision's VGG16 key layout (written out here, independently of
VGG16Features), the LPIPS head file, the distance itself, and clear errors for bad files."""

import pytest
import torch
import torch.nn.functional as F

from lgvq.models import LPIPS, VQLPIPSWithDiscriminator, load_vgg16_features

# torchvision.models.vgg16().features: the conv layers' indices and (out, in) channels
TORCHVISION_VGG16_CONVS = {
    0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256), 14: (256, 256),
    17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512), 28: (512, 512),
}


def torchvision_vgg16_state(full_model: bool) -> dict:
    """A random state dict with torchvision's key names (full model: 'features.' prefix + classifier)."""
    prefix = "features." if full_model else ""
    state = {}
    for index, (out_ch, in_ch) in TORCHVISION_VGG16_CONVS.items():
        state[f"{prefix}{index}.weight"] = torch.randn(out_ch, in_ch, 3, 3) * 0.05
        state[f"{prefix}{index}.bias"] = torch.randn(out_ch) * 0.01
    if full_model:
        state["classifier.0.weight"] = torch.randn(8, 8)
        state["classifier.0.bias"] = torch.randn(8)
    return state


def lpips_head_state() -> dict:
    return {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))}


@pytest.fixture
def weight_files(tmp_path):
    vgg, heads = tmp_path / "vgg16-397923af.pth", tmp_path / "vgg.pth"
    torch.save(torchvision_vgg16_state(full_model=True), vgg)
    torch.save(lpips_head_state(), heads)
    return vgg, heads


@pytest.mark.parametrize("full_model", [True, False])
def test_vgg16_loads_torchvision_key_layout(tmp_path, full_model):
    state = torchvision_vgg16_state(full_model)
    path = tmp_path / "vgg.pth"
    torch.save(state, path)
    net = load_vgg16_features(path)
    prefix = "features." if full_model else ""
    assert torch.equal(net[17].weight, state[f"{prefix}17.weight"])
    assert torch.equal(net[28].bias, state[f"{prefix}28.bias"])


def test_lpips_distance(weight_files):
    lpips = LPIPS.from_files(*weight_files)
    assert not any(p.requires_grad for p in lpips.parameters())
    assert not lpips.train().training  # stays a fixed metric
    a, b = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    d = lpips(a, b)
    assert d.shape == (2, 1, 1, 1) and bool((d > 0).all())
    assert torch.allclose(lpips(a, a), torch.zeros(2, 1, 1, 1))


def test_lpips_first_layer_by_hand(weight_files):
    """With only head 0 non-zero the distance is the head-weighted, channel-normalised squared
    difference of relu1_2 features, averaged over space."""
    lpips = LPIPS.from_files(*weight_files)
    for head in lpips.lins[1:]:
        head.weight.data.zero_()
    a, b = torch.rand(1, 3, 16, 16) * 2 - 1, torch.rand(1, 3, 16, 16) * 2 - 1
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def relu1_2(x):
        net = lpips.net
        return F.relu(net[2](F.relu(net[0]((x - shift) / scale))))

    fa, fb = relu1_2(a), relu1_2(b)
    fa = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
    fb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
    weights = lpips.lins[0].weight.view(1, 64, 1, 1)
    expected = ((fa - fb).pow(2) * weights).sum(1).mean()
    assert torch.allclose(lpips(a, b).squeeze(), expected, rtol=1e-5)


def pass_through_vgg16_state() -> dict:
    """Every conv copies input channels 0-2 to output channels 0-2 through its centre tap
    (a 1×1 identity, so zero padding never enters) and is zero elsewhere: on a constant
    image every LPIPS tap holds the ReLU of the scaled input colour in channels 0-2."""
    state = {}
    for index, (out_ch, in_ch) in TORCHVISION_VGG16_CONVS.items():
        weight = torch.zeros(out_ch, in_ch, 3, 3)
        weight[range(3), range(3), 1, 1] = 1.0
        state[f"{index}.weight"], state[f"{index}.bias"] = weight, torch.zeros(out_ch)
    return state


def known_heads_state() -> dict:
    """Head l weighs channel 0 by l + 1 and channel 1 by 0.5; the other channels get random
    weights, which must not matter where the features agree."""
    state = lpips_head_state()
    for i, head in enumerate(state.values()):
        head[0, 0], head[0, 1] = i + 1.0, 0.5
    return state


def constant_image(colour) -> torch.Tensor:
    """A 1×3×32×32 image whose scaled input (x − shift)/scale is ``colour`` everywhere."""
    shift, scale = torch.tensor([-0.030, -0.088, -0.188]), torch.tensor([0.458, 0.448, 0.450])
    return (torch.tensor(colour) * scale + shift).view(1, 3, 1, 1).expand(1, 3, 32, 32).contiguous()


@pytest.fixture
def known_weight_files(tmp_path):
    vgg, heads = tmp_path / "vgg16-pass-through.pth", tmp_path / "vgg-known.pth"
    torch.save(pass_through_vgg16_state(), vgg)
    torch.save(known_heads_state(), heads)
    return vgg, heads


def test_lpips_golden_values(known_weight_files):
    """By hand, from the LPIPS paper's d = Σ_l mean_hw |w_l ⊙ (ŷ_a − ŷ_b)|² on known features.
    a's scaled colour (0.6, 0.8, −0.5) gives features (0.6, 0.8, 0) after the ReLU, already of
    unit norm; b's (0.8, 0.6, −0.5) gives (0.8, 0.6, 0). The squared differences are 0.04 in
    channels 0 and 1 at every tap, so d = 0.04 · Σ_l (l + 1) + 0.04 · 0.5 · 5 = 0.6 + 0.1 = 0.7.
    Doubling a's colour leaves its unit features, hence d, unchanged."""
    lpips = LPIPS.from_files(*known_weight_files)
    a, b = constant_image([0.6, 0.8, -0.5]), constant_image([0.8, 0.6, -0.5])
    assert lpips(a, b).item() == pytest.approx(0.7, rel=1e-5)
    assert lpips(b, a).item() == pytest.approx(0.7, rel=1e-5)
    assert lpips(constant_image([1.2, 1.6, -0.5]), b).item() == pytest.approx(0.7, rel=1e-5)
    # orthogonal unit features (0, 1, 0) and (1, 0, 0) differ by 1 in channels 0 and 1:
    # d = Σ_l (l + 1) + 0.5 · 5 = 17.5
    assert lpips(constant_image([0.0, 0.3, 0.0]), constant_image([0.2, 0.0, 0.0])).item() == pytest.approx(17.5, rel=1e-5)
    assert lpips(a, a).item() == 0.0


def test_perceptual_term_in_the_generator_loss(known_weight_files):
    """x and x_rec are the golden pair (LPIPS 0.7): the generator loss is their L1 distance plus
    half of 0.7. L1 by hand: |0.6 − 0.8| · 0.458 and |0.8 − 0.6| · 0.448 in two of the three
    channels, so (0.0916 + 0.0896) / 3 = 0.0604."""
    loss_fn = VQLPIPSWithDiscriminator(vgg_path=known_weight_files[0], lpips_path=known_weight_files[1],
                                       perceptual_weight=0.5, use_discriminator=False)
    x, x_rec = constant_image([0.6, 0.8, -0.5]), constant_image([0.8, 0.6, -0.5])
    loss, logs = loss_fn.generator_loss(torch.tensor(0.0), x, x_rec, global_step=0)
    assert logs["train/p_loss"].item() == pytest.approx(0.7, rel=1e-5)
    assert loss.item() == pytest.approx(0.0604 + 0.5 * 0.7, rel=1e-5)


def test_missing_and_malformed_files(tmp_path, weight_files):
    missing = tmp_path / "nowhere" / "vgg16-397923af.pth"
    with pytest.raises(FileNotFoundError, match="VGG16 weights not found at .*nowhere"):
        load_vgg16_features(missing)
    with pytest.raises(FileNotFoundError, match="LPIPS linear-head weights not found"):
        LPIPS.from_files(weight_files[0], tmp_path / "missing-vgg.pth")

    wrong_keys = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, wrong_keys)
    with pytest.raises(ValueError, match="not a torchvision VGG16 state dict"):
        load_vgg16_features(wrong_keys)
    with pytest.raises(ValueError, match="LPIPS vgg.pth"):
        LPIPS.from_files(weight_files[0], wrong_keys)

    wrong_shape = tmp_path / "shape.pth"
    state = torchvision_vgg16_state(full_model=False)
    state["0.weight"] = torch.zeros(64, 1, 3, 3)
    torch.save(state, wrong_shape)
    with pytest.raises(ValueError, match="does not match torchvision's VGG16 layout"):
        load_vgg16_features(wrong_shape)
