"""The triplet loss of FaceNet (Schroff et al. 2015) with online negative mining, in TensorFlow.

Embeddings ``f(x)`` are L2-normalised, so the squared Euclidean distance of
two of them is ``||a - b||^2 = 2 - 2 cos(a, b) = 2 d`` where ``d = 1 - cos``
is the cosine distance the device thresholds. For a triplet (anchor ``a``,
positive ``p`` of the same person, negative ``n`` of another)::

    l(a, p, n) = max( ||f(a) - f(p)||^2 - ||f(a) - f(n)||^2 + alpha, 0 )

and a batch's loss is ``L = sum_i l(a_i, p_i, n_i)`` over its triplets.
Which triplets? A batch holds P people x K photos; every ordered pair of two
photos of one person is an anchor-positive pair, and its negative is mined
from the batch's distance matrix:

* ``semi-hard`` (FaceNet's choice, the default): the *hardest negative that
  is still farther than the positive*, ``n* = argmin { D[a,n] : D[a,n] >
  D[a,p] }``. It is active (non-zero loss) only when ``D[a,n*] < D[a,p] +
  alpha``: inside the margin. When no negative is farther than the positive
  (all are "hard"), the farthest negative is used, the least hard of them.
* ``batch-all``: every valid (a, p, n) triplet counts.

Both are vectorised: one (B, B) distance matrix, masks and a (B, B, B)
comparison for the semi-hard search; no Python loop over triplets. For
training the sum is divided by the number of triplets (semi-hard: one per
anchor-positive pair; batch-all: the active ones, as in Hermans et al. 2017)
so the learning rate does not depend on the batch size; ``reduction="sum"``
gives the paper's ``L`` itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MINING = ("semi-hard", "batch-all")


@dataclass(frozen=True)
class TripletLoss:
    """One batch's loss and what it was made of (TensorFlow scalars)."""

    loss: Any  # the reduced loss (what the gradient is taken of)
    active_fraction: Any  # share of the batch's triplets with a non-zero loss
    triplets: Any  # how many triplets the batch has (semi-hard: anchor-positive pairs)
    active: Any  # how many of them are active


def squared_distances(embeddings: Any) -> Any:
    """``D[i, j] = ||e_i - e_j||^2`` of every pair of rows, ``>= 0`` (rounding clipped).

    ``||a||^2 - 2 a.b + ||b||^2``: for unit vectors ``2 - 2 cos``.
    """
    import tensorflow as tf

    e = tf.convert_to_tensor(embeddings, dtype=tf.float32)
    sq = tf.reduce_sum(e * e, axis=1)
    d = sq[:, None] - 2.0 * tf.matmul(e, e, transpose_b=True) + sq[None, :]
    return tf.maximum(d, 0.0)


def _masks(labels: Any) -> tuple[Any, Any]:
    """(positive, negative) (B, B) boolean masks: same label and not the same row / other label."""
    import tensorflow as tf

    lab = tf.reshape(tf.convert_to_tensor(labels), [-1])
    same = tf.equal(lab[:, None], lab[None, :])
    not_self = tf.logical_not(tf.eye(tf.shape(lab)[0], dtype=tf.bool))
    return tf.logical_and(same, not_self), tf.logical_not(same)


def semi_hard_negatives(distances: Any, labels: Any) -> Any:
    """For every (anchor, positive) the index of its semi-hard negative, as a (B, B) int tensor.

    ``n*(a, p) = argmin_n { D[a, n] : label_n != label_a, D[a, n] > D[a, p] }``;
    when that set is empty, ``argmax_n { D[a, n] : label_n != label_a }``.
    Entries whose (a, p) is not an anchor-positive pair are -1 (and so is
    every entry of an anchor without any negative in the batch).
    """
    import tensorflow as tf

    d = tf.convert_to_tensor(distances, dtype=tf.float32)
    pos, neg = _masks(labels)
    inf = tf.constant(float("inf"))
    # farther[a, p, n]: n is a negative of a, farther from a than p is.
    farther = tf.logical_and(neg[:, None, :], d[:, None, :] > d[:, :, None])
    masked = tf.where(farther, tf.broadcast_to(d[:, None, :], tf.shape(farther)), inf)
    nearest_farther = tf.argmin(masked, axis=2, output_type=tf.int32)
    has_farther = tf.reduce_any(farther, axis=2)
    easiest = tf.argmax(tf.where(neg, d, -inf), axis=1, output_type=tf.int32)
    choice = tf.where(has_farther, nearest_farther, easiest[:, None])
    valid = tf.logical_and(pos, tf.reduce_any(neg, axis=1)[:, None])
    return tf.where(valid, choice, -tf.ones_like(choice))


def triplet_loss(
    embeddings: Any,
    labels: Any,
    alpha: float = 0.2,
    mining: str = "semi-hard",
    reduction: str = "mean",
) -> TripletLoss:
    """The triplet loss of a batch of L2-normalised embeddings (see the module docstring).

    ``reduction``: ``"sum"`` is the paper's ``L``; ``"mean"`` divides it by
    the number of triplets (semi-hard) or of active triplets (batch-all; 1 if
    none is active). ``labels`` are integer person ids, one per row.
    """
    import tensorflow as tf

    if mining not in MINING:
        raise ValueError(f"mining must be one of {MINING}, not {mining!r}")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', not {reduction!r}")
    d = squared_distances(embeddings)
    pos, neg = _masks(labels)
    if mining == "semi-hard":
        n_idx = semi_hard_negatives(d, labels)
        valid = n_idx >= 0
        d_an = tf.gather(d, tf.maximum(n_idx, 0), batch_dims=1)
        per = tf.where(valid, tf.maximum(d - d_an + alpha, 0.0), 0.0)
    else:
        valid = tf.logical_and(pos[:, :, None], neg[:, None, :])
        per = tf.where(valid, tf.maximum(d[:, :, None] - d[:, None, :] + alpha, 0.0), 0.0)
    total = tf.reduce_sum(per)
    n = tf.reduce_sum(tf.cast(valid, tf.float32))
    active = tf.reduce_sum(tf.cast(per > 0.0, tf.float32))
    if reduction == "sum":
        loss = total
    elif mining == "semi-hard":
        loss = total / tf.maximum(n, 1.0)
    else:
        loss = total / tf.maximum(active, 1.0)
    return TripletLoss(loss, active / tf.maximum(n, 1.0), n, active)


def l2_normalize(x: Any) -> Any:
    """``x / ||x||`` per row (what the device does to every embedding)."""
    import tensorflow as tf

    return tf.math.l2_normalize(x, axis=-1, epsilon=1e-12)
