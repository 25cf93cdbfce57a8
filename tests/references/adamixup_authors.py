"""Minimal re-implementation of AdaMixUp's training loss as the authors wrote it (for tests only).

Follows SITE5039/AdaMixUp ``GitHub.AdaMixup.AAAI.MNIST.Cifar.py`` @ 9e47ba030c823da69f7e2d4ea73adbfad76221d6:
``get_data_adaMixup`` (partners ``images[permutation]``, one-hot labels) and
``ResNet_Cifar_AdaMixup.build_graph`` (split the batch in halves; gate input ``(m1 x1 + m2 x2) / 2``;
softmax of three outputs ``a, b, c``; ``weight = a + u b``; classifier on the shuffled ``[image_mix, image_1]``
with ``[label_mix, label_1]``; intrusion discriminator on the shuffled ``[image_unseen, image_1]`` with one-hot
class 1 and ``image_mix`` with class 0; ``cost = ce_classifier + ce_discriminator``).
Written sample by sample with hand-written softmax cross-entropies, independent of the library's code.
"""

from __future__ import annotations

import math

import torch


def _softmax_ce(logits: torch.Tensor, target: torch.Tensor) -> float:
    """``-sum_k t_k log softmax(z)_k`` for one sample, by hand."""
    z = [float(v) for v in logits]
    top = max(z)
    log_norm = top + math.log(sum(math.exp(v - top) for v in z))
    return -sum(float(t) * (v - log_norm) for t, v in zip(target, z))


def authors_adamixup_loss(
    images, one_hot, perm, m1, m2, uniform, gate_net, class_net, disc_net, shuffle_cls, shuffle_bin
) -> dict[str, float]:
    """The authors' ``ce_cost1`` (classifier), ``ce_cost2`` (discriminator) and their sum, and the weights.

    ``gate_net`` maps gate images to the generator's 3 logits, ``class_net`` images to class logits and
    ``disc_net`` images to the discriminator's 2 logits in the authors' order (column 1 = original).
    ``shuffle_cls``/``shuffle_bin`` are the authors' ``tf.random_shuffle`` orders of the two batches.
    """
    batch = images.shape[0]
    n = batch // 2
    x1, x2 = images, images[perm]
    y1, y2 = one_hot, one_hot[perm]
    image_1, image_2, label_1, label_2 = x1[:n], x2[:n], y1[:n], y2[:n]
    image_unseen = x1[n:]
    gate = (m1 * image_1 + m2 * image_2) / 2
    weights, image_mix, label_mix = [], [], []
    for i in range(n):
        z = [float(v) for v in gate_net(gate[i : i + 1])[0]]
        e = [math.exp(v - max(z)) for v in z]
        a, b = e[0] / sum(e), e[1] / sum(e)
        w = a + float(uniform[i]) * b
        weights.append(w)
        image_mix.append(image_1[i] * w + image_2[i] * (1 - w))
        label_mix.append(label_1[i] * w + label_2[i] * (1 - w))
    all_images = torch.cat([torch.stack(image_mix), image_1])[shuffle_cls]
    all_labels = torch.cat([torch.stack(label_mix), label_1])[shuffle_cls]
    ce1 = sum(_softmax_ce(class_net(all_images[i : i + 1])[0], all_labels[i]) for i in range(2 * n)) / (2 * n)
    positive = torch.cat([image_unseen, image_1])
    binary_images = torch.cat([positive, torch.stack(image_mix)])[shuffle_bin]
    binary_labels = torch.cat(
        [torch.tensor([[0.0, 1.0]]).repeat(positive.shape[0], 1), torch.tensor([[1.0, 0.0]]).repeat(n, 1)]
    )[shuffle_bin]
    count = binary_images.shape[0]
    ce2 = sum(_softmax_ce(disc_net(binary_images[i : i + 1])[0], binary_labels[i]) for i in range(count)) / count
    return {"classifier": ce1, "discriminator": ce2, "total": ce1 + ce2, "weights": weights}
