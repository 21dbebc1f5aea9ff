"""Two-digit images built from scikit-learn's bundled UCI handwritten digits (the
``multidigits`` benchmark), in the spirit of MultiMNIST (Sener & Koltun, "Multi-Task
Learning as Multi-Objective Optimization", NeurIPS 2018, Sec. 5): two digits overlaid on
one canvas, one classification task per digit, here with two more tasks of the same pair.

Source: ``sklearn.datasets.load_digits()``, the 1,797 8 x 8 images of the UCI "Optical
Recognition of Handwritten Digits" test set (integer intensities 0..16, ten classes of
174-183 images each); the file ships inside the scikit-learn package, nothing is
downloaded (``pip install -e '.[digits]'`` installs it).

The construction, deterministic for a given ``seed`` (:func:`build_splits`):

1. **Source pools first.** ``np.random.default_rng(seed).permutation(1797)``; its first
   ``val`` entries are the validation pool, the next ``test`` the test pool and the rest
   the training pool (defaults 360 / 360 / 1,077 images). Every pool is sorted, and the
   three are disjoint, so no test (or validation) digit image is ever seen in training.
2. **Pairs per split.** For split number ``s`` (train 0, val 1, test 2) the generator
   ``np.random.default_rng([seed, s])`` draws the left images, then the right images, each
   ``pairs[s]`` indices uniformly with replacement from that split's pool (``rng.choice``;
   defaults 10,000 / 2,000 / 2,000 pairs). A split's pairs therefore depend only on the
   seed, its pool and its own size.
3. **Canvas.** A 12 x 12 zero canvas; the left digit's 8 x 8 image is placed with its top-
   left corner at (row 0, column 0), the right digit's at (row 4, column 4), so the two
   overlap on the central 4 x 4 block, where the pixel-wise maximum is kept; the canvas is
   divided by 16, giving float32 values in [0, 1], shape (1, 12, 12) per pair.
4. **Labels**, int64, one column per task in :data:`TASKS` order: ``left`` (the left
   image's class, 10 classes), ``right`` (10), ``sum`` = left + right (19 classes, 0..18)
   and ``parity`` = (left + right) mod 2 (2 classes: 0 even, 1 odd). The parity of the sum
   rather than of the product: it is balanced (P(odd) = 1/2; an odd product needs both
   digits odd, P = 1/4), and it is the exclusive or of the digits' parities, a task no
   single digit decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import DatasetNotFound

#: the tasks, in label-column order, and their class counts
TASKS = ("left", "right", "sum", "parity")
NUM_CLASSES = {"left": 10, "right": 10, "sum": 19, "parity": 2}
SPLITS = ("train", "val", "test")
#: the canvas side and the (row, column) of each digit's top-left corner on it
CANVAS = 12
DIGIT = 8
OFFSETS = ((0, 0), (4, 4))
#: the largest intensity of the source images (they are integers 0..16)
MAX_INTENSITY = 16.0
#: default source-pool sizes (val, test; the training pool is the rest) and pairs per split
SOURCE_SIZES = (360, 360)
PAIRS = (10000, 2000, 2000)

INSTALL_HINT = "pip install -e '.[digits]'"


def load_source() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) float64 with integer values 0..16, classes (1797,) int64) from
    scikit-learn's bundled copy; without scikit-learn a :class:`DatasetNotFound` whose one
    line names the install command."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetNotFound("benchmark multidigits reads the digits bundled with scikit-learn, which is not "
                              f"installed: {INSTALL_HINT}") from None
    digits = load_digits()
    return np.asarray(digits.images, dtype=np.float64), np.asarray(digits.target, dtype=np.int64)


def split_sources(n: int, sizes: Sequence[int] = SOURCE_SIZES, seed: int = 0) -> dict[str, np.ndarray]:
    """The disjoint source pools (sorted indices into the ``n`` source images) of step 1
    of the module docstring: ``sizes`` = (val, test), the training pool is the rest."""
    n_val, n_test = (int(s) for s in sizes)
    if n_val < 1 or n_test < 1 or n_val + n_test > n - 1:
        raise ValueError(f"source_sizes {tuple(sizes)} must be two positive pool sizes (val, test) that leave "
                         f"training images of the {n}")
    order = np.random.default_rng(seed).permutation(n)
    return {"train": np.sort(order[n_val + n_test:]), "val": np.sort(order[:n_val]),
            "test": np.sort(order[n_val:n_val + n_test])}


def overlay(images: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Step 3: the (N, 1, 12, 12) float32 canvases in [0, 1] of the pairs (left[j],
    right[j]) of source images ``images`` (M, 8, 8) with values 0..16."""
    canvas = np.zeros((len(left), CANVAS, CANVAS), dtype=np.float64)
    for index, (r, c) in zip((left, right), OFFSETS):
        block = canvas[:, r:r + DIGIT, c:c + DIGIT]
        np.maximum(block, images[index], out=block)
    return (canvas / MAX_INTENSITY).astype(np.float32)[:, None]


def pair_labels(classes: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Step 4: the (N, 4) int64 labels (left, right, sum, parity of the sum)."""
    a, b = classes[left].astype(np.int64), classes[right].astype(np.int64)
    return np.stack([a, b, a + b, (a + b) % 2], axis=1)


@dataclass(frozen=True)
class DigitPairs:
    """One split: canvases (N, 1, 12, 12) float32, labels (N, 4) int64 in :data:`TASKS`
    order, and the source indices (into ``load_source()``) of each pair's two digits."""
    images: np.ndarray
    labels: np.ndarray
    left_source: np.ndarray
    right_source: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def build_splits(seed: int = 0, source_sizes: Sequence[int] = SOURCE_SIZES, pairs: Sequence[int] = PAIRS,
                 source: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, DigitPairs]:
    """The train / val / test pairs of the module docstring's construction (``source``:
    (images, classes), default :func:`load_source`)."""
    sizes = [int(p) for p in pairs]
    if len(sizes) != 3 or min(sizes) < 1:
        raise ValueError(f"pairs {tuple(pairs)} must be three positive pair counts (train, val, test)")
    images, classes = load_source() if source is None else source
    pools = split_sources(len(classes), source_sizes, seed)
    out = {}
    for s, (split, count) in enumerate(zip(SPLITS, sizes)):
        rng = np.random.default_rng([seed, s])
        left = rng.choice(pools[split], size=count, replace=True)
        right = rng.choice(pools[split], size=count, replace=True)
        out[split] = DigitPairs(overlay(images, left, right), pair_labels(classes, left, right), left, right)
    return out
