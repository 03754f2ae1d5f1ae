"""The ImageNet models of Sec. 6.2 (Fig. 5, Fig. 4 right, Fig. S4): the ResNet family of Flax's
ImageNet example and a small MLP-Mixer (Tolstikhin et al. 2021).

ResNet: Flax's examples/imagenet/models.py (He et al. 2016, v1.5: the stride of a bottleneck
block sits in its 3x3 convolution): a 7x7/2 convolution, batch norm, ReLU, 3x3/2 max pool, four
stages of basic (ResNet-18/34) or bottleneck (50 and deeper) blocks with 1, 2, 4, 8 times the
base width, global average pool, a dense readout. Convolutions have no bias; the last batch
norm of every block starts at scale 0 (the example's zero-init residual). ``width`` is the base
width (the example's ``num_filters``, 64).

Mixer: the reference implementation (google-research/vision_transformer, models_mixer.py): a
patch x patch / patch convolution stem to C channels, ``depth`` blocks of token mixing (an MLP
of width C/2 across the patches) and channel mixing (an MLP of width 4C), each after a layer
norm and with a residual connection, GELU, a final layer norm, mean over patches, a dense
readout initialised at zero. Mixer-S/16 is C = 512, 8 blocks, 16x16 patches (token MLP 256,
channel MLP 2048); B/16 is C = 768, 12 blocks. The paper's "small Mixer with 16x16 patches" is
``mixer_s16``.

Inputs are NHWC float32; outputs are logits (N, num_classes). Batch statistics live in the
``batch_stats`` collection (ResNet); call with ``train=False`` for evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from workers.errors import ConfigError
from workers.vocab import IMAGENET_ARCHS

ModuleDef = Any

# stage sizes and block kind per depth (the example's ResNet18 ... ResNet200)
RESNET_STAGES: dict[str, tuple[tuple[int, ...], bool]] = {
    "resnet18": ((2, 2, 2, 2), False), "resnet34": ((3, 4, 6, 3), False),
    "resnet50": ((3, 4, 6, 3), True), "resnet101": ((3, 4, 23, 3), True),
    "resnet152": ((3, 8, 36, 3), True), "resnet200": ((3, 24, 36, 3), True),
}
# (width C, blocks, patch) of the Mixer sizes of Tolstikhin et al. (2021), Table 1
MIXER_SIZES: dict[str, tuple[int, int, int]] = {"mixer_s16": (512, 8, 16)}
RESNET_WIDTH = 64  # the example's num_filters


class ResNetBlock(nn.Module):
    """Basic block: 3x3 conv, BN, ReLU, 3x3 conv, BN (scale 0), projection if shapes differ."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        residual = x
        y = self.conv(self.filters, (3, 3), self.strides)(x)
        y = self.act(self.norm()(y))
        y = self.conv(self.filters, (3, 3))(y)
        y = self.norm(scale_init=nn.initializers.zeros_init())(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class BottleneckResNetBlock(nn.Module):
    """Bottleneck block: 1x1, 3x3 (strided), 1x1 to 4x filters; BN (last at scale 0)."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        residual = x
        y = self.act(self.norm()(self.conv(self.filters, (1, 1))(x)))
        y = self.act(self.norm()(self.conv(self.filters, (3, 3), self.strides)(y)))
        y = self.conv(self.filters * 4, (1, 1))(y)
        y = self.norm(scale_init=nn.initializers.zeros_init())(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters * 4, (1, 1), self.strides,
                                 name="conv_proj")(residual)
            residual = self.norm(name="norm_proj")(residual)
        return self.act(residual + y)


class ResNet(nn.Module):
    """The example's ResNet: (N, H, W, 3) -> (N, num_classes) logits."""

    stage_sizes: tuple[int, ...]
    bottleneck: bool
    num_classes: int
    num_filters: int = RESNET_WIDTH
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        conv = partial(nn.Conv, use_bias=False, dtype=self.dtype)
        # one device or jit-sharded global batch: statistics over the whole batch (the
        # example's pmap needs axis_name="batch"; jit's sharding gives the same global mean)
        norm = partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                       epsilon=1e-5, dtype=self.dtype)
        block = BottleneckResNetBlock if self.bottleneck else ResNetBlock
        x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)],
                 name="conv_init")(x)
        x = nn.relu(norm(name="bn_init")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for i, n_blocks in enumerate(self.stage_sizes):
            for j in range(n_blocks):
                strides = (2, 2) if i > 0 and j == 0 else (1, 1)
                x = block(self.num_filters * 2**i, strides=strides, conv=conv, norm=norm,
                          act=nn.relu)(x)
        x = jnp.mean(x, axis=(1, 2))
        return jnp.asarray(nn.Dense(self.num_classes, dtype=self.dtype)(x), jnp.float32)


class MlpBlock(nn.Module):
    """Dense(mlp_dim), GELU, Dense back to the input's last dimension."""

    mlp_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.gelu(nn.Dense(self.mlp_dim)(x))
        return nn.Dense(x.shape[-1])(y)


class MixerBlock(nn.Module):
    """Token mixing then channel mixing, each pre-norm with a residual connection."""

    tokens_mlp_dim: int
    channels_mlp_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.swapaxes(nn.LayerNorm()(x), 1, 2)
        x = x + jnp.swapaxes(MlpBlock(self.tokens_mlp_dim, name="token_mixing")(y), 1, 2)
        y = nn.LayerNorm()(x)
        return x + MlpBlock(self.channels_mlp_dim, name="channel_mixing")(y)


class MlpMixer(nn.Module):
    """MLP-Mixer: (N, H, W, 3) -> (N, num_classes); H and W must divide by ``patch``."""

    num_classes: int
    num_blocks: int
    hidden_dim: int
    tokens_mlp_dim: int
    channels_mlp_dim: int
    patch: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        del train  # no dropout or batch norm: train and eval are the same function
        p = self.patch
        x = nn.Conv(self.hidden_dim, (p, p), strides=(p, p), name="stem")(x)
        x = x.reshape(x.shape[0], -1, x.shape[-1])  # (N, tokens, C)
        for _ in range(self.num_blocks):
            x = MixerBlock(self.tokens_mlp_dim, self.channels_mlp_dim)(x)
        x = jnp.mean(nn.LayerNorm(name="pre_head_layer_norm")(x), axis=1)
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                        name="head")(x)


def make_imagenet_model(arch: str, *, num_classes: int = 1000, width: int | None = None,
                        depth: int | None = None, patch_size: int | None = None,
                        dtype: Any = jnp.float32) -> nn.Module:
    """The flax module of ``arch`` (`workers.vocab.IMAGENET_ARCHS`).

    ``width``: ResNet base width (default 64) or Mixer hidden width C (default 512; token MLP
    C/2, channel MLP 4C). ``depth``: Mixer blocks (default 8; ignored for a ResNet, whose
    depth is its name). ``patch_size``: Mixer patch side (default 16). Raises `ConfigError`
    for an unknown arch or a non-positive size.
    """
    for k, v in (("width", width), ("depth", depth), ("patch_size", patch_size)):
        if v is not None and v < 1:
            raise ConfigError(f"{k} must be >= 1, got {v}")
    if arch in RESNET_STAGES:
        stages, bottleneck = RESNET_STAGES[arch]
        return ResNet(stages, bottleneck, num_classes, width or RESNET_WIDTH, dtype=dtype)
    if arch in MIXER_SIZES:
        c0, blocks0, patch0 = MIXER_SIZES[arch]
        c = width or c0
        return MlpMixer(num_classes, depth or blocks0, c, max(1, c // 2), 4 * c,
                        patch_size or patch0)
    raise ConfigError(f"unknown ImageNet arch {arch!r}; choose from {', '.join(IMAGENET_ARCHS)}")


def init_variables(model: nn.Module, rng: jax.Array, image_shape: tuple[int, int, int]) -> Any:
    """The model's variables (params, and batch_stats for a ResNet) for (H, W, 3) inputs."""
    return model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)


def param_count(model: nn.Module, image_shape: tuple[int, int, int] = (224, 224, 3)) -> int:
    """Number of trainable parameters (the ``params`` collection; batch-norm running
    statistics excluded, as torchvision's and Keras's published counts do), from shapes only
    (jax.eval_shape: nothing is allocated)."""
    shapes = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), image_shape))
    return int(sum(np.prod(a.shape) for a in jax.tree_util.tree_leaves(shapes["params"])))


__all__ = ["MIXER_SIZES", "RESNET_STAGES", "RESNET_WIDTH", "BottleneckResNetBlock",
           "MixerBlock", "MlpBlock", "MlpMixer", "ResNet", "ResNetBlock", "init_variables",
           "make_imagenet_model", "param_count"]
