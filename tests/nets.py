"""Small networks the study tests share."""
import torch


class LinearDrift(torch.nn.Module):
    """v(x, t) = A·x + b on the flattened pixels: a generalising net whose samples differ in energy."""

    def __init__(self, dim: int):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.a = torch.nn.Parameter(0.3 * torch.randn(dim, dim, generator=g))
        self.b = torch.nn.Parameter(0.5 * torch.randn(dim, generator=g))

    def forward(self, x, t):
        return (x.flatten(1) @ self.a.T + self.b).reshape(x.shape)
