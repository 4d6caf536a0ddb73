"""Small Flax NNX models for the trainer: a multilayer perceptron and a convnet.

Both take images ``(batch, height, width, channels)`` and return logits. Flax's
default initialisers are kept: a permutation optimizer only re-orders the
initial values of each weight vector, so those values are the ones it trains
with. Biases start at zero and therefore never move under permutation.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import jax
from flax import nnx

MODELS = ("mlp", "conv")
DEFAULT_HIDDEN = (128,)
DEFAULT_CHANNELS = (16, 32)


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


def make_model(name: str, image_shape: Sequence[int], num_classes: int, *,
               seed: int = 0, hidden: Sequence[int] = DEFAULT_HIDDEN,
               channels: Sequence[int] = DEFAULT_CHANNELS,
               batch_norm: bool = False) -> nnx.Module:
  """Builds ``"mlp"`` or ``"conv"`` for images of ``image_shape``.

  Args:
    name: ``"mlp"`` or ``"conv"``.
    image_shape: ``(height, width, channels)`` of one image.
    num_classes: number of outputs.
    seed: seed of the initial weights.
    hidden: hidden layer widths of the MLP.
    channels: output channels of each convolution of the convnet.
    batch_norm: whether the convnet normalises each convolution's output
      with ``nnx.BatchNorm`` (batch statistics in training, running
      averages in evaluation).

  Returns:
    The model, an ``nnx.Module`` mapping ``(batch, *image_shape)`` to logits.

  Example:
    >>> import jax.numpy as jnp
    >>> from sgperm_jax.experiments import models
    >>> model = models.make_model("conv", (8, 8, 1), 10)
    >>> model(jnp.zeros((2, 8, 8, 1))).shape
    (2, 10)
  """
  rngs = nnx.Rngs(seed)
  if name == "mlp":
    return MLP(math.prod(image_shape), hidden, num_classes, rngs=rngs)
  if name == "conv":
    return ConvNet(image_shape, channels, num_classes, batch_norm=batch_norm,
                   rngs=rngs)
  raise ValueError(f"model must be one of {MODELS}, got {name!r}")
