"""Calibration: does a predicted probability of 0.9 come true 9 times in 10? Expected calibration
error (Guo et al., 2017: 15 equal-width confidence bins), the reliability diagram's bins, and
temperature scaling (one scalar T fitted on validation logits by minimising the NLL; top-1 is
unchanged, the probabilities become softmax(logits / T))."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)


@dataclass
class Reliability:
    """Per confidence bin: mean confidence, accuracy and sample count (empty bins: 0)."""

    confidence: list[float]
    accuracy: list[float]
    count: list[int]
    ece: float

    def to_dict(self) -> dict:
        return asdict(self)


def reliability(logits: torch.Tensor, labels: torch.Tensor, bins: int = BINS) -> Reliability:
    probabilities = F.softmax(logits.float(), dim=1)
    confidence, predicted = probabilities.max(dim=1)
    correct = (predicted == labels).float()
    index = (confidence * bins).long().clamp(max=bins - 1)
    count = torch.bincount(index, minlength=bins)
    total_confidence = torch.bincount(index, confidence, minlength=bins)
    total_correct = torch.bincount(index, correct, minlength=bins)
    safe = count.clamp(min=1)
    ece = ((total_confidence - total_correct).abs().sum() / max(1, len(labels))).item()
    return Reliability(
        (total_confidence / safe).tolist(), (total_correct / safe).tolist(), count.tolist(), ece
    )


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """sum over bins of |accuracy - confidence| weighted by the bin's share of samples."""
    return reliability(logits, labels).ece


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 that minimises the NLL of softmax(logits / T) (LBFGS on log T)."""
    logits, labels = logits.float().detach().clone(), labels.long().clone()  # out of inference mode
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(*TEMPERATURE_RANGE))
