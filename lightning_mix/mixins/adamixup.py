"""AdaMixUpMixin: AdaMixUp (Guo, Mao and Zhang, "MixUp as Locally Linear Out-Of-Manifold Regularization", AAAI 2019).

A policy region generator reads each pair and outputs a mixing region ``(alpha, delta)``; the pair's
ratio is drawn uniformly in ``[alpha, alpha + delta]``. An intrusion discriminator, a small head on the
classifier's trunk, tells original samples from mixed ones. Classifier, generator and discriminator are
trained together on one loss. The step follows ``ResNet_Cifar_AdaMixup.build_graph`` of the authors'
TensorFlow/tensorpack code (SITE5039/AdaMixUp, ``GitHub.AdaMixup.AAAI.MNIST.Cifar.py``, commit 9e47ba0).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_mix.callbacks._batch_access import BatchKey
from lightning_mix.callbacks._rng import CounterStream
from lightning_mix.losses import soft_cross_entropy
from lightning_mix.mixins._mixin_state import StreamCheckpointMixin, lazy_stream

__all__ = ["AdaMixUpMixin", "adamixup_intrusion_loss", "adamixup_lam"]

_HEADS = ("adamixup_policy_head", "adamixup_discriminator", "adamixup_policy_trunk")


def adamixup_lam(region: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The ratios ``lam = alpha + u * delta`` from the generator's softmax ``region`` (P, 3) and ``u`` ~ U(0, 1) (P,).

    ``region[:, 0]`` is alpha, ``region[:, 1]`` is delta and ``region[:, 2]`` is discarded (the authors'
    third softmax output), so ``0 <= alpha <= lam <= alpha + delta <= 1``. Differentiable in ``region``
    (the reparameterisation the authors use). ``lam`` is each sample's own share.
    """
    return region[:, 0] + uniform.to(region.dtype) * region[:, 1]


def adamixup_intrusion_loss(logits: torch.Tensor, intruding: torch.Tensor) -> torch.Tensor:
    """The discriminator's loss: softmax cross-entropy of its two logits (B, 2), mean over the batch (float32).

    Column 1 is "intruding" (a mixed sample) and column 0 "original"; ``intruding`` (B,) is 1 for mixed
    samples and 0 for originals. This equals the binary cross-entropy of the logit difference
    ``logits[:, 1] - logits[:, 0]``, which is how it is computed.
    """
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits[:, 1] - logits[:, 0], intruding.float())


def _normal_init_(module: nn.Module, std: float) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)


class AdaMixUpMixin(StreamCheckpointMixin):
    """Adds AdaMixUp's training step to a LightningModule; you supply the network and the optimiser.

    **The contract** (what the mixin needs from your module):

    * ``features_method`` (default ``"forward_features"``): maps a batch of inputs to the trunk's
      features, ``(B, F)`` or a feature map ``(B, F, *spatial)``, which the mixin's heads read averaged over
      the spatial dimensions; ``feature_dim`` is F.
    * ``head_method`` (default ``"forward_head"``): maps those features to class logits, so that
      ``head(features(x))`` is your classifier. Labels are class indices (B,) or dense targets (B, C).
    * ``policy_trunk``: the generator's own network from inputs to features ``(B, P)`` or ``(B, P, *spatial)``,
      ``policy_feature_dim`` = P. The authors give the generator a second network of the classifier's
      architecture with its own weights: pass a fresh instance of your trunk (the demo
      :class:`~lightning_mix.demos.AdaMixUpSmallCNN` does). ``None`` makes the generator read the
      classifier's trunk (``features_method``): cheaper, and a departure from the authors.
    * ``configure_optimizers`` must optimise ``self.parameters()``, which include the generator
      (``adamixup_policy_trunk``, ``adamixup_policy_head``) and the discriminator head
      (``adamixup_discriminator``), as the authors train all with one optimiser; checked at fit start.

    Example::

        import copy
        from torch import nn
        from lightning_mix.demos import SmallCNN
        from lightning_mix.mixins import AdaMixUpMixin

        class AdaMixUpCNN(AdaMixUpMixin, SmallCNN):
            def __init__(self, width: int = 32):
                super().__init__(width=width)
                # the generator's own network of the same architecture (fresh weights)
                trunk = copy.deepcopy(nn.Sequential(self.block1, self.block2, self.block3, self.pool))
                for layer in trunk.modules():
                    if hasattr(layer, "reset_parameters"):
                        layer.reset_parameters()
                self.configure_adamixup(feature_dim=4 * width, policy_trunk=trunk)

            def forward_features(self, x):
                return self.pool(self.block3(self.block2(self.block1(x)))).flatten(1)

            def forward_head(self, features):
                return self.head(features)

    **Each training step** (batch ``[x, y]`` of B >= 2 samples), as the authors' ``build_graph``:

    1. a permutation ``perm`` of the batch is drawn; the first ``n = B // 2`` samples ``x1 = x[:n]``
       are mixed with their partners ``x2 = x[perm[:n]]``; the other ``B - n`` samples are kept
       "unseen" for the discriminator;
    2. the generator reads ``(e1 * x1 + e2 * x2) / 2`` (``e1``, ``e2``: element-wise standard normal
       noise truncated at two standard deviations), and its head ``Linear(P, 100) -> Linear(100, 3)``
       (no activation between, as the authors) gives through a softmax ``(alpha, delta, discarded)``;
       ``lam = alpha + u * delta``, ``u ~ U(0, 1)`` per pair (:func:`adamixup_lam`);
    3. ``x_mix = lam x1 + (1 - lam) x2`` with the label ``lam y1 + (1 - lam) y2``; the classifier
       loss is the mean cross-entropy over ``[x_mix, x1]`` (mixed samples and their originals, n each);
    4. the discriminator head ``Linear(F, 10) -> Linear(10, 2)`` on the classifier's trunk reads
       ``[x[n:], x1, x_mix]`` in a second forward, with "original" for the first B and "intruding"
       for the n mixed ones (:func:`adamixup_intrusion_loss`);
    5. ``loss = classification_loss + intrusion_weight * intrusion_loss``.

    Nothing is detached, as in the authors' graph: the generator learns from both losses (through
    ``x_mix`` and, in the classification loss, through the mixed label); the discriminator head only
    from the intrusion loss; your classification head only from the classification loss; your trunk
    from both. The generator and discriminator heads start with weights drawn from N(0, 1e-3^2) and zero
    biases (the authors' initialiser), so the first regions are about ``[1/3, 2/3]``.

    **Randomness**: the permutation, the noise and ``u`` come from the mixin's seeded stream (one
    position per ``training_step`` call, i.e. per micro-batch, saved in checkpoints under
    ``checkpoint["adamixup"]``), so a resumed fit draws what an uninterrupted one draws. DDP ranks
    draw differently.

    **Checkpoint**: generator and discriminator are submodules (weights in ``state_dict``, moments in
    your optimiser's state). ``on_save_checkpoint``/``on_load_checkpoint``/``on_fit_start`` call
    ``super()``; keep calling ``super()`` if you override them.

    **Averaging callbacks** (EMA, SWA, ModelSoup) average ``state_dict``, so the generator and the
    discriminator are averaged with the classifier; evaluation only runs your classifier, so their
    averages are never used, and a resumed fit continues from the trained weights
    (``current_model_state``).

    Departures from the authors (deliberate): the discriminator's two logits are "original" (0) and
    "intruding" (1), where the authors' one-hot puts originals in column 1 (a relabelling; the loss is
    the same); the authors shuffle each of the two forward batches before the forward, which changes
    no loss and is left out; the truncated normal noise is drawn by inverse CDF
    (``torch.nn.init.trunc_normal_``), where TensorFlow redraws: the same distribution.
    """

    stream_name = "adamixup"  # the draw stream, saved under checkpoint["adamixup"]
    #: Tells the mixing callbacks that this module mixes its own batches (they refuse it at setup).
    mixes_own_batches = "mixes the clean batch itself in training_step (with its learned mixing policy)"

    adamixup_feature_dim: int = 0
    adamixup_policy_feature_dim: int = 0
    adamixup_features_method: str = "forward_features"
    adamixup_head_method: str = "forward_head"
    adamixup_intrusion_weight: float = 1.0
    adamixup_seed: int | None = None
    adamixup_input_key: BatchKey = 0
    adamixup_target_key: BatchKey = 1

    def configure_adamixup(
        self,
        feature_dim: int,
        policy_trunk: nn.Module | None = None,
        policy_feature_dim: int | None = None,
        features_method: str = "forward_features",
        head_method: str = "forward_head",
        policy_hidden: int = 100,
        discriminator_hidden: int = 10,
        head_init_std: float = 1e-3,
        intrusion_weight: float = 1.0,
        seed: int | None = None,
        input_key: BatchKey = 0,
        target_key: BatchKey = 1,
    ) -> None:
        """Set AdaMixUp's options and build its heads (call it in ``__init__``, after ``super().__init__()``).

        The defaults are the authors' (``GitHub.AdaMixup.AAAI.MNIST.Cifar.py``).

        Args:
            feature_dim: F, the channel dimension of ``features_method``'s output.
            policy_trunk: the generator's network from inputs to features; None reads the classifier's trunk.
            policy_feature_dim: the channel dimension of ``policy_trunk``'s output (default ``feature_dim``).
            features_method: name of the method mapping inputs to the trunk's features.
            head_method: name of the method mapping those features to class logits.
            policy_hidden: width of the generator head's hidden linear layer (authors: 100).
            discriminator_hidden: width of the discriminator head's hidden linear layer (authors: the
                number of classes, 10 on MNIST and CIFAR-10).
            head_init_std: standard deviation of the heads' initial weights (authors: 1e-3).
            intrusion_weight: weight of the intrusion loss (authors: 1, a plain sum).
            seed: seed of the mixing stream; None takes ``torch.initial_seed()`` at the first step.
            input_key: index or key of the inputs in the batch.
            target_key: index or key of the labels in the batch.
        """
        if not isinstance(self, nn.Module) or "_modules" not in self.__dict__:
            raise RuntimeError("Call configure_adamixup in __init__ after super().__init__(), on a LightningModule.")
        for name, method in (("features_method", features_method), ("head_method", head_method)):
            if not callable(getattr(self, method, None)):
                raise ValueError(
                    f"{name} {method!r} is not a method of {type(self).__name__}; define it or pass the name "
                    "of the method that does this job."
                )
        policy_feature_dim = feature_dim if policy_feature_dim is None else policy_feature_dim
        for name, value in (
            ("feature_dim", feature_dim),
            ("policy_feature_dim", policy_feature_dim),
            ("policy_hidden", policy_hidden),
            ("discriminator_hidden", discriminator_hidden),
        ):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}.")
        if not head_init_std > 0:
            raise ValueError(f"head_init_std must be positive, got {head_init_std}.")
        if not intrusion_weight > 0:
            raise ValueError(
                f"intrusion_weight must be positive (the discriminator learns only through it), got {intrusion_weight}."
            )
        if policy_trunk is not None and not isinstance(policy_trunk, nn.Module):
            raise TypeError(f"policy_trunk must be an nn.Module or None, got {type(policy_trunk).__name__}.")
        self.adamixup_feature_dim = int(feature_dim)
        self.adamixup_policy_feature_dim = int(policy_feature_dim)
        self.adamixup_features_method = features_method
        self.adamixup_head_method = head_method
        self.adamixup_intrusion_weight = float(intrusion_weight)
        self.adamixup_seed = seed
        self.adamixup_input_key = input_key
        self.adamixup_target_key = target_key
        self.adamixup_policy_trunk = policy_trunk
        self.adamixup_policy_head = nn.Sequential(
            nn.Linear(int(policy_feature_dim), int(policy_hidden)), nn.Linear(int(policy_hidden), 3)
        )
        self.adamixup_discriminator = nn.Sequential(
            nn.Linear(int(feature_dim), int(discriminator_hidden)), nn.Linear(int(discriminator_hidden), 2)
        )
        _normal_init_(self.adamixup_policy_head, head_init_std)
        _normal_init_(self.adamixup_discriminator, head_init_std)

    # -- checks ----------------------------------------------------------------------------------

    def _adamixup_heads(self) -> list[tuple[str, nn.Module]]:
        if getattr(self, "adamixup_policy_head", None) is None:
            raise RuntimeError("AdaMixUpMixin: call self.configure_adamixup(feature_dim=...) in __init__.")
        return [(name, getattr(self, name)) for name in _HEADS if getattr(self, name, None) is not None]

    def _adamixup_check(self) -> None:
        heads = self._adamixup_heads()
        if not self.automatic_optimization:
            raise RuntimeError(
                "AdaMixUpMixin uses automatic optimisation (one optimiser, as the authors); "
                "set automatic_optimization=True."
            )
        optimised = {id(p) for opt in self.trainer.optimizers for group in opt.param_groups for p in group["params"]}
        missing = [f"{name}.{n}" for name, head in heads for n, p in head.named_parameters() if id(p) not in optimised]
        if missing:
            raise ValueError(
                f"AdaMixUp's parameters {missing[:6]} are in no optimiser; optimise self.parameters() in "
                "configure_optimizers (generator and discriminator train with the classifier, as the authors)."
            )

    def on_fit_start(self) -> None:
        parent = getattr(super(), "on_fit_start", None)
        if parent is not None:
            parent()
        self._adamixup_check()

    # -- randomness --------------------------------------------------------------------------------

    def _adamixup_stream(self) -> CounterStream:
        return lazy_stream(self, "adamixup", self.adamixup_seed)

    def adamixup_draw(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """This step's draws from the seeded stream (one stream position per call), for a batch ``inputs``.

        ``perm`` (B,), a permutation of the batch (the partner of pair ``i`` is ``perm[i]``); ``noise``
        ``(2, n, *sample_shape)``, standard normal truncated to [-2, 2], the generator's input noise for
        ``x1`` and ``x2``; ``uniform`` (n,), the U(0, 1) draws placing each lam in its region.
        """
        batch_size = inputs.shape[0]
        if batch_size < 2:
            raise ValueError(
                f"AdaMixUp needs at least 2 samples per batch (half are mixed, half kept unseen), got {batch_size}."
            )
        pairs = batch_size // 2
        stream = self._adamixup_stream()
        device = inputs.device
        generator = stream.generator(device)
        perm = torch.randperm(batch_size, generator=generator, device=device)
        noise = torch.empty((2, pairs, *inputs.shape[1:]), device=device, dtype=torch.float32)
        nn.init.trunc_normal_(noise, mean=0.0, std=1.0, a=-2.0, b=2.0, generator=generator)
        uniform = torch.rand((pairs,), generator=generator, device=device)
        stream.advance()
        return {"perm": perm, "noise": noise, "uniform": uniform}

    # -- the networks ------------------------------------------------------------------------------

    @staticmethod
    def _adamixup_vector(features: torch.Tensor) -> torch.Tensor:
        return features.flatten(2).mean(-1) if features.ndim > 2 else features

    def adamixup_features(self, inputs: torch.Tensor) -> torch.Tensor:
        """The classifier trunk's features (``features_method``)."""
        return getattr(self, self.adamixup_features_method)(inputs)

    def adamixup_head(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits from trunk features (``head_method``)."""
        return getattr(self, self.adamixup_head_method)(features)

    def adamixup_region(self, gate_inputs: torch.Tensor) -> torch.Tensor:
        """The generator's softmax (n, 3), float32: ``(alpha, delta, discarded)`` for each pair's gate input."""
        self._adamixup_heads()
        trunk = self.adamixup_policy_trunk
        features = trunk(gate_inputs) if trunk is not None else self.adamixup_features(gate_inputs)
        return self.adamixup_policy_head(self._adamixup_vector(features)).float().softmax(-1)

    # -- the step ------------------------------------------------------------------------------------

    def adamixup_losses(self, inputs: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """One AdaMixUp step's losses and what they were computed from.

        Returns ``loss``, ``classification_loss``, ``intrusion_loss``, ``lam`` (n,), ``region`` (n, 3),
        ``index`` (n,: the partners of ``x[:n]``), ``mixed`` (the mixed inputs), ``logits`` (the
        classifier's logits on ``[x_mix, x1]``), ``intrusion_logits`` (B + n, 2) and the draws.
        """
        draws = self.adamixup_draw(inputs)
        pairs = inputs.shape[0] // 2
        index = draws["perm"][:pairs]
        x1, x2 = inputs[:pairs], inputs.index_select(0, index)
        noise = draws["noise"].to(inputs.dtype)
        region = self.adamixup_region((noise[0] * x1 + noise[1] * x2) / 2)
        lam = adamixup_lam(region, draws["uniform"])
        share = lam.view(-1, *([1] * (inputs.ndim - 1))).to(inputs.dtype)
        mixed = x1 * share + x2 * (1 - share)

        logits = self.adamixup_head(self.adamixup_features(torch.cat([mixed, x1])))
        per_sample = soft_cross_entropy(logits, torch.cat([labels[:pairs], labels[:pairs]]), reduction="none")
        partner = soft_cross_entropy(logits[:pairs], labels.index_select(0, index), reduction="none")
        mixed_ce = torch.lerp(partner, per_sample[:pairs], lam.to(partner.dtype))  # lam CE(y1) + (1 - lam) CE(y2)
        classification_loss = torch.cat([mixed_ce, per_sample[pairs:]]).mean()

        binary = torch.cat([inputs[pairs:], x1, mixed])
        intrusion_logits = self.adamixup_discriminator(self._adamixup_vector(self.adamixup_features(binary)))
        intruding = torch.cat([inputs.new_zeros(inputs.shape[0]), inputs.new_ones(pairs)])
        intrusion_loss = adamixup_intrusion_loss(intrusion_logits, intruding)
        loss = classification_loss + self.adamixup_intrusion_weight * intrusion_loss
        return {
            "loss": loss,
            "classification_loss": classification_loss,
            "intrusion_loss": intrusion_loss,
            "lam": lam,
            "region": region,
            "index": index,
            "mixed": mixed,
            "logits": logits,
            "intrusion_logits": intrusion_logits,
            **draws,
        }

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, labels = batch[self.adamixup_input_key], batch[self.adamixup_target_key]
        out = self.adamixup_losses(inputs, labels)
        pairs = inputs.shape[0] // 2
        originals = labels[:pairs]
        main_label = originals.argmax(-1) if originals.is_floating_point() else originals
        acc = (out["logits"][pairs:].argmax(-1) == main_label).float().mean()
        self.log("train/loss", out["loss"], prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
        for key in ("classification_loss", "intrusion_loss"):
            self.log(f"train/{key}", out[key], on_step=False, on_epoch=True, sync_dist=True)
        self.log("train/lam", out["lam"].mean(), on_step=False, on_epoch=True, sync_dist=True)
        self.log("train/acc", acc, on_step=False, on_epoch=True, sync_dist=True)
        return out["loss"]
