"""Network modules of DAGMM.  They compute; they never validate or batch data."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .features import default_recon_features

__all__ = ["AEGMMNet", "mlp", "paper_kddcup_nets"]


def mlp(widths: list[int], activation: type[nn.Module] = nn.Tanh, last_activation: bool = False) -> nn.Sequential:
    """Fully connected stack ``widths[0] -> ... -> widths[-1]``.

    Parameters
    ----------
    widths : list of int
        Layer widths, input first.
    activation : nn.Module class, default ``nn.Tanh``
        Activation after every hidden layer.
    last_activation : bool, default False
        Whether the last layer is followed by the activation too.
    """
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2 or last_activation:
            layers.append(activation())
    return nn.Sequential(*layers)


def paper_kddcup_nets(
    n_features: int, n_gmm: int = 4, n_recon_features: int = 2, dropout: float = 0.5
) -> tuple[nn.Sequential, nn.Sequential, nn.Sequential]:
    """The paper's KDDCUP architecture for ``n_features`` inputs.

    Encoder ``F-60-30-10-1`` (tanh, last layer linear), the mirror decoder,
    and the estimation network ``(1 + R)-10-Dropout-K`` ending in a softmax.
    """
    encoder = mlp([n_features, 60, 30, 10, 1])
    decoder = mlp([1, 10, 30, 60, n_features])
    density = nn.Sequential(
        nn.Linear(1 + n_recon_features, 10),
        nn.Tanh(),
        nn.Dropout(dropout),
        nn.Linear(10, n_gmm),
        nn.Softmax(dim=1),
    )
    return encoder, decoder, density


class AEGMMNet(nn.Module):
    """Compression network plus estimation network.

    ``forward(x)`` returns ``(x_recon, z, gamma)`` where ``z`` is the latent
    code concatenated with the reconstruction features, shape (N, L + R), and
    ``gamma`` the (N, K) soft memberships from the density net.
    """

    def __init__(
        self,
        encoder_net: nn.Module,
        decoder_net: nn.Module,
        gmm_density_net: nn.Module,
        recon_features: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = default_recon_features,
    ) -> None:
        super().__init__()
        self.encoder = encoder_net
        self.decoder = decoder_net
        self.gmm_density = gmm_density_net
        self.recon_features = recon_features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        latent = self.encoder(x)
        x_recon = self.decoder(latent)
        z = torch.cat([latent.flatten(1), self.recon_features(x, x_recon)], dim=1)  # (N, L + R)
        gamma = self.gmm_density(z)
        return x_recon, z, gamma
