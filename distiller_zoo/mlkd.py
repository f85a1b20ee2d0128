"""Multi-level logit distillation (MLKD): Jin, Wang and Lin, "Multi-Level Logit Distillation",
CVPR 2023.

The teacher's and the student's logits of two views of each image — a weak augmentation (crop,
flip) and a strong one (the same plus RandAugment and Cutout, :mod:`dataset.strong_augment`) —
are softened at several temperatures ("prediction augmentation") and aligned at three levels:

* instance level: Hinton's KL divergence ``KL(p_t || p_s) * T**2`` per temperature, on both
  views (:func:`kd_at`);
* batch level: the ``B x B`` Gram matrices ``P P^T`` of the predictions, squared difference
  summed and divided by ``B`` (:func:`batch_alignment`, the authors' ``bc_loss``);
* class level: the ``C x C`` matrices ``P^T P``, squared difference summed and divided by ``C``
  (:func:`class_alignment`, the authors' ``cc_loss``).

What the authors' released code computes (Jin-Ying/Multi-Level-Logit-Distillation
``KD_ours.py``, commit 5ee473f; the same loss with ``--logit-stand`` in
sunshangquan/logit-standardization-KD ``MLKD.py``, commit f6e5aa5), which this module follows:

* the temperatures are ``[T, 3, 5, 2, 6]``, ``T`` the configured base one (4; 2 with logit
  standardization);
* confidence masks: a sample is kept when the teacher's top probability on the weak view (at
  temperature 1) is at or below the batch median, a class when its summed probability is at or
  below the median over classes (``np.percentile(..., 50)``, linear interpolation). The code
  multiplies the batch-mean loss by the mask and averages (its ``reduce=False`` is commented
  out), so a mask enters as the *fraction* it keeps (about one half), a number per step:
  :func:`confidence_fractions`;
* the weak view's instance terms and its batch-level terms are scaled by the sample fraction,
  its class-level terms by the class fraction; the strong view's instance terms are not scaled;
  the batch and class levels of the strong view are computed there but never added to the
  loss, so they are left out here;
* logit standardization (Sun et al., CVPR 2024) Z-scores the logits of the instance-level KL
  terms only; the masks, the batch and the class levels read the raw logits.

One departure, a slip of the released code: its strong-view instance terms at the last two
temperatures (2 and 6) read the *weak* view's logits. Here they read the strong view's, as the
paper defines the instance level on each view; ``released_slip=True`` reproduces the code
(``tests/test_mlkd.py`` checks both against the authors' numbers).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .kd import standardize_logits

#: The temperatures the released code adds to its base temperature, in its order.
EXTRA_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)
#: How many of the last temperatures the released code's strong-view instance terms take from the
#: weak view (its slip, see the module docstring).
SLIPPED_TEMPERATURES = 2


def kd_at(logit_s: torch.Tensor, logit_t: torch.Tensor, temperature: float) -> torch.Tensor:
    """``KL(softmax(t/T) || softmax(s/T)) * T**2``, summed over classes, averaged over samples."""
    log_p_s = F.log_softmax(logit_s / temperature, dim=1)
    p_t = F.softmax(logit_t / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="none").sum(1).mean() * temperature ** 2


def batch_alignment(logit_s: torch.Tensor, logit_t: torch.Tensor, temperature: float) -> torch.Tensor:
    """Batch level: ``||P_t P_t^T - P_s P_s^T||^2 / B`` of the predictions at ``temperature``."""
    p_s = F.softmax(logit_s / temperature, dim=1)
    p_t = F.softmax(logit_t / temperature, dim=1)
    return ((p_t @ p_t.t() - p_s @ p_s.t()) ** 2).sum() / logit_s.shape[0]


def class_alignment(logit_s: torch.Tensor, logit_t: torch.Tensor, temperature: float) -> torch.Tensor:
    """Class level: ``||P_t^T P_t - P_s^T P_s||^2 / C`` of the predictions at ``temperature``."""
    p_s = F.softmax(logit_s / temperature, dim=1)
    p_t = F.softmax(logit_t / temperature, dim=1)
    return ((p_t.t() @ p_t - p_s.t() @ p_s) ** 2).sum() / logit_s.shape[1]


def fraction_at_or_below_median(values: torch.Tensor) -> torch.Tensor:
    """The fraction of ``values`` at or below their median (linear interpolation between the
    middle two, computed in float64 and compared in the values' dtype, as ``np.percentile`` on the
    host and the comparison with a tensor do), on the device: no host sync."""
    median = torch.quantile(values.detach().double(), 0.5).to(values.dtype)
    return (values.detach() <= median).to(values.dtype).mean()


def confidence_fractions(logit_t_weak: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The fractions of samples and of classes the confidence masks keep: the teacher's top
    probability per sample, and its probability summed over the batch per class, at or below
    their medians (the weak view, temperature 1)."""
    p_t = F.softmax(logit_t_weak.detach(), dim=1)
    return fraction_at_or_below_median(p_t.max(dim=1).values), fraction_at_or_below_median(p_t.sum(dim=0))


@dataclass(frozen=True)
class MLKDTerms:
    """The loss groups, unweighted: cross-entropy on both views (``ce``), the instance, batch and
    class levels (the released code's ``loss_ce``, ``loss_kd``, ``loss_bc``, ``loss_cc`` with
    weights 1)."""

    ce: torch.Tensor
    instance: torch.Tensor
    batch: torch.Tensor
    class_level: torch.Tensor


class MLKDLoss:
    """The MLKD loss of the two views' logits (see the module docstring).

    Args:
        temperatures: the temperatures, the base one first (the released code: ``[T, 3, 5, 2, 6]``).
        logit_stand: Z-score the logits of the instance-level terms (Sun et al., CVPR 2024).
        released_slip: the strong view's instance terms at the last two temperatures read the weak
            view's logits, as the released code does (default: the strong view's, the paper's).
    """

    def __init__(self, temperatures: Sequence[float], logit_stand: bool = False,
                 released_slip: bool = False) -> None:
        self.temperatures = tuple(float(t) for t in temperatures)
        self.logit_stand = logit_stand
        self.released_slip = released_slip

    def __call__(self, logit_s_weak: torch.Tensor, logit_s_strong: torch.Tensor, logit_t_weak: torch.Tensor,
                 logit_t_strong: torch.Tensor, target: torch.Tensor) -> MLKDTerms:
        samples, classes = confidence_fractions(logit_t_weak)
        kd_s_weak, kd_t_weak, kd_s_strong, kd_t_strong = logit_s_weak, logit_t_weak, logit_s_strong, logit_t_strong
        if self.logit_stand:
            kd_s_weak, kd_t_weak = standardize_logits(logit_s_weak), standardize_logits(logit_t_weak)
            kd_s_strong, kd_t_strong = standardize_logits(logit_s_strong), standardize_logits(logit_t_strong)
        slipped = len(self.temperatures) - SLIPPED_TEMPERATURES if self.released_slip else len(self.temperatures)
        instance = batch = class_ = logit_s_weak.new_zeros(())
        for k, temperature in enumerate(self.temperatures):
            instance = instance + samples * kd_at(kd_s_weak, kd_t_weak, temperature)
            if k < slipped:
                instance = instance + kd_at(kd_s_strong, kd_t_strong, temperature)
            else:
                instance = instance + kd_at(kd_s_weak, kd_t_weak, temperature)
            batch = batch + samples * batch_alignment(logit_s_weak, logit_t_weak, temperature)
            class_ = class_ + classes * class_alignment(logit_s_weak, logit_t_weak, temperature)
        ce = F.cross_entropy(logit_s_weak, target) + F.cross_entropy(logit_s_strong, target)
        return MLKDTerms(ce=ce, instance=instance, batch=batch, class_level=class_)
