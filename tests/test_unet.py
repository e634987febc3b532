"""The reference UNet against the official layout and an independent functional re-derivation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fvedit.config import DVA256, TINY
from fvedit.models.dva import randomize_zero_init
from fvedit.models.unet import AttentionBlock, ResBlock, UNet, timestep_embedding

from helpers import official_keys


@pytest.fixture(scope="module")
def tiny_unet() -> UNet:
    torch.manual_seed(0)
    unet = UNet(TINY.unet).eval()
    randomize_zero_init(unet, seed=1)
    return unet


def test_dva256_unet_matches_official_layout_and_size():
    with torch.device("meta"):
        unet = UNet(DVA256.unet)
    ours = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    official = {k: s for k, s in official_keys().items() if not k.startswith("encoder.")}
    assert len(official) == 758
    assert ours == official
    # Parameter count of the official UNet (facts file, checked on the official class).
    assert sum(p.numel() for p in unet.parameters()) == 190_576_643


def test_dva256_block_structure():
    with torch.device("meta"):
        unet = UNet(DVA256.unet)
    attn_in = [i for i, b in enumerate(unet.input_blocks) if any(isinstance(m, AttentionBlock) for m in b)]
    attn_out = [i for i, b in enumerate(unet.output_blocks) if any(isinstance(m, AttentionBlock) for m in b)]
    down = [i for i, b in enumerate(unet.input_blocks) if isinstance(b[0], ResBlock) and b[0].resample == "down"]
    up = [i for i, b in enumerate(unet.output_blocks) if isinstance(b[-1], ResBlock) and b[-1].resample == "up"]
    assert (attn_in, attn_out) == ([13, 14], [3, 4, 5])
    assert down == [3, 6, 9, 12, 15]
    assert up == [2, 5, 8, 11, 14]
    assert len(unet.input_blocks) == 18 and len(unet.output_blocks) == 18


def test_timestep_embedding_is_cos_first():
    t = torch.tensor([0.0, 7.0, 999.0])
    emb = timestep_embedding(t, 8)
    freqs = [math.exp(-math.log(10000) * i / 4) for i in range(4)]
    expected = [[math.cos(tt * f) for f in freqs] + [math.sin(tt * f) for f in freqs] for tt in t.tolist()]
    torch.testing.assert_close(emb, torch.tensor(expected), rtol=1e-5, atol=1e-5)


def _functional_resblock(blk: ResBlock, x, emb, cond):
    """The facts-file recipe (§2.3), written against raw parameters only."""
    p = dict(blk.named_parameters())

    def gn(h, name):
        return F.group_norm(h, min(32, h.shape[1]), p[f"{name}.weight"], p[f"{name}.bias"], eps=1e-5)

    h = F.silu(gn(x, "in_layers.0"))
    if blk.resample == "up":
        h, x = F.interpolate(h, scale_factor=2.0), F.interpolate(x, scale_factor=2.0)
    elif blk.resample == "down":
        h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
    h = F.conv2d(h, p["in_layers.2.weight"], p["in_layers.2.bias"], padding=1)
    te = F.linear(F.silu(emb), p["emb_layers.1.weight"], p["emb_layers.1.bias"])
    ze = F.linear(F.silu(cond), p["cond_emb_layers.1.weight"], p["cond_emb_layers.1.bias"])
    c = h.shape[1]
    s_t, b_t = te[:, :c, None, None], te[:, c:, None, None]
    s_z, b_z = ze[:, :c, None, None], ze[:, c:, None, None]
    h = gn(h, "out_layers.0") * (1 + s_t) + b_t
    h = F.conv2d(F.silu(h), p["out_layers.2.weight"], p["out_layers.2.bias"], padding=1)
    h = gn(h, "out_layers.3") * (1 + s_z) + b_z
    h = F.conv2d(F.silu(h), p["out_layers.6.weight"], p["out_layers.6.bias"], padding=1)
    skip = x if "skip_connection.weight" not in p else F.conv2d(x, p["skip_connection.weight"], p["skip_connection.bias"])
    return skip + h


@pytest.mark.parametrize("resample,cin,cout", [("none", 32, 32), ("none", 32, 64), ("up", 64, 64), ("down", 64, 64)])
def test_resblock_matches_functional_recipe(resample, cin, cout):
    torch.manual_seed(1)
    blk = ResBlock(cin, cout, 48, 40, resample=resample).eval()
    torch.nn.init.normal_(blk.out_layers[6].weight, std=0.05)  # official zero-init; make it matter
    x, emb, cond = torch.randn(2, cin, 8, 8), torch.randn(2, 48), torch.randn(2, 40)
    torch.testing.assert_close(blk(x, emb, cond), _functional_resblock(blk, x, emb, cond), rtol=1e-5, atol=1e-5)


def test_attention_is_plain_single_head_softmax_attention():
    torch.manual_seed(2)
    blk = AttentionBlock(64).eval()
    torch.nn.init.normal_(blk.proj_out.weight, std=0.1)
    x = torch.randn(2, 64, 4, 5)
    xf = x.reshape(2, 64, -1)
    qkv = blk.qkv(blk.norm(xf))
    q, k, v = qkv[:, :64], qkv[:, 64:128], qkv[:, 128:]
    w = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(64), dim=-1)  # [B, Tq, Tk]
    expected = xf + blk.proj_out((w @ v.transpose(1, 2)).transpose(1, 2))
    torch.testing.assert_close(blk(x), expected.reshape_as(x), rtol=1e-5, atol=1e-5)


def test_fresh_model_outputs_zero_and_randomized_does_not():
    torch.manual_seed(0)
    unet = UNet(TINY.unet).eval()
    x, t, c = torch.randn(2, 3, 64, 64), torch.tensor([3, 700]), torch.randn(2, 128)
    with torch.no_grad():
        assert torch.count_nonzero(unet(x, t, c)) == 0
        randomize_zero_init(unet, seed=0)
        assert unet(x, t, c).abs().mean() > 1e-3


def test_unet_batch_independence_and_cond_broadcast(tiny_unet):
    torch.manual_seed(3)
    x, t, c = torch.randn(3, 3, 64, 64), torch.tensor([0, 250, 999]), torch.randn(1, 128)
    with torch.no_grad():
        batched = tiny_unet(x, t, c)
        single = torch.cat([tiny_unet(x[i : i + 1], t[i : i + 1], c) for i in range(3)])
        expanded = tiny_unet(x, t, c.expand(3, -1))
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batched, expanded, rtol=0, atol=0)


def test_unet_depends_on_time_and_identity(tiny_unet):
    torch.manual_seed(4)
    x, c = torch.randn(1, 3, 64, 64), torch.randn(1, 128)
    with torch.no_grad():
        base = tiny_unet(x, torch.tensor([100]), c)
        other_t = tiny_unet(x, torch.tensor([900]), c)
        other_c = tiny_unet(x, torch.tensor([100]), torch.randn(1, 128))
    assert (base - other_t).abs().max() > 1e-4
    assert (base - other_c).abs().max() > 1e-4


def test_randomize_zero_init_is_deterministic():
    torch.manual_seed(0)
    a = UNet(TINY.unet)
    b = UNet(TINY.unet)
    b.load_state_dict(a.state_dict())
    randomize_zero_init(a, seed=5)
    randomize_zero_init(b, seed=5)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
