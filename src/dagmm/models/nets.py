"""Network modules of DAGMM and the builders of the library's architectures.

Plain torch: every ``forward`` runs on any device and exports (``torch.onnx``).
The detectors ask :mod:`dagmm.accel` for the C kernels' fast path and call the
modules themselves where it does not apply.  They compute; they never validate
or batch data.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from .._layout import channels_last
from .features import default_recon_features

__all__ = ["AEGMMNet", "AENet", "ConvDecoder", "ConvEncoder", "build_ae_nets", "build_aegmm_nets", "default_ae_nets",
           "mlp", "paper_kddcup_nets"]


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


_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def build_aegmm_nets(config: dict, n_gmm: int, n_recon_features: int = 2) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Encoder, decoder and estimation network described by an :func:`dagmm.training.auto.aegmm_config` dict."""
    act = _ACTIVATIONS[config["activation"]]
    encoder = mlp(list(config["encoder"]), act)
    decoder = mlp(list(config["decoder"]), act)
    latent, hidden = config["encoder"][-1], config["density"][1]
    density = nn.Sequential(
        nn.Linear(latent + n_recon_features, hidden), nn.Tanh(), nn.Dropout(config["dropout"]),
        nn.Linear(hidden, n_gmm), nn.Softmax(dim=1),
    )
    return encoder, decoder, density


def build_ae_nets(config: dict, feature_shape: Sequence[int]) -> tuple[nn.Module, nn.Module]:
    """Encoder and decoder described by an :func:`dagmm.training.auto.ae_config` dict (rows are flattened and restored)."""
    act = _ACTIVATIONS[config["activation"]]
    encoder = nn.Sequential(nn.Flatten(), mlp(list(config["encoder"]), act))
    decoder = nn.Sequential(mlp(list(config["decoder"]), act), nn.Unflatten(1, tuple(feature_shape)))
    return encoder, decoder


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

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_recon, z)`` without the estimation network (all that scoring needs)."""
        latent = self.encoder(x)
        x_recon = self.decoder(latent)
        z = torch.cat([latent.flatten(1), self.recon_features(x, x_recon)], dim=1)  # (N, L + R)
        return x_recon, z

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x_recon, z = self.encode(x)
        return x_recon, z, self.gmm_density(z)


class AENet(nn.Module):
    """Plain auto-encoder: ``forward(x) = decoder(encoder(x))``, same shape as ``x``."""

    def __init__(self, encoder_net: nn.Module, decoder_net: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder_net
        self.decoder = decoder_net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class ConvEncoder(nn.Module):
    """Two stride-2 convolutions and a linear map to a ``latent_dim`` code.

    Takes images in the layout given (``channels_last=True`` for (N, H, W, C))
    and returns (N, latent_dim).
    """

    def __init__(self, image_shape: Sequence[int], channels_last: bool, latent_dim: int = 32,
                 widths: Sequence[int] = (32, 64)) -> None:
        super().__init__()
        c, h, w = image_shape
        self._config = _conv_config(image_shape, channels_last, latent_dim, widths)
        self.channels_last = channels_last
        self.conv = nn.Sequential(
            nn.Conv2d(c, widths[0], 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(widths[0], widths[1], 3, stride=2, padding=1), nn.ReLU(),
        )
        self.code = nn.Linear(widths[1] * _quarter(h) * _quarter(w), latent_dim)

    def config(self) -> dict:
        """Constructor arguments as JSON values; ``ConvEncoder(**enc.config())`` rebuilds it."""
        return dict(self._config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)  # (N, C, H, W)
        return self.code(self.conv(x).flatten(1))  # (N, L)


class ConvDecoder(nn.Module):
    """Mirror of :class:`ConvEncoder`: linear map, two stride-2 transposed convolutions.

    The transposed convolutions give ``4 * ceil(H / 4)`` rows, which is cropped
    to ``H`` (same for ``W``); the output is in the input's layout and linear,
    so any scaling of the data can be reconstructed.
    """

    def __init__(self, image_shape: Sequence[int], channels_last: bool, latent_dim: int = 32,
                 widths: Sequence[int] = (32, 64)) -> None:
        super().__init__()
        c, h, w = image_shape
        self._config = _conv_config(image_shape, channels_last, latent_dim, widths)
        self.image_shape = (c, h, w)
        self.channels_last = channels_last
        self.grid = (widths[1], _quarter(h), _quarter(w))
        self.expand = nn.Sequential(nn.Linear(latent_dim, math.prod(self.grid)), nn.ReLU())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(widths[1], widths[0], 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(widths[0], c, 4, stride=2, padding=1),
        )

    def config(self) -> dict:
        """Constructor arguments as JSON values; ``ConvDecoder(**dec.config())`` rebuilds it."""
        return dict(self._config)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        _, h, w = self.image_shape
        x = self.deconv(self.expand(z).reshape(-1, *self.grid))  # (N, C, 4 ceil(H/4), 4 ceil(W/4))
        x = x[:, :, :h, :w]  # (N, C, H, W)
        return x.permute(0, 2, 3, 1) if self.channels_last else x  # layout of the input


def _conv_config(image_shape: Sequence[int], channels_last: bool, latent_dim: int, widths: Sequence[int]) -> dict:
    return {"image_shape": [int(s) for s in image_shape], "channels_last": bool(channels_last),
            "latent_dim": int(latent_dim), "widths": [int(w) for w in widths]}


def _quarter(n: int) -> int:
    """Size after two stride-2, padding-1, kernel-3 convolutions."""
    return math.ceil(math.ceil(n / 2) / 2)


def default_ae_nets(feature_shape: Sequence[int], latent_dim: int | None = None) -> tuple[nn.Module, nn.Module]:
    """Encoder and decoder for data whose rows have shape ``feature_shape``.

    ``(F,)`` rows get an MLP ``F-64-32-L`` with ReLU and its mirror, ``L =
    max(2, F // 4)`` unless given.  ``(H, W, C)`` or ``(C, H, W)`` rows (the
    layout is read by :func:`dagmm._layout.channels_last`) get the small
    convolutional pair :class:`ConvEncoder` / :class:`ConvDecoder` with
    ``L = 32``.  Any other rows are flattened, passed through the MLP and
    reshaped back.
    """
    feature_shape = tuple(int(s) for s in feature_shape)
    if len(feature_shape) == 3:
        last = channels_last((0, *feature_shape))
        h, w, c = feature_shape if last else (*feature_shape[1:], feature_shape[0])
        latent = latent_dim or 32
        return (ConvEncoder((c, h, w), last, latent), ConvDecoder((c, h, w), last, latent))
    n = math.prod(feature_shape)
    latent = latent_dim or max(2, n // 4)
    encoder = nn.Sequential(nn.Flatten(), mlp([n, 64, 32, latent], nn.ReLU))
    decoder = nn.Sequential(mlp([latent, 32, 64, n], nn.ReLU), nn.Unflatten(1, feature_shape))
    return encoder, decoder
