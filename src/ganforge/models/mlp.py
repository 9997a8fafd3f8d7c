"""The vanilla GAN (Goodfellow et al. 2014): MLP generator and discriminator on flat pixels.

Minimax discriminator loss with the non-saturating generator loss. Any image side works.

    G: z (N, latent) -> (N, 4w) -> (N, 8w) -> (N, 16w) -> (N, C*H*W) -> (N, C, H, W)
    D: x (N, C*H*W)  -> (N, 16w) -> (N, 8w) -> (N, 4w) -> (N,)
"""

from __future__ import annotations

from torch import Tensor, nn

from ganforge.models.base import BCEVariant, init_dcgan_weights


class MLPGenerator(nn.Module):
    def __init__(self, latent_dim: int, image_size: int, channels: int, g_width: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.shape = (channels, image_size, image_size)
        w = g_width
        self.net = nn.Sequential(
            nn.Linear(latent_dim, 4 * w),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(4 * w, 8 * w),
            nn.BatchNorm1d(8 * w),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(8 * w, 16 * w),
            nn.BatchNorm1d(16 * w),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(16 * w, channels * image_size * image_size),
            nn.Tanh(),
        )
        init_dcgan_weights(self)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.net(z).view(-1, *self.shape)  # (N, C, H, W)


class MLPDiscriminator(nn.Module):
    def __init__(self, image_size: int, channels: int, d_width: int) -> None:
        super().__init__()
        w = d_width
        self.net = nn.Sequential(
            nn.Flatten(),  # (N, C*H*W)
            nn.Linear(channels * image_size * image_size, 16 * w),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(16 * w, 8 * w),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(8 * w, 4 * w),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(4 * w, 1),
        )
        init_dcgan_weights(self)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.net(x).flatten()  # (N,)


class MLPGAN(BCEVariant):
    name = "mlp"
    image_sizes = tuple(range(8, 65))  # flat pixels: any side in range
    generator_cls = MLPGenerator
    discriminator_cls = MLPDiscriminator
