"""Model pieces psrl defines itself, shared by the real-weight loaders and the tiny ones (:mod:`psrl.rewards.tiny`):
the LAION aesthetic head, the HPSv3 reward head and the DINO preprocessing. They sit below both, so the tiny
builders never import a reward module (which imports them back)."""
from __future__ import annotations

from torch import Tensor, nn


class LaionAestheticHead(nn.Module):
    """Same layer layout (hence state-dict keys) as the LAION "improved aesthetic predictor"."""

    def __init__(self, dim: int = 768, hidden: tuple[int, int, int, int] = (1024, 128, 64, 16),
                 dropout: tuple[float, float, float] = (0.2, 0.2, 0.1)):
        super().__init__()
        h1, h2, h3, h4 = hidden
        self.layers = nn.Sequential(nn.Linear(dim, h1), nn.Dropout(dropout[0]), nn.Linear(h1, h2),
                                    nn.Dropout(dropout[1]), nn.Linear(h2, h3), nn.Dropout(dropout[2]),
                                    nn.Linear(h3, h4), nn.Linear(h4, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class HPSv3Head(nn.Module):
    """``rm_head``: hidden -> 1024 -> 16 -> 2 (mu, sigma); the layer indices match the checkpoint keys."""

    def __init__(self, hidden_size: int = 3584, hidden: tuple[int, int] = (1024, 16), dropout: float = 0.05):
        super().__init__()
        self.rm_head = nn.Sequential(nn.Linear(hidden_size, hidden[0]), nn.ReLU(), nn.Dropout(dropout),
                                     nn.Linear(hidden[0], hidden[1]), nn.ReLU(), nn.Linear(hidden[1], 2))

    def forward(self, h: Tensor) -> Tensor:
        return self.rm_head(h)


def imagenet_bit_processor(shortest_edge: int, crop: int):
    """The DINO / DINOv2 preprocessing of PSRBench and DreamBench: resize the shorter side to ``shortest_edge``,
    centre-crop ``crop`` x ``crop``, ImageNet mean/std (a ``BitImageProcessorPil``: no torchvision needed)."""
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

    # resample 3 = PIL bicubic: the PSRBench/DreamBench DINO preprocessing (resize shorter side, centre crop)
    return BitImageProcessorPil(size={"shortest_edge": shortest_edge}, crop_size={"height": crop, "width": crop},
                                resample=3, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])


__all__ = ["HPSv3Head", "LaionAestheticHead", "imagenet_bit_processor"]
