"""Linear (LM head) + cross-entropy. The reference materializes the full (N, V) logits; the fused
kernel exists so that nothing of that size is ever allocated."""

import torch
import torch.nn.functional as F


def linear_cross_entropy_reference(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                   ignore_index: int = -100) -> torch.Tensor:
    # hidden (N, D), weight (V, D), targets (N,) -> mean loss over targets != ignore_index
    logits = hidden @ weight.t()  # (N, V)
    return F.cross_entropy(logits.float(), targets, ignore_index=ignore_index)
