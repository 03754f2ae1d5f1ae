"""One colour per architecture, per transform and per inference, and one marker per inference,
used by every figure, so that VEC (or pixel rotation, or NN+) looks the same in Fig. 2, Fig. 4,
Fig. S5 and Fig. S6 (issue 15 item 5).

- Architectures: the Okabe-Ito qualitative palette (distinguishable with the common colour
  vision deficiencies; Okabe & Ito 2008), in `workers.vocab.ARCHS` order.
- Transforms: five steps of viridis in `workers.vocab.TRANSFORMS` order, which is the order of
  growing spurious symmetry (I_3d, O(3) x I_d, O(3)^d, P(3d), O(3d); paper Sec. 3), so darker
  to lighter reads as "more symmetry"; the last step stops short of viridis' pale yellow, which
  does not show on white.
- Inferences: Paul Tol's bright scheme for the finite networks, black / grey for the kernels.

Derived cells (equal to a computed one by Theorem 4.1, stored with ``derived_from``) are drawn
with the same colour but hollow (`DERIVED_HATCH` for bars, white-faced markers for points).
Colours are hex strings, so this module needs no matplotlib.
"""

from __future__ import annotations

from workers.vocab import ARCHS, INFERENCES, TRANSFORMS

ARCH_COLORS: dict[str, str] = dict(zip(ARCHS, (
    "#E69F00",  # fcn: orange
    "#56B4E9",  # lcn: sky blue
    "#009E73",  # vec: bluish green
    "#0072B2",  # gap: blue
    "#D55E00",  # lap4: vermillion
    "#CC79A7",  # lap8: reddish purple
), strict=True))

TRANSFORM_COLORS: dict[str, str] = dict(zip(TRANSFORMS, (
    "#440154",  # identity (viridis 0.00)
    "#3B528B",  # shared_rotation (0.25)
    "#21918C",  # pixel_rotation (0.50)
    "#5EC962",  # permutation (0.75)
    "#B5DE2B",  # global_rotation (0.88)
), strict=True))

INFERENCE_COLORS: dict[str, str] = dict(zip(INFERENCES, (
    "#000000",  # ntk
    "#777777",  # nngp
    "#4477AA",  # nn
    "#EE6677",  # nn_plus
), strict=True))

INFERENCE_MARKERS: dict[str, str] = dict(zip(INFERENCES, ("s", "D", "o", "^"), strict=True))

# Where colour is the arch and the transform needs a mark of its own (Fig. S5's scatter)
TRANSFORM_MARKERS: dict[str, str] = dict(zip(TRANSFORMS, "os^Dv", strict=True))

# Where one panel's series share an arch and differ by transform (Fig. 4's VEC_n on CIFAR-10 and
# on pixel-rotated CIFAR-10), the line style tells the transforms apart, the colour stays the arch's
TRANSFORM_LINESTYLES: dict[str, object] = dict(zip(TRANSFORMS, (
    "-", (0, (6, 2)), "-.", (0, (1, 1.5)), (0, (4, 1.5, 1, 1.5, 1, 1.5))), strict=True))

# The ImageNet figures (Fig. 5, Fig. 4 right, Fig. S4): one colour and marker per model family
# (Okabe-Ito blue and vermillion), the transform as line style as above
IMAGENET_FAMILY_COLORS: dict[str, str] = {"resnet": "#0072B2", "mixer": "#D55E00"}
IMAGENET_FAMILY_MARKERS: dict[str, str] = {"resnet": "o", "mixer": "s"}

# A trial's learning curve (`figures.curves`): one colour per data split
SPLIT_COLORS: dict[str, str] = {"train": "#4477AA", "val": "#228833", "test": "#AA3377"}

# Shared marks: the chance level and the hatching of derived bars
CHANCE_COLOR = "#555555"
KEY_COLOR = "#444444"  # legend keys that stand for every series (a marker shape, "derived")
DERIVED_HATCH = "////"
DERIVED_LABEL = "equal by Theorem 4.1 (copied, not computed)"

__all__ = ["ARCH_COLORS", "CHANCE_COLOR", "DERIVED_HATCH", "DERIVED_LABEL",
           "IMAGENET_FAMILY_COLORS", "IMAGENET_FAMILY_MARKERS", "INFERENCE_COLORS",
           "INFERENCE_MARKERS", "KEY_COLOR", "SPLIT_COLORS", "TRANSFORM_COLORS",
           "TRANSFORM_LINESTYLES", "TRANSFORM_MARKERS"]
