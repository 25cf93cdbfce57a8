"""Minimal re-implementation of PuzzleMix's mask energy and block transport, for comparison in tests.

Follows snu-mllab/PuzzleMix:
* ``mixup.py`` at commit 7eba27e86fb053950f48c3935bdac8c1274e7c89: ``mixup_graph`` (unary and
  pairwise terms), ``neigh_penalty``, ``graphcut_multi`` (prior table and the energy handed to gco);
* ``imagenet/mixup.py`` at commit 0534b55f120ddca5f8802a0b066c8377e80eb737: ``mask_transport``
  (the version whose loop raises the losers' cost each round);
* ``main.py`` (``train``) and ``mixup.py`` (``mixup_graph``) at commit 7eba27e8: the adversarial
  step (random start, FGSM step from the saliency pass's input gradient, noise on the own images
  and/or the partners in pixel space);
* ``imagenet/train.py`` at commit 54085ba1b30e2db81206b5b4edb7c5de5c262594: the clean loss
  (``authors_clean_loss``).
Written sample by sample and with the authors' index conventions (``input1`` own, ``input2``
partner), CPU only; the gco call is left out: the function returns the energy gco would minimise.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def neigh_penalty(input1, input2, k):
    pw_x = input1[:, :, :-1, :] - input2[:, :, 1:, :]
    pw_y = input1[:, :, :, :-1] - input2[:, :, :, 1:]
    pw_x = pw_x[:, :, k - 1 :: k, :]
    pw_y = pw_y[:, :, :, k - 1 :: k]
    pw_x = F.avg_pool2d(pw_x.abs().mean(1), kernel_size=(1, k))
    pw_y = F.avg_pool2d(pw_y.abs().mean(1), kernel_size=(k, 1))
    return pw_x, pw_y


def authors_energy(input1, grad1, indices, block_num, alpha, beta, gamma, eta, neigh_size, n_labels):
    """Per sample: (unary (n, n, L) as graphcut_multi builds it before scaling, pw_x + beta, pw_y + beta)."""
    batch_size, _, _, width = input1.shape
    block_size = width // block_num
    neigh_size = min(neigh_size, block_size)
    beta = beta / block_num / 16
    grad1_pool = F.avg_pool2d(grad1, block_size)
    unary1_torch = grad1_pool / grad1_pool.view(batch_size, -1).sum(1).view(batch_size, 1, 1)
    unary2_torch = unary1_torch[indices]
    input1_pool = F.avg_pool2d(input1, neigh_size)
    input2_pool = input1_pool[indices]
    pw_x = torch.zeros([batch_size, 2, 2, block_num - 1, block_num])
    pw_y = torch.zeros([batch_size, 2, 2, block_num, block_num - 1])
    k = block_size // neigh_size
    pw_x[:, 0, 0], pw_y[:, 0, 0] = neigh_penalty(input2_pool, input2_pool, k)
    pw_x[:, 0, 1], pw_y[:, 0, 1] = neigh_penalty(input2_pool, input1_pool, k)
    pw_x[:, 1, 0], pw_y[:, 1, 0] = neigh_penalty(input1_pool, input2_pool, k)
    pw_x[:, 1, 1], pw_y[:, 1, 1] = neigh_penalty(input1_pool, input1_pool, k)
    pw_x = beta * gamma * pw_x
    pw_y = beta * gamma * pw_y
    unary1 = unary1_torch.clone()
    unary2 = unary2_torch.clone()
    unary2[:, :-1, :] += (pw_x[:, 1, 0] + pw_x[:, 1, 1]) / 2.0
    unary1[:, :-1, :] += (pw_x[:, 0, 1] + pw_x[:, 0, 0]) / 2.0
    unary2[:, 1:, :] += (pw_x[:, 0, 1] + pw_x[:, 1, 1]) / 2.0
    unary1[:, 1:, :] += (pw_x[:, 1, 0] + pw_x[:, 0, 0]) / 2.0
    unary2[:, :, :-1] += (pw_y[:, 1, 0] + pw_y[:, 1, 1]) / 2.0
    unary1[:, :, :-1] += (pw_y[:, 0, 1] + pw_y[:, 0, 0]) / 2.0
    unary2[:, :, 1:] += (pw_y[:, 0, 1] + pw_y[:, 1, 1]) / 2.0
    unary1[:, :, 1:] += (pw_y[:, 1, 0] + pw_y[:, 0, 0]) / 2.0
    pw_x = (pw_x[:, 1, 0] + pw_x[:, 0, 1] - pw_x[:, 1, 1] - pw_x[:, 0, 0]) / 2
    pw_y = (pw_y[:, 1, 0] + pw_y[:, 0, 1] - pw_y[:, 1, 1] - pw_y[:, 0, 0]) / 2
    out = []
    for i in range(batch_size):
        u_a, u_b, a = unary2[i].numpy(), unary1[i].numpy(), float(alpha[i])
        if n_labels == 2:
            prior = eta * np.array([-np.log(a + 1e-8), -np.log(1 - a + 1e-8)]) / block_num**2
        elif n_labels == 3:
            prior = (
                eta
                * np.array([-np.log(a**2 + 1e-8), -np.log(2 * a * (1 - a) + 1e-8), -np.log((1 - a) ** 2 + 1e-8)])
                / block_num**2
            )
        else:
            prior = (
                eta
                * np.array(
                    [
                        -np.log(a**3 + 1e-8),
                        -np.log(3 * a**2 * (1 - a) + 1e-8),
                        -np.log(3 * a * (1 - a) ** 2 + 1e-8),
                        -np.log((1 - a) ** 3 + 1e-8),
                    ]
                )
                / block_num**2
            )
        unary = np.stack(
            [(1 - lam) * u_a + lam * u_b + prior[j] for j, lam in enumerate(np.linspace(0, 1, n_labels))], axis=-1
        )
        out.append((unary, pw_x[i].numpy() + beta, pw_y[i].numpy() + beta))
    return out


def cost_matrix(width):
    C = np.zeros([width**2, width**2], dtype=np.float32)
    for m_i in range(width**2):
        i1, j1 = m_i // width, m_i % width
        for m_j in range(width**2):
            i2, j2 = m_j // width, m_j % width
            C[m_i, m_j] = abs(i1 - i2) ** 2 + abs(j1 - j2) ** 2
    return torch.tensor(C / (width - 1) ** 2)


def mask_transport(mask, grad_pool, eps=0.01):
    """The authors' plan (B, N, N): plan[b, p, q] = 1 when source block p moves to destination q."""
    block_num = mask.shape[-1]
    C = cost_matrix(block_num).unsqueeze(0)
    z = (mask > 0).float()
    cost = eps * C - grad_pool.reshape(-1, block_num**2, 1) * z.reshape(-1, 1, block_num**2)
    for _ in range(block_num):
        row_best = cost.min(-1)[1]
        plan = torch.zeros_like(cost).scatter_(-1, row_best.unsqueeze(-1), 1)
        cost_fight = plan * cost
        col_best = cost_fight.min(-2)[1]
        plan_win = torch.zeros_like(cost).scatter_(-2, col_best.unsqueeze(-2), 1) * plan
        plan_lose = (1 - plan_win) * plan
        cost += plan_lose
    return plan_win


def authors_adversarial_start(input, uniform, adv_eps, mean, std):
    """``main.py``'s random start: ``noise ~ U(-eps, eps)`` (given here as ``uniform``), pixels
    clamped to [0, 1]; returns (noise after the clamp, the normalised input of the saliency pass)."""
    noise = uniform.clone()
    input_orig = input * std + mean
    input_noise = torch.clamp(input_orig + noise, 0, 1)
    noise = input_noise - input_orig
    return noise, (input_noise - mean) / std


def authors_adversarial_noise(noise, grad, adv_eps, adv_mix_coef):
    """``main.py`` after the saliency backward: FGSM step of size (adv_eps + 2) / 255, clamp, coef."""
    noise = noise + (adv_eps + 2) / 255.0 * grad.sign()
    noise = torch.clamp(noise, -adv_eps / 255.0, adv_eps / 255.0)
    return adv_mix_coef * noise


def authors_perturbed_sources(input1, indices, noise, adv_mask1, adv_mask2, mean, std):
    """``mixup_graph``'s "add adversarial noise": the own images (adv_mask1) and the partners
    ``input1[indices]`` (adv_mask2, with ``noise[indices]``), clamped to [0, 1] in pixel space."""
    input2 = input1[indices].clone()
    if adv_mask1 == 1:
        input1 = torch.clamp(input1 * std + mean + noise, 0, 1)
        input1 = (input1 - mean) / std
    if adv_mask2 == 1:
        input2 = torch.clamp(input2 * std + mean + noise[indices], 0, 1)
        input2 = (input2 - mean) / std
    return input1, input2


def authors_clean_loss(logits, target, clean_lam):
    """``imagenet/train.py``'s clean loss, ``clean_lam * CrossEntropyLoss()(output, target)`` (the
    CIFAR ``main.py`` writes ``2 * clean_lam / num_classes`` next to its BCE-of-softmax mixed loss)."""
    return clean_lam * F.cross_entropy(logits, target)
