"""Flax NNX models for the trainer: MLP, convnets of LaPerm's paper, ResNet-20.

All take images ``(batch, height, width, channels)`` and return logits.

* ``mlp`` and ``conv``: small models for the 8x8 digits and MNIST. Flax's
  default initialisers are kept: a permutation optimizer only re-orders the
  initial values of each weight vector, so those values are the ones it
  trains with. Biases start at zero and therefore never move under
  permutation.
* ``conv2``, ``conv4``, ``conv13``: the CIFAR-10 convnets of Train-by-Reconnect
  (Qiu & Suda, NeurIPS 2020), as :class:`ReconnectConvNet`.
* ``resnet20``: the CIFAR ResNet of He et al. (2016), :class:`ResNet`.

The models with BatchNorm keep its running statistics as ``nnx.BatchStat``
state: split them with ``nnx.split(model, nnx.Param, ...)``, train in
``model.train()`` mode (batch statistics) and evaluate in ``model.eval()``
mode (running averages).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

MODELS = ("mlp", "conv", "conv2", "conv4", "conv13", "resnet20")
DEFAULT_HIDDEN = (128,)
DEFAULT_CHANNELS = (16, 32)
POOL = "pool"  # a 2x2 max pooling in a RECONNECT_PLANS entry

# Train-by-Reconnect's convnets (github.com/ihsuy/Train-by-Reconnect,
# notebooks/Conv2.ipynb, Conv4.ipynb, Conv13.ipynb): the output channels of
# each 3x3 convolution (or a pooling), then the widths of the hidden dense
# layers.
RECONNECT_PLANS: dict[str, tuple[tuple[int | str, ...], tuple[int, ...]]] = {
    "conv2": ((64, 64, POOL), (256, 256)),
    "conv4": ((64, 64, POOL, 128, 128, POOL), (256, 256)),
    "conv13": ((64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL,
                512, 512, 512, POOL, 512, 512, 512, POOL), (512,)),
}
RESNET_STAGES = (16, 32, 64)  # ResNet-20: 3 basic blocks per stage

# He-uniform, the initialiser of the Train-by-Reconnect models.
_HE_UNIFORM = nnx.initializers.variance_scaling(2.0, "fan_in", "uniform")


class MLP(nnx.Module):
  """Flattens the image, then ``Linear`` layers with ReLU between them."""

  def __init__(self, in_features: int, hidden: Sequence[int],
               num_classes: int, *, rngs: nnx.Rngs):
    sizes = [in_features, *hidden, num_classes]
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs)
                            for a, b in itertools.pairwise(sizes)])

  def features(self, x: jax.Array) -> list[jax.Array]:
    """The output of each hidden layer, after its ReLU."""
    x = x.reshape(x.shape[0], -1)
    out = []
    for layer in self.layers[:-1]:
      x = nnx.relu(layer(x))
      out.append(x)
    return out

  def __call__(self, x: jax.Array) -> jax.Array:
    hidden = self.features(x)
    return self.layers[-1](hidden[-1] if hidden else
                           x.reshape(x.shape[0], -1))


class ConvNet(nnx.Module):
  """3x3 convolutions with ReLU and 2x2 average pooling, then a linear head.

  Average pooling (not max) keeps a gradient on every input, which gives every
  slot of a kernel a recommendation.
  """

  def __init__(self, image_shape: Sequence[int], channels: Sequence[int],
               num_classes: int, *, batch_norm: bool = False,
               rngs: nnx.Rngs):
    height, width, depth = image_shape
    convs: list[nnx.Conv] = []
    norms: list[nnx.BatchNorm] = []
    for out in channels:
      convs.append(nnx.Conv(depth, out, (3, 3), use_bias=not batch_norm,
                            rngs=rngs))
      if batch_norm:
        norms.append(nnx.BatchNorm(out, rngs=rngs))
      depth, height, width = out, height // 2, width // 2
    if height < 1 or width < 1:
      raise ValueError(f"ConvNet: {len(channels)} pooling layers shrink"
                       f" {tuple(image_shape[:2])} images to nothing")
    self.convs = nnx.List(convs)
    self.norms = nnx.List(norms) if batch_norm else None
    self.head = nnx.Linear(height * width * depth, num_classes, rngs=rngs)

  def features(self, x: jax.Array) -> list[jax.Array]:
    """The output of each convolution, after its ReLU (before pooling)."""
    out = []
    for i, conv in enumerate(self.convs):
      x = conv(x)
      if self.norms is not None:
        x = self.norms[i](x)
      out.append(nnx.relu(x))
      x = nnx.avg_pool(out[-1], (2, 2), strides=(2, 2))
    return out

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.avg_pool(self.features(x)[-1], (2, 2), strides=(2, 2))
    return self.head(x.reshape(x.shape[0], -1))


class ReconnectConvNet(nnx.Module):
  """A convnet of Train-by-Reconnect: Conv2, Conv4 or Conv13.

  As in the paper's code: every 3x3 convolution (``SAME`` padding, with a
  bias) and every hidden dense layer is followed by a ReLU, then BatchNorm;
  convolutions are grouped by 2x2 max pooling; the head is a dense layer.
  Kernels are He-uniform as there; biases start at zero (there He-uniform
  too; LaPerm does not permute them by default either way). Left out: the
  reference's Dropout and L2 regularisation, which the trainer does not
  provide.

  A pooling is skipped where the image has become smaller than 2x2, so any
  image of at least 1x1 works (Conv13 pools five times: 32x32 becomes 1x1).

  Args:
    image_shape: ``(height, width, channels)`` of one image.
    plan: output channels of each convolution, or :data:`POOL`.
    dense: widths of the hidden dense layers.
    num_classes: number of outputs.
    rngs: the initialisation's random streams.
  """

  def __init__(self, image_shape: Sequence[int], plan: Sequence[int | str],
               dense: Sequence[int], num_classes: int, *, rngs: nnx.Rngs):
    height, width, depth = image_shape
    convs: list[nnx.Conv] = []
    conv_norms: list[nnx.BatchNorm] = []
    pools: list[bool] = []
    for item in plan:
      if item == POOL:
        if convs and min(height, width) >= 2:
          pools[-1] = True
          height, width = height // 2, width // 2
        continue
      out = int(item)
      convs.append(nnx.Conv(depth, out, (3, 3), kernel_init=_HE_UNIFORM,
                            rngs=rngs))
      conv_norms.append(nnx.BatchNorm(out, rngs=rngs))
      pools.append(False)
      depth = out
    features = height * width * depth
    linears: list[nnx.Linear] = []
    linear_norms: list[nnx.BatchNorm] = []
    for out in dense:
      linears.append(nnx.Linear(features, out, kernel_init=_HE_UNIFORM,
                                rngs=rngs))
      linear_norms.append(nnx.BatchNorm(out, rngs=rngs))
      features = out
    self.convs = nnx.List(convs)
    self.conv_norms = nnx.List(conv_norms)
    self.pools = tuple(pools)  # whether a pooling follows each convolution
    self.linears = nnx.List(linears)
    self.linear_norms = nnx.List(linear_norms)
    self.head = nnx.Linear(features, num_classes, kernel_init=_HE_UNIFORM,
                           rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    for conv, norm, pool in zip(self.convs, self.conv_norms, self.pools):
      x = norm(nnx.relu(conv(x)))
      if pool:
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    for linear, norm in zip(self.linears, self.linear_norms):
      x = norm(nnx.relu(linear(x)))
    return self.head(x)


class BasicBlock(nnx.Module):
  """Two 3x3 convolutions with BatchNorm, and an identity shortcut.

  Where the block halves the size (``stride`` 2) or widens the channels, the
  shortcut subsamples and pads with zero channels (He et al.'s option A,
  without parameters).
  """

  def __init__(self, in_channels: int, out_channels: int, stride: int, *,
               rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(in_channels, out_channels, (3, 3),
                          strides=(stride, stride), use_bias=False,
                          kernel_init=_HE_UNIFORM, rngs=rngs)
    self.norm1 = nnx.BatchNorm(out_channels, rngs=rngs)
    self.conv2 = nnx.Conv(out_channels, out_channels, (3, 3), use_bias=False,
                          kernel_init=_HE_UNIFORM, rngs=rngs)
    self.norm2 = nnx.BatchNorm(out_channels, rngs=rngs)
    self.stride = stride
    self.extra_channels = out_channels - in_channels

  def __call__(self, x: jax.Array) -> jax.Array:
    y = nnx.relu(self.norm1(self.conv1(x)))
    y = self.norm2(self.conv2(y))
    shortcut = x[:, ::self.stride, ::self.stride]
    if self.extra_channels:
      half = self.extra_channels // 2
      shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0),
                                    (half, self.extra_channels - half)))
    return nnx.relu(y + shortcut)


class ResNet(nnx.Module):
  """The CIFAR ResNet of He et al. (2016): ResNet-20 by default.

  A 3x3 convolution to ``stages[0]`` channels with BatchNorm and ReLU, then
  ``blocks`` :class:`BasicBlock` per stage (the first of each later stage
  halves the size), global average pooling and a dense head. Kernels are
  He-uniform; convolutions have no bias (BatchNorm follows each).

  Args:
    image_shape: ``(height, width, channels)`` of one image.
    num_classes: number of outputs.
    stages: channels of each stage.
    blocks: basic blocks per stage (3: ResNet-20; ``6 * blocks + 2``
      layers).
    rngs: the initialisation's random streams.
  """

  def __init__(self, image_shape: Sequence[int], num_classes: int, *,
               stages: Sequence[int] = RESNET_STAGES, blocks: int = 3,
               rngs: nnx.Rngs):
    depth = image_shape[-1]
    self.stem = nnx.Conv(depth, stages[0], (3, 3), use_bias=False,
                         kernel_init=_HE_UNIFORM, rngs=rngs)
    self.stem_norm = nnx.BatchNorm(stages[0], rngs=rngs)
    layers = []
    depth = stages[0]
    for i, out in enumerate(stages):
      for j in range(blocks):
        stride = 2 if i > 0 and j == 0 else 1
        layers.append(BasicBlock(depth, out, stride, rngs=rngs))
        depth = out
    self.blocks = nnx.List(layers)
    self.head = nnx.Linear(depth, num_classes, kernel_init=_HE_UNIFORM,
                           rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.relu(self.stem_norm(self.stem(x)))
    for block in self.blocks:
      x = block(x)
    return self.head(jnp.mean(x, axis=(1, 2)))


def make_model(name: str, image_shape: Sequence[int], num_classes: int, *,
               seed: int = 0, hidden: Sequence[int] = DEFAULT_HIDDEN,
               channels: Sequence[int] = DEFAULT_CHANNELS,
               batch_norm: bool = False) -> nnx.Module:
  """Builds the model ``name`` (one of :data:`MODELS`) for ``image_shape``.

  Args:
    name: ``"mlp"``, ``"conv"``, ``"conv2"``, ``"conv4"``, ``"conv13"`` or
      ``"resnet20"``.
    image_shape: ``(height, width, channels)`` of one image.
    num_classes: number of outputs.
    seed: seed of the initial weights.
    hidden: hidden layer widths of the MLP.
    channels: output channels of each convolution of the convnet.
    batch_norm: whether the convnet (``"conv"``) normalises each
      convolution's output with ``nnx.BatchNorm`` (batch statistics in
      training, running averages in evaluation). The other convnets always
      have BatchNorm.

  Returns:
    The model, an ``nnx.Module`` mapping ``(batch, *image_shape)`` to logits.

  Example:
    >>> import jax.numpy as jnp
    >>> from sgperm_jax.experiments import models
    >>> model = models.make_model("conv", (8, 8, 1), 10)
    >>> model(jnp.zeros((2, 8, 8, 1))).shape
    (2, 10)
    >>> import jax
    >>> from flax import nnx
    >>> def count(name):  # parameters, without allocating them
    ...   model = nnx.eval_shape(lambda: models.make_model(name, (32, 32, 3),
    ...                                                    10))
    ...   return sum(p.size for p in jax.tree.leaves(nnx.state(model,
    ...                                                        nnx.Param)))
    >>> count("conv4"), count("resnet20")
    (2427722, 269722)
  """
  rngs = nnx.Rngs(seed)
  if name == "mlp":
    return MLP(math.prod(image_shape), hidden, num_classes, rngs=rngs)
  if name == "conv":
    return ConvNet(image_shape, channels, num_classes, batch_norm=batch_norm,
                   rngs=rngs)
  if name in RECONNECT_PLANS:
    plan, dense = RECONNECT_PLANS[name]
    return ReconnectConvNet(image_shape, plan, dense, num_classes, rngs=rngs)
  if name == "resnet20":
    return ResNet(image_shape, num_classes, rngs=rngs)
  raise ValueError(f"model must be one of {MODELS}, got {name!r}")
