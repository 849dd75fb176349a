"""The small model and synthetic data both examples train (no downloads)."""
import torch
from torch import nn


class TinyCNN(nn.Module):
    """conv-bn-relu x2, depthwise conv, global pool, linear head: every paramwise rule bites."""

    def __init__(self, num_classes=4):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 1), nn.ReLU())
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.head(self.backbone(x).mean((2, 3)))


def synthetic_dataset(n=256, num_classes=4, size=12, seed=0):
    """Class k = a bright bar at a class-specific position, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, size, size, generator=g)
    band = size // num_classes
    for k in range(num_classes):
        idx = (y == k).nonzero().flatten()
        x[idx, :, k * band:(k + 1) * band, :] += 1.0
    return x, y
