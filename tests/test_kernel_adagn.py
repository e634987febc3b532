"""Fused AdaGN (GroupNorm + scale/shift + SiLU): Triton kernels vs PyTorch twin vs official modules.

The Triton kernels run on CPU under Triton's interpreter. TRITON_INTERPRET=1 only takes effect if
it is set before triton is first imported, so they run in worker subprocesses (this file run as a
script: `python tests/test_kernel_adagn.py OUT.pt NAME...`) that compute the cases and save inputs
and outputs; the tests compare those against references computed here, in-process. Nothing leaks
into other test modules. With a CUDA GPU the kernels are also checked in-process on the GPU.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fvedit.errors import InputError
from fvedit.models.unet import GroupNorm32, ResBlock
from fvedit.runtime.kernels import adagn
from tolerances import (
    assert_close_scaled,
    group_norm_tolerance,
    max_abs_error,
    network_profile,
    network_rel_tolerance,
    rounding_tolerance,
)

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    name: str
    B: int
    C: int
    G: int
    H: int
    W: int
    dtype: torch.dtype = torch.float32
    channels_last: bool = False
    scale: str | None = "2d"  # None, "2d" [B, C], "4d" a [B, C, 1, 1] chunk of [B, 2C, 1, 1], "bcast" [1, C]
    shift: bool = True
    act: bool = True
    chunks: int | None = None  # None: the launcher's choice
    block_hw: int | None = None
    fold_block_k: int | None = None  # small: the fold kernel loops over a group's partials
    mean: float = 0.0  # added to x: large values test the statistics' stability


F16 = torch.float16
CASES = [
    Case("c12g4-7x7-adagn", 2, 12, 4, 7, 7, chunks=2, block_hw=16),
    Case("c12g4-7x7-adagn-cl", 3, 12, 4, 7, 7, channels_last=True, chunks=3, block_hw=8, fold_block_k=4),
    Case("c12g4-7x7-gn-silu", 1, 12, 4, 7, 7, scale=None, shift=False),
    Case("c12g4-7x7-gn-noact", 2, 12, 4, 7, 7, scale=None, shift=False, act=False, chunks=4, block_hw=4,
         fold_block_k=2),
    Case("c96g32-4x5-adagn-cl", 2, 96, 32, 4, 5, channels_last=True, chunks=2, block_hw=8),
    Case("c64g32-5x9-adagn", 1, 64, 32, 5, 9, scale="4d"),
    Case("c64g32-5x9-scale-noact-cl", 2, 64, 32, 5, 9, channels_last=True, shift=False, act=False),
    Case("c24g2-3x11-bcast", 2, 24, 2, 3, 11, scale="bcast", chunks=2, block_hw=16),
    Case("c16g1-6x1-adagn-cl", 2, 16, 1, 6, 1, channels_last=True),
    Case("c12g4-7x7-adagn-f16", 2, 12, 4, 7, 7, dtype=F16, chunks=2, block_hw=16),
    Case("c12g4-7x7-adagn-f16-cl", 2, 12, 4, 7, 7, dtype=F16, channels_last=True, scale="4d"),
    Case("c64g32-5x9-adagn-f16", 1, 64, 32, 5, 9, dtype=F16, chunks=2, block_hw=32),
    Case("c12g4-7x7-shift-noact-f16", 3, 12, 4, 7, 7, dtype=F16, scale=None, act=False),
    Case("c12g4-7x7-large-mean", 2, 12, 4, 7, 7, chunks=2, block_hw=16, mean=3000.0),
    # the fold's fixed tiles: K = 22 chunks x 48 channels = 1056 > FOLD_BLOCK_K (two steps, as dva256 at
    # batch 1 on an H100/H200) and CG = 48 > FOLD_BLOCK_CG (two channel steps) ...
    Case("c96g2-11x16-fold-loops-cl", 2, 96, 2, 11, 16, channels_last=True, chunks=22, block_hw=8),
    # ... and K = 6 chunks x 1 < FOLD_BLOCK_K, CG = 3 < FOLD_BLOCK_CG (one partly masked step each)
    Case("c12g4-8x6-fold-short", 2, 12, 4, 8, 6, chunks=6, block_hw=8),
]
FOLD_LONG, FOLD_SHORT = "c96g2-11x16-fold-loops-cl", "c12g4-8x6-fold-short"
CASE_IDS = [c.name for c in CASES]
BY_NAME = {c.name: c for c in CASES}


def make_inputs(case: Case, seed: int, device: str = "cpu") -> dict:
    """Random non-zero inputs; scale/shift come in x's dtype as ResBlock hands them over."""
    g = torch.Generator().manual_seed(seed)
    B, C = case.B, case.C

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    x = (randn(B, C, case.H, case.W) * 1.5 + 0.3 + case.mean).to(case.dtype)
    if case.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = {"x": x, "weight": 1 + 0.5 * randn(C), "bias": 0.5 * randn(C), "scale": None, "shift": None}
    if case.scale == "2d":
        out["scale"] = (0.5 * randn(B, C)).to(case.dtype)
    elif case.scale == "4d":
        out["scale"] = (0.5 * randn(B, 2 * C, 1, 1)).to(case.dtype).chunk(2, dim=1)[1]
    elif case.scale == "bcast":
        out["scale"] = (0.5 * randn(1, C)).to(case.dtype)
    if case.shift:
        out["shift"] = randn(B, C).to(case.dtype)
    return {k: (v.to(device) if v is not None else None) for k, v in out.items()}


def call(fn, case: Case, inp: dict, **kw) -> torch.Tensor:
    return fn(
        inp["x"], inp["weight"], inp["bias"], case.G, 1e-5, scale=inp["scale"], shift=inp["shift"], act=case.act, **kw
    )


def official(case: Case, inp: dict) -> torch.Tensor:
    """The official module sequence: GroupNorm32 (fp32, cast back), h*(1+s)+b in x.dtype, SiLU."""
    x = inp["x"]
    gn = GroupNorm32(case.G, case.C).to(x.device)
    with torch.no_grad():
        gn.weight.copy_(inp["weight"])
        gn.bias.copy_(inp["bias"])
        h = gn(x)
        if inp["scale"] is not None:
            h = h * (1 + inp["scale"].reshape(-1, case.C, 1, 1))
        if inp["shift"] is not None:
            h = h + inp["shift"].reshape(-1, case.C, 1, 1)
        return F.silu(h) if case.act else h


def exact(case: Case, inp: dict) -> torch.Tensor:
    """float64 truth."""
    d = {k: (inp[k].double() if inp[k] is not None else None) for k in ("x", "weight", "bias", "scale", "shift")}
    return official(case, d)


@torch.no_grad()
def gn_scales(case: Case, inp: dict) -> dict:
    """What a GroupNorm + AdaGN tolerance scales with (`tolerances.group_norm_tolerance`), in fp64:
    the reduction length C/G*H*W, spread = max|x| / std per group (|mean| / std for a large-mean
    input), the largest per-channel gain |gamma (1 + scale)|, and the output's size."""
    x = inp["x"].double()
    xg = x.reshape(case.B, case.G, -1)
    std = (xg.var(-1, unbiased=False) + 1e-5).sqrt()
    gain = inp["weight"].double()[None]
    if inp["scale"] is not None:
        gain = gain * (1 + inp["scale"].double().reshape(-1, case.C))
    return dict(
        group_size=xg.shape[-1],
        spread=(xg.abs().amax(-1) / std).max().item(),
        gain=gain.abs().max().item(),
        max_abs_out=exact(case, inp).abs().max().item(),
    )


def twin_tolerance(case: Case, inp: dict) -> float:
    """Fused kernel vs twin: both keep fp32 from the statistics to SiLU and round once to x.dtype."""
    return group_norm_tolerance(**gn_scales(case, inp), out_dtype=case.dtype)


@torch.no_grad()
def official_tolerance(case: Case, inp: dict) -> float:
    """Fused vs the official modules, which also round GroupNorm32's output to x.dtype and then run
    the AdaGN multiply-add and SiLU in x.dtype: four more roundings of values of size
    <= max|GN(x)| * max|1 + scale| + max|shift| (bf16/fp16 the large term; fp32 keeps it tiny)."""
    d = {k: (inp[k].double() if inp[k] is not None else None) for k in ("x", "weight", "bias", "scale", "shift")}
    h = F.group_norm(d["x"], case.G, d["weight"], d["bias"], eps=1e-5).abs().max().item()
    s = (1 + d["scale"]).abs().max().item() if d["scale"] is not None else 1.0
    b = d["shift"].abs().max().item() if d["shift"] is not None else 0.0
    return twin_tolerance(case, inp) + rounding_tolerance(4, h * s + b, case.dtype)


# -- a ResBlock with its three GN+SiLU sites replaced by the fused op --------------------------


def make_resblock(seed: int, in_ch: int = 64, out_ch: int = 96) -> ResBlock:
    """Every parameter random (also the zero-initialised conv and the GN affines)."""
    torch.manual_seed(seed)
    block = ResBlock(in_ch, out_ch, emb_ch=16, cond_ch=8, dropout=0.0)
    with torch.no_grad():
        for name, p in block.named_parameters():
            p.copy_(torch.randn_like(p) * (0.5 if name.endswith("bias") else 1.0 / max(1, p[0].numel()) ** 0.5))
            if name.endswith("weight") and p.dim() == 1:  # GN gamma around 1
                p.add_(1.0)
    return block.eval()


def fused_resblock_forward(block: ResBlock, x, emb, cond, gn=adagn.group_norm_silu) -> torch.Tensor:
    """ResBlock.forward (no resampling, no lateral) with GN (+AdaGN) + SiLU fused."""
    i, o = block.in_layers, block.out_layers
    t_scale, t_shift = block.emb_layers(emb).type(x.dtype).chunk(2, dim=1)
    z_scale, z_shift = block.cond_emb_layers(cond).type(x.dtype).chunk(2, dim=1)
    h = i[2](gn(x, i[0].weight, i[0].bias, i[0].num_groups, i[0].eps))
    h = gn(h, o[0].weight, o[0].bias, o[0].num_groups, o[0].eps, scale=t_scale, shift=t_shift)  # time AdaGN
    h = gn(o[2](h), o[3].weight, o[3].bias, o[3].num_groups, o[3].eps, scale=z_scale, shift=z_shift)  # id AdaGN
    return block.skip_connection(x) + o[6](o[5](h))


RESBLOCK_SEED = 7


def resblock_tolerance(block: ResBlock, expected: torch.Tensor) -> float:
    """Fused vs plain ResBlock in fp32: the same stages (3 GN, 3 conv, the skip conv, 2 linears)
    with reordered sums, so `network_rel_tolerance` of its depth and longest reduction x max|out|."""
    x, emb, cond = (t.to(expected.device) for t in resblock_inputs())
    depth, fan_in = network_profile(block, x, emb, cond)
    return network_rel_tolerance(torch.float32, depth, fan_in) * expected.abs().max().item()


def resblock_inputs(device="cpu"):
    g = torch.Generator().manual_seed(RESBLOCK_SEED + 1)
    return (
        torch.randn(1, 64, 6, 5, generator=g).to(device),
        torch.randn(1, 16, generator=g).to(device),
        torch.randn(1, 8, generator=g).to(device),
    )


# -- the interpreter worker ---------------------------------------------------------------------


# dva256-like launches whose kernels are compiled for an H100 (sm_90) without a GPU: Triton's
# frontend and the ptxas bundled with triton run on any machine, so CI type-checks the GPU path.
SM90_LAUNCHES = [  # (B, C, G, H, W, x dtype, channels_last, with scale/shift, act)
    (1, 128, 32, 256, 256, "fp16", False, True, True),
    (2, 384, 32, 32, 32, "bf16", True, False, False),
]
H100_SMS = 132


def _compile_sm90() -> dict:
    """Compile the three kernels as the launcher would launch them; return each one's PTX."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    assert not adagn.triton_interpreted(), "the compile job needs TRITON_INTERPRET unset"
    target = GPUTarget("cuda", 90, 32)
    ptx = {}
    for B, C, G, H, W, dt, cl, adagn_on, act in SM90_LAUNCHES:
        x, f32 = f"*{dt}", "*fp32"
        ada = x if adagn_on else f32  # scale/shift in x's dtype (as ResBlock's), else the fp32 stand-in
        pointers = {"stats": (x, f32), "fold": (f32, f32, f32, ada, ada, f32, f32), "apply": (x, x, f32, f32)}
        site = adagn.GNSite(B, C, H, W, G, channels_last=cl, adagn=adagn_on, act=act)
        for launch in adagn.site_launches(site, adagn.PROGRAMS_PER_SM * H100_SMS):
            fn = adagn._KERNELS[launch.kernel]
            ptr_names = [n for n in fn.arg_names if n not in launch.scalars and n not in launch.consts]
            args = {**dict(zip(ptr_names, pointers[launch.role], strict=True)), **launch.scalars, **launch.consts}
            # the specialisation triton applies at launch (`adagn.int_specialization`): ints equal to 1
            # become constants, ints divisible by 16 get the 16-divisibility attribute unless the kernel
            # opts out, pointers (fresh allocations) get it too
            sig, consts, attrs = {}, {}, {}
            for i, name in enumerate(fn.arg_names):
                v = args[name]
                spec = adagn.int_specialization(v, launch.role, name) if type(v) is int else ""
                if i in fn.constexprs or spec == "1":
                    sig[name], consts[name] = "constexpr", v
                elif isinstance(v, str):
                    sig[name], attrs[(i,)] = v, [["tt.divisibility", 16]]
                elif isinstance(v, float):
                    sig[name] = "fp32"
                else:
                    sig[name] = spec.removesuffix("D")
                    if spec.endswith("D"):
                        attrs[(i,)] = [["tt.divisibility", 16]]
            kname, warps = launch.role, launch.num_warps
            src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
            kernel = triton.compile(src, target=target, options={"num_warps": warps, "enable_fp_fusion": True})
            assert kernel.asm.get("cubin"), f"{kname}: no cubin"
            ptx[f"{kname}-{dt}-{'nhwc' if cl else 'nchw'}"] = kernel.asm["ptx"]
    return ptx


def _worker(out_path: str, names: list[str]) -> None:
    results = {}
    if names == ["compile-sm90"]:
        torch.save({"compile-sm90": _compile_sm90()}, out_path)
        return
    assert adagn.triton_interpreted(), "worker needs TRITON_INTERPRET=1 before triton is imported"
    for name in names:
        if name == "resblock":
            block = make_resblock(RESBLOCK_SEED)
            x, emb, cond = resblock_inputs()
            with torch.no_grad():
                y = fused_resblock_forward(block, x, emb, cond, gn=adagn.group_norm_silu_triton)
            results[name] = {"y": y, "backend": adagn.backend_for(x)}
            continue
        case = BY_NAME[name]
        inp = make_inputs(case, seed=CASE_IDS.index(name))
        plan = None
        if case.chunks or case.block_hw or case.fold_block_k:
            shape = (case.B, case.C, case.H * case.W, case.G, case.channels_last, 1)
            plan = adagn.plan_launch(*shape, chunks=case.chunks, block_hw=case.block_hw)
            if case.fold_block_k:
                plan = dataclasses.replace(plan, fold_block_k=case.fold_block_k)
        y = call(adagn.group_norm_silu_triton, case, inp, plan=plan)
        plan = plan or adagn.plan_launch(case.B, case.C, case.H * case.W, case.G, case.channels_last, 1)
        fold = {"K": plan.n_chunks * plan.segs_per_group, "block_k": plan.fold_block_k, "block_cg": plan.fold_block_cg}
        results[name] = {**inp, "y": y, "backend": adagn.backend_for(inp["x"]), "fold": fold}
    torch.save(results, out_path)


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory) -> dict:
    """Every case under the Triton interpreter (two worker processes), and the sm_90 compile job."""
    names = CASE_IDS + ["resblock"]
    tmp = tmp_path_factory.mktemp("adagn")
    base = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    base.update(OMP_NUM_THREADS="1", TRITON_DEFAULT_FP_FUSION="1", TRITON_CACHE_DIR=str(tmp / "triton-cache"))
    base.pop("TRITON_INTERPRET", None)
    interp = {**base, "TRITON_INTERPRET": "1"}
    jobs = [(interp, names[0::2]), (interp, names[1::2]), (base, ["compile-sm90"])]
    procs = []
    for k, (env, shard) in enumerate(jobs):
        out = tmp / f"shard{k}.pt"
        cmd = [sys.executable, str(Path(__file__).resolve()), str(out), *shard]
        procs.append((out, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    results = {}
    for out, proc in procs:
        log, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"worker {proc.args[3:]} failed:\n{log[-4000:]}"
        results.update(torch.load(out))
    return results


# -- interpreter vs twin / official / exact ----------------------------------------------------


@pytest.mark.parametrize("name", CASE_IDS)
def test_interpreted_kernel_matches_twin(interpreted, name):
    case, r = BY_NAME[name], interpreted[name]
    assert r["backend"] == "triton"
    y, x = r["y"], r["x"]
    assert y.dtype == x.dtype and y.shape == x.shape and y.stride() == x.stride()
    ref = call(adagn.group_norm_silu_reference, case, r)
    # same math in fp32, both round once to x.dtype; the scale grows with the reduction length and
    # with |mean| / std (x*A + B cancels for a large-mean input)
    assert_close_scaled(y, ref, twin_tolerance(case, r), name, scale=str(gn_scales(case, r)))


@pytest.mark.parametrize("name", CASE_IDS)
def test_interpreted_kernel_matches_official_modules(interpreted, name):
    case, r = BY_NAME[name], interpreted[name]
    assert_close_scaled(r["y"], official(case, r), official_tolerance(case, r), name, scale=str(gn_scales(case, r)))


@pytest.mark.parametrize("name", [c.name for c in CASES if c.dtype == F16])
def test_fp16_fused_is_closer_to_exact_than_official(interpreted, name):
    """One rounding (fused) beats GroupNorm32's cast-back + fp16 multiply-add (the docstring claim)."""
    case, r = BY_NAME[name], interpreted[name]
    truth = exact(case, r)
    fused_err = (r["y"].double() - truth).abs().mean()
    official_err = (official(case, r).double() - truth).abs().mean()
    assert fused_err < official_err, (fused_err, official_err)
    # one rounding to fp16 (u16 |y|) on top of the fp32 statistics' error
    assert_close_scaled(r["y"].double(), truth, twin_tolerance(case, r), name)


def test_large_mean_statistics_are_stable(interpreted):
    """mean 3000, std 1.5: Welford/Chan stats hold; fp32 E[x^2] - E[x]^2 would not."""
    case = BY_NAME["c12g4-7x7-large-mean"]
    r = interpreted[case.name]
    truth = exact(case, r)
    # spread = |mean| / std ~ 2000: fp32 GroupNorm is only good to ~u32 sqrt(n) * 2000 here
    assert_close_scaled(r["y"].double(), truth, twin_tolerance(case, r), case.name, scale=str(gn_scales(case, r)))
    # plain normalisation with naive fp32 moments (E[x^2] - E[x]^2 loses every digit of the
    # variance to |mean|^2 u) misses by far more than the tolerance of a gain-1 GroupNorm
    xg = r["x"].reshape(case.B, case.G, -1)
    mean = xg.mean(-1, keepdim=True)
    var = ((xg * xg).mean(-1, keepdim=True) - mean * mean).clamp_min(0)
    naive = ((xg - mean) / torch.sqrt(var + 1e-5)).reshape_as(r["x"])
    exact_norm = F.group_norm(r["x"].double(), case.G)
    scales = {**gn_scales(case, r), "gain": 1.0, "max_abs_out": exact_norm.abs().max().item()}
    assert max_abs_error(naive, exact_norm) > 5 * group_norm_tolerance(**scales)


def test_resblock_with_fused_adagn_matches_forward(interpreted):
    r = interpreted["resblock"]
    assert r["backend"] == "triton"
    block = make_resblock(RESBLOCK_SEED)
    x, emb, cond = resblock_inputs()
    with torch.no_grad():
        expected = block(x, emb, cond)
        twin = fused_resblock_forward(block, x, emb, cond, gn=adagn.group_norm_silu_reference)
    assert expected.abs().mean() > 0.1  # the residual branch is not zero: the test can fail
    tol = resblock_tolerance(block, expected)
    assert_close_scaled(r["y"], expected, tol, "kernel")
    assert_close_scaled(twin, expected, tol, "twin")


def test_kernels_compile_for_h100(interpreted):
    """The compiled (non-interpreted) path type-checks and vectorises: 16-byte global accesses
    along the contiguous axis in both layouts, and no local-memory (spill) traffic."""
    ptx = interpreted["compile-sm90"]
    assert len(ptx) == 3 * len(SM90_LAUNCHES)
    for name, text in ptx.items():
        assert ".target sm_90" in text, name
        assert "ld.local" not in text and "st.local" not in text, f"{name} spills registers"
        if not name.startswith("fold"):
            assert "ld.global.v4" in text or "ld.global.nc.v4" in text, f"{name}: loads are not 16-byte vectors"
        if name.startswith("apply"):
            assert "st.global.v4" in text, f"{name}: stores are not 16-byte vectors"


@settings(max_examples=200, deadline=None)
@given(
    B=st.integers(1, 16),
    C_per_group=st.sampled_from([1, 2, 3, 4, 8, 12, 16, 24, 32]),
    G=st.sampled_from([1, 4, 32]),
    H=st.integers(1, 300),
    W=st.integers(1, 300),
    channels_last=st.booleans(),
    target=st.sampled_from([1, 4 * 132, 4 * 78]),
)
def test_launch_plan_covers_every_element_once(B, C_per_group, G, H, W, channels_last, target):
    C, HW = C_per_group * G, H * W
    plan = adagn.plan_launch(B, C, HW, G, channels_last, target)
    pow2 = lambda n: n > 0 and n & (n - 1) == 0  # noqa: E731
    blocks = [plan.stats_block_a, plan.stats_block_hw, plan.fold_block_g, plan.fold_block_k, plan.fold_block_cg]
    assert all(map(pow2, blocks + [plan.apply_block_c, plan.apply_block_hw]))
    # chunks tile H*W exactly: none empty, none missing, each a whole number of tiles
    assert plan.chunk_hw % plan.stats_block_hw == 0
    assert (plan.n_chunks - 1) * plan.chunk_hw < HW <= plan.n_chunks * plan.chunk_hw
    if channels_last:
        assert plan.stats_grid == (_cdiv(C, plan.stats_block_a), plan.n_chunks, B)
        assert (plan.n_seg, plan.segs_per_group) == (C, C_per_group)
    else:
        assert plan.stats_grid == (B * G, plan.n_chunks) and plan.stats_block_a >= C_per_group
        assert (plan.n_seg, plan.segs_per_group) == (G, 1)
    assert plan.stats_block_a * plan.stats_block_hw <= 4096 or plan.stats_block_hw == 16
    # the fold's tiles do not follow the shape (it loops over K and CG): one compiled variant for all
    fixed = (adagn.FOLD_BLOCK_G, adagn.FOLD_BLOCK_K, adagn.FOLD_BLOCK_CG)
    assert (plan.fold_block_g, plan.fold_block_k, plan.fold_block_cg) == fixed
    assert plan.fold_grid == (_cdiv(G, plan.fold_block_g), B)
    assert plan.apply_grid[0] * plan.apply_block_hw >= HW and plan.apply_grid[1] * plan.apply_block_c >= C
    programs = math.prod(plan.stats_grid)
    if target > 1 and programs < target // 2:  # too few programs only when H*W has run out of tiles
        assert plan.n_chunks == _cdiv(HW, plan.stats_block_hw)


@pytest.mark.parametrize("channels_last", [False, True])
def test_launch_plan_fills_an_h100_at_batch_1(channels_last):
    """The occupancy pitfall of one-program-per-group designs: 32 programs for 132 SMs."""
    plan = adagn.plan_launch(1, 128, 256 * 256, 32, channels_last, adagn.PROGRAMS_PER_SM * H100_SMS)
    assert math.prod(plan.stats_grid) >= 2 * H100_SMS


def _cdiv(a, b):
    return -(-a // b)


@pytest.mark.parametrize("name, longer", [(FOLD_LONG, True), (FOLD_SHORT, False)])
def test_fold_cases_straddle_the_fixed_block(interpreted, name, longer):
    """The two fold cases above run the fixed-tile loops more than once / once, partly masked
    (their parity is in the tests above): checks the cases still do what they are there for."""
    fold = interpreted[name]["fold"]
    assert (fold["block_k"], fold["block_cg"]) == (adagn.FOLD_BLOCK_K, adagn.FOLD_BLOCK_CG)
    case = BY_NAME[name]
    assert (fold["K"] > fold["block_k"]) == longer and (case.C // case.G > fold["block_cg"]) == longer


# -- how many kernels Triton compiles for dva256 ------------------------------------------------


def dva256_gn_sites(batch: int, channels_last: bool = True) -> list[adagn.GNSite]:
    """Every GroupNorm(+AdaGN)+SiLU call of one dva256 UNet call, from the reference UNet run on the
    meta device with hooks: the input shape each GN sees, and what FastUNet passes with it (ResBlock
    in_layers / out head: GN + SiLU; the two AdaGNs: scale and shift; attention: GN only)."""
    from fvedit.config import DVA256
    from fvedit.models.unet import AttentionBlock, UNet

    with torch.device("meta"):
        unet = UNet(DVA256.unet)
    sites: list[adagn.GNSite] = []

    def record(gn, adagn_on: bool, act: bool):
        def hook(module, args):  # AttentionBlock's own input: its norm sees it reshaped to [B, C, T]
            B, C, H, W = args[0].shape
            sites.append(adagn.GNSite(B, C, H, W, gn.num_groups, channels_last, adagn_on, act))

        return hook

    for m in unet.modules():
        if isinstance(m, ResBlock):
            m.in_layers[0].register_forward_pre_hook(record(m.in_layers[0], False, True))
            m.out_layers[0].register_forward_pre_hook(record(m.out_layers[0], True, True))
            m.out_layers[3].register_forward_pre_hook(record(m.out_layers[3], True, True))
        elif isinstance(m, AttentionBlock):
            m.register_forward_pre_hook(record(m.norm, False, False))
    unet.out[0].register_forward_pre_hook(record(unet.out[0], False, True))
    size, cond = DVA256.unet.image_size, DVA256.unet.cond_channels
    with torch.device("meta"), torch.no_grad():
        unet(torch.empty(batch, 3, size, size), torch.empty(batch), torch.empty(batch, cond))
    return sites


DVA256_BATCHES = (1, 8, 16, 32)
# Before the fold's tiles were fixed, dva256 fp16 (channels_last, H100/H200) needed 41 distinct
# constexpr configurations over these batches, 37 of them fold variants (56 with Triton's integer
# specialisation on n_chunks). What may remain, per kernel:
#   channel stats: 1 (its tiles follow min(C, 64) and H*W, both at their caps for every site);
#   fold:          2 (AdaGN on / off; fixed tiles; n_chunks not specialised);
#   apply:         4 (SiLU on / off x the tile for C = 128 or C >= 256).
DVA256_VARIANT_BOUND = {"channel_stats": 1, "fold": 2, "apply": 4}


def count_by_kernel(variants: set[tuple]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key in variants:
        counts[key[0]] = counts.get(key[0], 0) + 1
    return counts


@pytest.mark.parametrize("dtype", [F16, torch.bfloat16], ids=str)
def test_dva256_needs_few_compiled_gn_kernels(dtype):
    by_batch = {b: dva256_gn_sites(b) for b in DVA256_BATCHES}
    assert len(by_batch[1]) == 133  # 44 ResBlocks x 3 + 7 attention norms + the out head
    variants = adagn.compile_variants([s for sites in by_batch.values() for s in sites], dtype)
    counts = count_by_kernel(variants)
    assert set(counts) <= set(DVA256_VARIANT_BOUND), counts
    assert all(counts[k] <= DVA256_VARIANT_BOUND[k] for k in counts), counts
    assert len(variants) <= sum(DVA256_VARIANT_BOUND.values()) < 41 // 2
    # nothing depends on the batch: a new batch size compiles no new kernel
    assert variants == adagn.compile_variants(by_batch[1], dtype)


def test_compile_variants_tells_configurations_apart():
    """The counter itself: another tile, another x dtype, SiLU or AdaGN off is another variant;
    another batch (hence another chunk count, n_chunks being unspecialised) is not."""
    base = adagn.GNSite(1, 128, 64, 64, 32, adagn=True)
    one = adagn.compile_variants([base], F16)
    assert len(one) == 3
    assert adagn.compile_variants([base, dataclasses.replace(base, B=7)], F16) == one
    assert len(adagn.compile_variants([base, dataclasses.replace(base, C=512)], F16)) == 4  # a new apply tile
    assert len(adagn.compile_variants([base, dataclasses.replace(base, act=False)], F16)) == 4
    assert len(adagn.compile_variants([base, dataclasses.replace(base, adagn=False)], F16)) == 4
    # x in fp32: new stats and apply kernels; the fold reads only fp32 partials / scale, so it is shared
    assert [k[0] for k in adagn.compile_variants([base], torch.float32) & one] == ["fold"]


@pytest.mark.parametrize("value", [0, 1, 2, 3, 16, 17, 48, 1056, 2**31 + 16])
@pytest.mark.parametrize("role, name", [("fold", "n_chunks"), ("fold", "SEGS"), ("fold", "C"), ("stats", "HW")])
def test_int_specialization_matches_triton(value, role, name):
    """`int_specialization` against Triton's own rule, with the kernel's do-not-specialise lists."""
    specialize = getattr(getattr(adagn.triton, "_C", None), "libtriton", None)
    native = getattr(specialize, "native_specialize_impl", None)
    ours = adagn.int_specialization(value, role, name)
    if native is None:  # no triton (or another version's API): Triton's documented rule
        width = "i32" if value < 2**31 else "i64"
        expected = {"n_chunks": width}.get(name, "1" if value == 1 else width + ("D" if value % 16 == 0 else ""))
        if name == "SEGS" and value != 1:
            expected = width
        assert ours == expected
        return
    from triton.backends.compiler import BaseBackend

    fn = adagn._KERNELS["fold" if role == "fold" else "group_stats"]
    param = fn.params[fn.arg_names.index(name)]
    kind, attr = native(BaseBackend, value, False, not param.do_not_specialize, not param.do_not_specialize_on_alignment)
    assert ours == ("1" if kind == "constexpr" else kind + (attr or ""))


# -- twin, dispatch and argument checks (in-process, fast) ------------------------------------


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, F16, torch.bfloat16])
def test_twin_matches_official_modules(channels_last, dtype):
    case = Case("twin", 3, 96, 32, 9, 13, dtype=dtype, channels_last=channels_last, scale="4d")
    inp = make_inputs(case, seed=123)
    y = call(adagn.group_norm_silu_reference, case, inp)
    assert y.dtype == dtype and y.stride() == inp["x"].stride()
    assert_close_scaled(y, official(case, inp), official_tolerance(case, inp), str(dtype))


def test_dispatch_on_cpu(monkeypatch):
    case = CASES[0]
    inp = make_inputs(case, seed=0)
    expected = "triton" if adagn.triton_interpreted() else "torch"
    assert adagn.backend_for(inp["x"]) == expected
    assert adagn.backend_for(inp["x"].double()) == "torch"
    monkeypatch.setenv("FVEDIT_ADAGN", "torch")
    assert adagn.backend_for(inp["x"]) == "torch"
    assert torch.equal(call(adagn.group_norm_silu, case, inp), call(adagn.group_norm_silu_reference, case, inp))
    assert adagn.triton_available() == (adagn.triton is not None)


def test_triton_launcher_on_cpu_needs_the_interpreter():
    inp = make_inputs(CASES[0], seed=0)
    if adagn.triton_interpreted():  # this whole session runs under TRITON_INTERPRET=1
        assert_close_scaled(
            call(adagn.group_norm_silu_triton, CASES[0], inp),
            call(adagn.group_norm_silu_reference, CASES[0], inp),
            twin_tolerance(CASES[0], inp),
        )
    else:
        with pytest.raises(adagn.FveditError, match="interpreter|not installed"):
            call(adagn.group_norm_silu_triton, CASES[0], inp)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(x=torch.randn(2, 12, 5)), "4-D"),
        (dict(x=torch.ones(2, 12, 3, 3, dtype=torch.int32)), "float tensor"),
        (dict(num_groups=5), "dividing C=12"),
        (dict(num_groups=0), "positive integer"),
        (dict(weight=torch.ones(11)), "weight must have shape"),
        (dict(bias=torch.ones(12, 1)), "bias must have shape"),
        (dict(scale=torch.ones(3, 12)), r"scale must have shape \(2, 12\)"),
        (dict(shift=torch.ones(2, 12, 2, 2)), "shift must have shape"),
    ],
)
def test_bad_arguments_raise_input_error(kwargs, message):
    args = dict(x=torch.randn(2, 12, 3, 3), weight=torch.ones(12), bias=torch.zeros(12), num_groups=4)
    args.update(kwargs)
    x, w, b, g = args.pop("x"), args.pop("weight"), args.pop("bias"), args.pop("num_groups")
    for fn in (adagn.group_norm_silu, adagn.group_norm_silu_reference):
        with pytest.raises(InputError, match=message):
            fn(x, w, b, g, **args)


# -- CUDA (the only skip: no GPU) ----------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPU_CASES = [
    Case("dva-128x64x64", 2, 128, 32, 64, 64),
    Case("dva-512x16x16-cl", 2, 512, 32, 16, 16, channels_last=True, scale="4d"),
    Case("dva-384x32x32-cg12", 1, 384, 32, 32, 32, shift=False),
    Case("dva-768x8x8-cl-noact", 3, 768, 32, 8, 8, channels_last=True, scale=None, shift=False, act=False),
    Case("dva-128x256x256", 1, 128, 32, 256, 256),
    Case("dva-128x256x256-cl", 1, 128, 32, 256, 256, channels_last=True),
]


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, F16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: c.name)
def test_cuda_kernel_matches_twin_and_official(case, dtype):
    case = Case(**{**case.__dict__, "dtype": dtype})
    inp = make_inputs(case, seed=5, device="cuda")
    y = call(adagn.group_norm_silu_triton, case, inp)
    assert adagn.backend_for(inp["x"]) == "triton"
    assert y.dtype == dtype and y.stride() == inp["x"].stride()
    ref = call(adagn.group_norm_silu_reference, case, inp)
    assert_close_scaled(y, ref, twin_tolerance(case, inp), "twin", scale=str(gn_scales(case, inp)))
    assert_close_scaled(y, official(case, inp), official_tolerance(case, inp), "official")
    assert torch.equal(y, call(adagn.group_norm_silu_triton, case, inp))  # two-stage reduction: deterministic


@cuda
def test_cuda_large_mean_and_resblock():
    case = BY_NAME["c12g4-7x7-large-mean"]
    case = Case(**{**case.__dict__, "H": 64, "W": 64, "chunks": None, "block_hw": None})
    inp = make_inputs(case, seed=3, device="cuda")
    y = call(adagn.group_norm_silu_triton, case, inp)
    assert_close_scaled(y.double(), exact(case, inp), twin_tolerance(case, inp), "large mean")
    block = make_resblock(RESBLOCK_SEED).cuda()
    x, emb, cond = resblock_inputs("cuda")
    with torch.no_grad():
        expected = block(x, emb, cond)
        fused = fused_resblock_forward(block, x, emb, cond, gn=adagn.group_norm_silu_triton)
    assert_close_scaled(fused, expected, resblock_tolerance(block, expected), "resblock")


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2:])
