"""RMSNorm. The plain-PyTorch reference below is the ground truth for the Triton kernel's tests and
is what the model's `kernels="torch"` path runs."""

import torch


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    # Hugging Face LlamaRMSNorm: normalize in fp32, cast back to x's dtype, then scale.
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * y.to(x.dtype)
