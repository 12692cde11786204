"""The LATS training objective as pure functions.

Notation: a step sees ``reals = cat(real_A, real_B)`` ([2N, 3, S, S]) where image ``real_A[i]`` is of
class ``class_A[i]`` and ``real_B[i]`` of class ``class_B[i]`` (never the same class). Every image is
translated to the other image's class and back:

- ``gen = Dec(IdEnc(reals), gen_codes)`` with ``gen_codes = cat(code(class_B), code(class_A))``
- ``rec = Dec(IdEnc(reals), orig_codes)`` with ``orig_codes = cat(code(class_A), code(class_B))``
- ``cyc = Dec(IdEnc(gen), cyc_codes)`` with ``cyc_codes = cat(gen_codes[N:], gen_codes[:N])``

The discriminator has one output per class; a sample is judged only at its target class.

Discriminator:  softplus(-D(reals)[target]) + softplus(D(gen)[target]) + R1
Generator:      softplus(-D(gen)[target]) + 10 |cyc - reals| + 10 |rec - reals|
                + |IdEnc(gen) - IdEnc(reals)| + |AgeEnc(gen) - gen_codes| + |AgeEnc(reals) - orig_codes|

(each |.| a mean absolute difference). Nothing here owns an optimizer or a random state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossWeights:
    """Weights of the objective's terms (the reference's lambdas)."""

    cycle: float = 10.0
    rec: float = 10.0
    identity: float = 1.0
    age: float = 1.0
    r1: float = 10.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Codes:
    """Class codes of one step, each [2N, code_dim]."""

    gen: torch.Tensor   # target classes: cat(code(class_B), code(class_A))
    cyc: torch.Tensor   # back to the source: cat(gen[N:], gen[:N])
    orig: torch.Tensor  # source classes: cat(code(class_A), code(class_B))

    def to(self, device: torch.device | str) -> "Codes":
        return Codes(self.gen.to(device), self.cyc.to(device), self.orig.to(device))


@dataclass(frozen=True)
class GeneratorPass:
    """Everything one generator pass over ``reals`` produces."""

    rec: torch.Tensor        # [2N, 3, S, S]
    gen: torch.Tensor        # [2N, 3, S, S]
    cyc: torch.Tensor        # [2N, 3, S, S]
    id_real: torch.Tensor    # [2N, C, S/4, S/4]
    age_real: torch.Tensor   # [2N, code_dim]
    id_fake: torch.Tensor    # [2N, C, S/4, S/4]
    age_fake: torch.Tensor   # [2N, code_dim]

    def as_tuple(self) -> tuple[torch.Tensor, ...]:
        return (self.rec, self.gen, self.cyc, self.id_real, self.age_real, self.id_fake, self.age_fake)


def make_codes(class_a: torch.Tensor, class_b: torch.Tensor, sigma: float, code_per_class: int,
               n_classes: int, generator: torch.Generator | None = None) -> Codes:
    """Draw the step's noisy class codes (``agetool.ages.class_codes``), for each pair i in the order
    gen_A, gen_B, orig_A, orig_B. class_a, class_b: [N] long. Drawn on the CPU, so a seed gives the
    same codes on every device."""
    from agetool.ages import class_codes

    class_a = torch.as_tensor(class_a, dtype=torch.long).reshape(-1).cpu()
    class_b = torch.as_tensor(class_b, dtype=torch.long).reshape(-1).cpu()
    n = class_a.numel()
    order = torch.stack([class_b, class_a, class_a, class_b], dim=1).reshape(-1)  # [N * 4]
    codes = class_codes(order, sigma, generator, n_classes=n_classes, code_per_class=code_per_class)
    codes = codes.reshape(n, 4, -1)
    gen = torch.cat([codes[:, 0], codes[:, 1]])
    orig = torch.cat([codes[:, 2], codes[:, 3]])
    return Codes(gen=gen, cyc=torch.cat([gen[n:], gen[:n]]), orig=orig)


def generator_pass(generator, reals: torch.Tensor, codes: Codes, checkpoint: bool = False) -> GeneratorPass:
    """Translate, reconstruct and cycle ``reals`` [2N, 3, S, S] with a ``Generator``.

    ``checkpoint`` keeps only block inputs for the backward pass and recomputes the rest (same values,
    a fraction of the memory, about a third more compute).
    """
    id_real = _encode(generator, reals, checkpoint)
    age_real = _encode_age(generator, reals, checkpoint)
    rec = _decode(generator, id_real, generator.latent(codes.orig), checkpoint)
    gen = _decode(generator, id_real, generator.latent(codes.gen), checkpoint)
    id_fake = _encode(generator, gen, checkpoint)
    age_fake = _encode_age(generator, gen, checkpoint)
    cyc = _decode(generator, id_fake, generator.latent(codes.cyc), checkpoint)
    return GeneratorPass(rec, gen, cyc, id_real, age_real, id_fake, age_fake)


def _encode(generator, x: torch.Tensor, checkpoint: bool) -> torch.Tensor:
    if not checkpoint:
        return generator.encode(x)
    from torch.utils.checkpoint import checkpoint_sequential

    layers = generator.id_encoder.encoder
    return checkpoint_sequential(layers, _segments(layers), x, use_reentrant=False)


def _encode_age(generator, x: torch.Tensor, checkpoint: bool) -> torch.Tensor:
    if not checkpoint:
        return generator.encode_age(x)
    from torch.utils.checkpoint import checkpoint_sequential

    layers = generator.age_encoder.encoder
    return checkpoint_sequential(layers, _segments(layers), x, use_reentrant=False).mean(dim=(2, 3))


def _segments(layers) -> int:
    """About sqrt(n) checkpointed segments for n layers: only the segments' inputs are kept, and one
    segment's activations at a time are recomputed in the backward pass."""
    return max(1, round(len(layers) ** 0.5))


def _decode(generator, features: torch.Tensor, w: torch.Tensor, checkpoint: bool) -> torch.Tensor:
    if not checkpoint:
        return generator.decode(features, w)
    from torch.utils.checkpoint import checkpoint as run_checkpointed

    x = features
    for block in generator.decoder.blocks():  # the decoder's forward, one checkpoint per styled block
        x = run_checkpointed(block, x, w, use_reentrant=False)
    return generator.decoder.conv_img(x)


def discriminate(discriminator, x: torch.Tensor, checkpoint: bool = False) -> torch.Tensor:
    """D(x) [B, K, h, w]; ``checkpoint`` recomputes the down blocks in the backward pass (not for R1)."""
    if not checkpoint:
        return discriminator(x)
    from torch.utils.checkpoint import checkpoint_sequential

    from agetool.nn.discriminator import minibatch_stddev

    layers = discriminator.model
    x = checkpoint_sequential(layers, _segments(layers), x, use_reentrant=False)
    return discriminator.gan_head(minibatch_stddev(x))


def translate(generator, reals: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Only the translated images (what the discriminator step needs). [B,3,S,S], [B,D] -> [B,3,S,S]"""
    return generator.decode(generator.encode(reals), generator.latent(codes))


def target_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits [B, K, h, w], targets [B] -> the target class's logit map [B, h, w]."""
    b = torch.arange(logits.shape[0], device=logits.device)
    return logits[b, targets.to(logits.device).long()]


def class_nonsat_loss(logits: torch.Tensor, targets: torch.Tensor, real: bool) -> torch.Tensor:
    """Class-selective non-saturating loss: softplus(-/+ D(x)[b, target_b]) averaged over batch and space."""
    x = target_logits(logits, targets).float()
    return F.softplus(-x).mean() if real else F.softplus(x).mean()


def r1_gradient(real_logits: torch.Tensor, reals: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
    """d mean(D(reals)) / d reals, the mean over all N x K outputs (not only the target class)."""
    (grad,) = torch.autograd.grad(real_logits.float().mean(), reals, create_graph=create_graph)
    return grad


def r1_penalty(grad: torch.Tensor, weight: float = 10.0) -> torch.Tensor:
    """weight * sum(grad^2) / N."""
    return weight * grad.float().pow(2).sum() / grad.shape[0]


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() - b.float()).abs().mean()


def discriminator_fake_loss(fake_logits: torch.Tensor, class_a: torch.Tensor, class_b: torch.Tensor) -> torch.Tensor:
    """softplus(D(gen)[target]) for the translated images, targets cat(class_B, class_A)."""
    return class_nonsat_loss(fake_logits, torch.cat([class_b, class_a]), real=False)


def discriminator_real_losses(real_logits: torch.Tensor, reals: torch.Tensor, class_a: torch.Tensor,
                              class_b: torch.Tensor, weights: LossWeights = LossWeights(), create_graph: bool = True,
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(softplus(-D(reals)[target]), R1, R1's gradient) from D(reals) with ``reals`` requiring grad."""
    loss_real = class_nonsat_loss(real_logits, torch.cat([class_a, class_b]), real=True)
    grad = r1_gradient(real_logits, reals, create_graph=create_graph)
    return loss_real, r1_penalty(grad, weights.r1), grad


def generator_losses(out: GeneratorPass, fake_logits: torch.Tensor, reals: torch.Tensor, codes: Codes,
                     class_a: torch.Tensor, class_b: torch.Tensor,
                     weights: LossWeights = LossWeights()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The generator objective from one ``generator_pass`` and D(gen) ([2N, K, h, w])."""
    loss_adv = class_nonsat_loss(fake_logits, torch.cat([class_b, class_a]), real=True)
    loss_rec = l1(out.rec, reals) * weights.rec
    loss_cyc = l1(out.cyc, reals) * weights.cycle
    loss_id = l1(out.id_fake, out.id_real) * weights.identity
    loss_age = (l1(out.age_fake, codes.gen) + l1(out.age_real, codes.orig)) * weights.age
    total = loss_adv + loss_rec + loss_cyc + loss_id + loss_age
    return total, {"G_adv": loss_adv, "G_rec": loss_rec, "G_cyc": loss_cyc, "G_id": loss_id,
                   "G_age": loss_age, "G": total}
