"""Pick the compute device for deep models: GPU when present, unless the config forces CPU."""
from __future__ import annotations

__all__ = ["torch_device", "DEVICES"]

DEVICES = ("auto", "cpu", "cuda")


def torch_device(device: str = "auto") -> str:
    """``"cuda"`` when asked for or when ``auto`` finds a CUDA GPU, else ``"cpu"``."""
    if device == "cpu":
        return "cpu"
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was requested but torch sees no CUDA GPU; use device=auto or cpu")
    return "cuda" if torch.cuda.is_available() else "cpu"
