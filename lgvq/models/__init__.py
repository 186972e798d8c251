"""VQ-VAE / VQ-GAN / CVQ autoencoders, their losses, and the named-configuration registry."""

from lgvq.models.discriminator import ActNorm, NLayerDiscriminator
from lgvq.models.losses import VQLPIPSWithDiscriminator, adaptive_weight, hinge_d_loss, vanilla_d_loss
from lgvq.models.lpips import LPIPS, VGG16Features, load_vgg16_features
from lgvq.models.modules import AttnBlock, Decoder, Downsample, Encoder, ResnetBlock, Upsample
from lgvq.models.registry import MODELS, ModelSpec, build_loss, build_model, get_spec, model_names
from lgvq.models.vqmodel import VQModel, VQModelConfig, VQOutput, build_quantizer

__all__ = [
    "ActNorm", "NLayerDiscriminator",
    "VQLPIPSWithDiscriminator", "adaptive_weight", "hinge_d_loss", "vanilla_d_loss",
    "LPIPS", "VGG16Features", "load_vgg16_features",
    "AttnBlock", "Decoder", "Downsample", "Encoder", "ResnetBlock", "Upsample",
    "MODELS", "ModelSpec", "build_loss", "build_model", "get_spec", "model_names",
    "VQModel", "VQModelConfig", "VQOutput", "build_quantizer",
]
