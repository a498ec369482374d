"""A fixed, exactly invertible "autoencoder" so the real WanPipeline denoises in pixel space.

Why pixel space: a VAE of our own would cost hours of CPU training and add its own error to every
comparison; a lossless space-to-depth keeps the whole pipeline (prompt -> text encoder -> denoising loop ->
decode -> frames) real while every difference between schedules comes from the denoisers alone.

Layout (Wan's causal convention, ``scale_factor_temporal=2``): a clip of ``2T - 1`` frames becomes ``T``
latent frames; the first frame is repeated to fill latent frame 0, then frames ``(2k - 1, 2k)`` fill latent
frame ``k``. Each latent frame stacks a 2-frame x 4 x 4-pixel block into 32 channels at 1/4 the resolution,
normalised by the dataset's pixel mean and standard deviation. Decoding inverts this exactly (the two copies
of frame 0 are averaged).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


class PixelShuffleVAE(ModelMixin, ConfigMixin):
    """Lossless space/time-to-depth with the config fields WanPipeline reads from a Wan VAE."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 1,
        scale_factor_spatial: int = 4,
        scale_factor_temporal: int = 2,
        pixel_mean: float = 0.0,
        pixel_std: float = 1.0,
    ) -> None:
        super().__init__()
        z_dim = in_channels * scale_factor_temporal * scale_factor_spatial**2
        # WanPipeline de-normalises with latents_mean / latents_std before decode; we normalise in encode.
        self.register_to_config(z_dim=z_dim, latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim)
        # Persistent so save_pretrained writes a weights file, which from_pretrained requires.
        self.register_buffer("pixel_stats", torch.tensor([pixel_mean, pixel_std]))

    def encode(self, video: torch.Tensor, return_dict: bool = True):
        """``(B, C, 2T-1, H, W)`` pixels in [-1, 1] -> normalised latents ``(B, z_dim, T, H/s, W/s)``."""
        c, s, t = self.config.in_channels, self.config.scale_factor_spatial, self.config.scale_factor_temporal
        b, _, frames, h, w = video.shape
        if (frames - 1) % t or h % s or w % s:
            raise ValueError(
                f"video of {frames} frames at {h}x{w} does not fit the {t}x{s}x{s} pixel shuffle."
            )
        video = torch.cat([video[:, :, :1].expand(-1, -1, t - 1, -1, -1), video], dim=2)
        blocks = video.reshape(b, c, video.shape[2] // t, t, h // s, s, w // s, s)
        latents = blocks.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, -1, video.shape[2] // t, h // s, w // s)
        latents = (latents - self.config.pixel_mean) / self.config.pixel_std
        return (
            SimpleNamespace(
                latent_dist=SimpleNamespace(mode=lambda: latents, sample=lambda generator=None: latents)
            )
            if return_dict
            else (latents,)
        )

    def decode(self, latents: torch.Tensor, return_dict: bool = True):
        """Inverse of :meth:`encode`: ``(B, z_dim, T, h, w)`` -> pixels ``(B, C, 2T-1, h*s, w*s)``."""
        c, s, t = self.config.in_channels, self.config.scale_factor_spatial, self.config.scale_factor_temporal
        b, _, frames, h, w = latents.shape
        pixels = latents * self.config.pixel_std + self.config.pixel_mean
        blocks = pixels.reshape(b, c, t, s, s, frames, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        video = blocks.reshape(b, c, frames * t, h * s, w * s)
        first = video[:, :, :t].mean(dim=2, keepdim=True)
        video = torch.cat([first, video[:, :, t:]], dim=2)
        return SimpleNamespace(sample=video) if return_dict else (video,)
