"""Networks: the DDPM U-Net for images and an MLP for points, both ``net(x, noise_condition, labels=None)``;
an encoder-decoder Transformer for autoregressive transitions on categorical data."""

from .base import Network, as_network
from .embeddings import NO_LABEL, FourierEmbedding, LabelEmbedding, SinusoidalEmbedding, make_embedding
from .encoder import EncoderClassifier
from .mlp import MLP, MLPConfig
from .transformer import ARTransformer, ARTransformerConfig
from .unet import PRESETS, UNet, UNetConfig, count_parameters

__all__ = ["Network", "as_network", "UNet", "UNetConfig", "ARTransformer", "ARTransformerConfig", "PRESETS", "EncoderClassifier", "MLP", "MLPConfig", "SinusoidalEmbedding", "FourierEmbedding",
           "LabelEmbedding", "NO_LABEL",
           "make_embedding", "count_parameters"]
