"""The DVA noise estimator eps(x_t, t, z_face): a BeatGANs/DiffAE UNet with two AdaGNs per ResBlock.

Reference implementation, fp32 and eager. Module names and sub-module indices follow the
official checkpoint (`dva_state_dict_keys.txt`) so weights load by name, which is why some
parameter-free layers (SiLU, Dropout) are kept as Sequential members.

What differs from DiffAE (and matters for exactness):
- every ResBlock has an extra Conv3x3 + GroupNorm between the time AdaGN and the identity AdaGN;
- the identity AdaGN has scale *and* shift (`cond_emb_layers` outputs 2C);
- the timestep embedding is cos-first and gets the original timestep (0..999).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fvedit.config import UNetConfig


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 and cast back, as the official `GroupNorm32`."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    return GroupNorm32(min(32, channels), channels)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, **cos first** as official."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class Resample(nn.Module):
    """Parameter-free 2x resampling used inside up/down ResBlocks (nearest up, avg-pool down)."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.mode == "down":
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return x


class ResBlock(nn.Module):
    """ResBlock with time AdaGN then identity (z_face) AdaGN, each a scale and a shift.

    out_layers indices: 0 GN, 1 SiLU, 2 Conv (DVA's extra conv), 3 GN (extra), 4 SiLU,
    5 Dropout, 6 Conv (zero-init). `has_lateral` blocks (decoder side) concatenate the skip.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        emb_ch: int,
        cond_ch: int,
        dropout: float = 0.0,
        resample: str = "none",
        has_lateral: bool = False,
    ):
        super().__init__()
        self.has_lateral = has_lateral
        self.in_layers = nn.Sequential(normalization(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.resample = resample
        self.h_upd = Resample(resample)
        self.x_upd = Resample(resample)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, 2 * out_ch))
        self.cond_emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(cond_ch, 2 * out_ch))
        self.out_layers = nn.Sequential(
            normalization(out_ch),
            nn.SiLU(),
            nn.Conv2d(out_ch, out_ch, 3, padding=1),
            normalization(out_ch),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1)),
        )
        self.skip_connection = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, emb: Tensor, cond: Tensor, lateral: Tensor | None = None) -> Tensor:
        if self.has_lateral:
            x = torch.cat([x, lateral], dim=1)
        if self.resample != "none":
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)

        t_scale, t_shift = self.emb_layers(emb).type(h.dtype)[..., None, None].chunk(2, dim=1)
        z_scale, z_shift = self.cond_emb_layers(cond).type(h.dtype)[..., None, None].chunk(2, dim=1)
        o = self.out_layers
        h = o[0](h) * (1 + t_scale) + t_shift  # time AdaGN
        h = o[3](o[2](o[1](h))) * (1 + z_scale) + z_shift  # identity AdaGN
        h = o[6](o[5](o[4](h)))
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over all pixels (official `QKVAttentionLegacy` split)."""

    def __init__(self, channels: int, num_heads: int = 1):
        super().__init__()
        self.num_heads = num_heads
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        xf = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(xf))
        a = qkv_attention_legacy(qkv, self.num_heads)
        return (xf + self.proj_out(a)).reshape(b, c, *spatial)


def qkv_attention_legacy(qkv: Tensor, num_heads: int) -> Tensor:
    """[B, 3*H*C, T] -> [B, H*C, T]; q and k scaled by C^-1/4 each, softmax in fp32."""
    bs, width, length = qkv.shape
    ch = width // (3 * num_heads)
    q, k, v = qkv.reshape(bs * num_heads, ch * 3, length).split(ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    a = torch.einsum("bts,bcs->bct", weight, v)
    return a.reshape(bs, -1, length)


class TimestepSequential(nn.Sequential):
    """A Sequential whose ResBlocks receive (emb, cond, lateral) and other layers only x."""

    def forward(self, x: Tensor, emb: Tensor, cond: Tensor, lateral: Tensor | None = None) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb, cond, lateral if layer.has_lateral else None)
            else:
                x = layer(x)
        return x


class TimeEmbed(nn.Module):
    """Holds the time MLP under the official name `time_embed.time_embed.{0,2}`."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.time_embed = nn.Sequential(nn.Linear(in_ch, out_ch), nn.SiLU(), nn.Linear(out_ch, out_ch))

    def forward(self, t_emb: Tensor) -> Tensor:
        return self.time_embed(t_emb)


class UNet(nn.Module):
    """eps = UNet(x_t, t, z_face). Encoder: 18 input blocks; middle; decoder: 18 output blocks."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        ch0 = cfg.model_channels
        emb, cond, drop = cfg.embed_channels, cfg.cond_channels, cfg.dropout

        def res(i: int, o: int, **kw) -> ResBlock:
            return ResBlock(i, o, emb, cond, drop, **kw)

        self.time_embed = TimeEmbed(ch0, emb)
        ch = cfg.channel_mult[0] * ch0  # official width of the input conv
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
        skip_chans = [ch]
        resolution = cfg.image_size
        last = len(cfg.channel_mult) - 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * ch0)]
                ch = mult * ch0
                if resolution in cfg.attention_resolutions:
                    layers.append(AttentionBlock(ch))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_chans.append(ch)
            if level != last:
                self.input_blocks.append(TimestepSequential(res(ch, ch, resample="down")))
                skip_chans.append(ch)
                resolution //= 2

        self.middle_block = TimestepSequential(res(ch, ch), AttentionBlock(ch), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), ch0 * mult, has_lateral=True)]
                ch = ch0 * mult
                if resolution in cfg.attention_resolutions:
                    layers.append(AttentionBlock(ch))
                if level and i == cfg.num_res_blocks:
                    layers.append(res(ch, ch, resample="up"))
                    resolution *= 2
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = nn.Sequential(normalization(ch), nn.SiLU(), zero_module(nn.Conv2d(ch, cfg.out_channels, 3, padding=1)))

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """x: [B,3,H,W] noisy image; t: [B] or scalar original timesteps; cond: z_face [B or 1, D]."""
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.cfg.model_channels))
        if cond.shape[0] == 1 and x.shape[0] > 1:
            cond = cond.expand(x.shape[0], -1)

        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, cond)
            skips.append(h)
        h = self.middle_block(h, emb, cond)
        for block in self.output_blocks:
            h = block(h, emb, cond, lateral=skips.pop())
        return self.out(h)

    def zero_init_modules(self) -> list[nn.Module]:
        """The layers the official code zero-initialises (a fresh model outputs eps == 0)."""
        mods: list[nn.Module] = [self.out[2]]
        for m in self.modules():
            if isinstance(m, ResBlock):
                mods.append(m.out_layers[6])
            elif isinstance(m, AttentionBlock):
                mods.append(m.proj_out)
        return mods
