"""The decode step's fused matrix products (chat.gemv): RMSNorm prologue, SiLU*mul and residual epilogues,
float32 logits; against the same steps in float64 (each rounding the model's modules make, made too), and a
whole decode step with the kernels against the model's modules.

On a GPU the Triton kernel runs for real (`gpu`); on a CPU under Triton's interpreter when Triton is installed
(its bf16 conversions truncate, so bf16 is checked loosely there and float32 tightly)."""
from __future__ import annotations

import re

import pytest
import torch
from test_decode_attention import needs_triton, run_interpreted
from torch.nn import functional as F

# (norm, gated, residual, float32 out): the products of a decode step (qkv, gate/up, o/down, lm_head) and a bare one
VARIANTS = [(True, False, False, False), (True, True, False, False), (False, False, True, False),
            (True, False, False, True), (False, False, False, False)]


def reference(x, w, res, nw, gated, dtype):
    """float64 with the modules' roundings to `dtype` (normalised input, norm output, product, SiLU, up)."""
    r = lambda t: t.to(dtype).double()  # noqa: E731
    h = x.double()
    if nw is not None:
        h = r(nw.double() * r(h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)))
    y = h @ w.double().T
    if gated:
        g, u = y.chunk(2, -1)
        y = r(F.silu(r(g))) * r(u)
    if res is not None:
        y = res.double() + r(y)
    return y


# the weight forms `check` multiplies by: (bits, dtype), int8 / int4 against their dequantised matrices
FORMS = {"fp32": (16, torch.float32), "bf16": (16, torch.bfloat16), "int8": (8, torch.bfloat16),
         "int4": (4, torch.bfloat16)}


def squares_of(t: torch.Tensor) -> torch.Tensor:
    """Each row's sum of squares as chat.gemv_epilogue hands it on: int64 in units of 2^-20."""
    return (t.double().pow(2).sum(-1) * 2 ** 20).round().long()


def check_squares(case: str, product, x: torch.Tensor, got: torch.Tensor, norm: bool, residual: bool) -> None:
    """The sums of squares handed on: a product with the residual add leaves its output rows' (to within the
    float32 block sums' rounding); a product with the norm given them computes what it computes from the rows."""
    if residual:
        squares = torch.zeros(got.shape[0], dtype=torch.int64, device=got.device)
        again = product(squares_out=squares)
        want = squares_of(again)
        assert torch.equal(again, got), f"{case}: the output changed with squares_out"
        assert ((squares - want).abs() <= 1e-5 * want + 64).all(), f"{case}: squares {squares} for {want}"
    if norm:
        shared = product(squares_in=squares_of(x))
        err = float((shared.double() - got.double()).norm() / got.double().norm())
        assert err <= (1e-5 if got.dtype == torch.float32 else 2e-3), f"{case}: with squares_in: error {err}"


def check(device: str, bf16_tol: float, forms: tuple[str, ...] = tuple(FORMS)) -> None:
    """Every fusion over the weight `forms`."""
    for form in forms:
        bits, dtype = FORMS[form]
        check_form(device, bits, dtype, 1e-5 if dtype == torch.float32 else bf16_tol)


def check_form(device: str, bits: int, dtype: torch.dtype, tol: float) -> None:
    from myassistant.chat.gemv import product
    from myassistant.chat.int_weights import dequantize, quantize

    gen = torch.Generator().manual_seed(0)
    for norm, gated, residual, out_float in VARIANTS:
        for rows, n, k in ((1, 72, 256), (1, 40, 1024), (3, 64, 512), (8, 48, 1024), (16, 80, 256)):
            w = (torch.randn(2 * n if gated else n, k, generator=gen) * k ** -0.5).to(device, dtype)
            x = torch.randn(rows, k, generator=gen).to(device, dtype)
            nw = torch.nn.RMSNorm(k, eps=1e-5).to(device, dtype).requires_grad_(False) if norm else None
            if nw is not None:
                nw.weight.copy_(1 + 0.1 * torch.randn(k, generator=gen))
                nw.variance_epsilon = 1e-5
            res = torch.randn(rows, n, generator=gen).to(device, dtype) if residual else None
            weight = w if bits == 16 else quantize(w, bits)
            exact = w if bits == 16 else dequantize(weight, torch.float64 if bits == 8 else dtype)
            want = reference(x, exact, res, None if nw is None else nw.weight, gated, dtype)
            case = f"{bits} bits {dtype} norm={norm} gated={gated} residual={residual} rows={rows} n={n} k={k}"
            got = product(x, weight, res, nw, gated, out_float)
            assert got.shape == want.shape and got.dtype == (torch.float32 if out_float else dtype)
            err = float((got.double() - want).norm() / want.norm())
            assert err <= tol, f"{case}: error {err}"
            check_squares(case, lambda **squares: product(x, weight, res, nw, gated, out_float, **squares), x, got,
                          norm, residual)


def test_weight_only_quantisation_round_trip():
    from myassistant.chat.int_weights import dequantize, quantize

    w = torch.randn(96, 512, generator=torch.Generator().manual_seed(0)) * 0.02
    for bits, tol in ((8, 0.01), (4, 0.15)):
        q = quantize(w, bits)
        assert q.q.shape == (96, 512 if bits == 8 else 256)
        err = float((dequantize(q, torch.float32) - w).norm() / w.norm())
        assert err <= tol, f"{bits} bits: relative error {err}"
        rows = dequantize(type(q)(q.q[10:20], q.scale[10:20]), torch.float32)  # rows slice like the matrix's
        assert torch.equal(rows, dequantize(q, torch.float32)[10:20])


def check_decode_step(device: str, dtype: torch.dtype, tol: float, bits: int = 16, compiled: bool = False) -> None:
    """A decode step with the fused kernels (forced on where they are not used by default) against the modules
    (with `bits` < 16: both over the same weight-only quantised layers, chat.weight_only: the modules multiply by
    the dequantised matrices). `compiled`: the fused products inside the torch.compile'd layer (attention outside
    the one-kernel form, as a GPU runs caches shorter than a bucket)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from myassistant.chat import attention, fast, gemv, weight_only

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=500, rms_norm_eps=1e-5)
    model = LlamaForCausalLM(config).to(device, dtype).eval()
    if bits < 16:
        weight_only.to_device(model, torch.device(device), bits, model.model.layers)
    ids = torch.randint(0, 500, (2, 12), device=device)
    usable, uses_split = gemv.usable, attention.uses_split
    logits = []
    for fused in (False, True):
        gemv.usable = (lambda w, rows: rows <= gemv.MAX_ROWS) if fused else (lambda w, rows: False)
        # fused: rotary, cache writes and attention in one kernel (chat.attention), also on short caches and CPUs
        attention.uses_split = (lambda q, length: fused and not compiled)
        decoder = fast.StaticCacheDecoder(model, 64, compile=fused and compiled)
        cache = decoder.new_cache(rows=2)
        with torch.inference_mode():
            for row in range(2):
                decoder.prefill(ids[row:row + 1, :10], cache, row)
            positions = torch.tensor([10, 10], device=device)
            decoder.decode(ids[:, 10], positions, cache, 16)
            logits.append(decoder.decode(ids[:, 11], positions + 1, cache, 16))
    gemv.usable, attention.uses_split = usable, uses_split
    err = float((logits[1] - logits[0]).norm() / logits[0].norm())
    assert err <= tol, f"{dtype}, {bits} bits: fused decode step differs from the modules' by {err}"


def check_one_row(device: str, tol: float) -> None:
    """Every one-row candidate of chat.gemv_rows (each block and K split) over int4 and int8 weights, with each
    fusion, against the float64 product of the dequantised matrix."""
    from myassistant.chat import gemv_rows
    from myassistant.chat.int_weights import dequantize, quantize

    gen = torch.Generator().manual_seed(1)
    for bits in (4, 8):
        for norm, gated, residual, out_float in VARIANTS:
            for n, k in ((72, 1024), (40, 512)):
                w = (torch.randn(2 * n if gated else n, k, generator=gen) * k ** -0.5).to(device, torch.bfloat16)
                x = torch.randn(1, k, generator=gen).to(device, torch.bfloat16)
                x[0, :8] *= 1000  # a chunk far larger than the rest: its power-of-two scaling keeps fp16 finite
                nw = (1 + 0.1 * torch.randn(k, generator=gen)).to(device, torch.bfloat16) if norm else None
                res = torch.randn(1, n, generator=gen).to(device, torch.bfloat16) if residual else None
                weight = quantize(w, bits)
                want = reference(x, dequantize(weight, torch.bfloat16), res, nw, gated, torch.bfloat16)
                configs = gemv_rows.candidates(n, k, bits)
                assert {c[0] for c in configs} == {4, 8, 16}
                check_one_row_configs(f"{bits} bits", configs, x, weight, res, nw, gated, out_float, want, tol)


def check_mma_rows(device: str, tol: float, shapes: tuple = ((72, 1024), (40, 512), (256, 2048))) -> None:
    """Every candidate of chat.gemv_mma (1-8 bf16 rows against int4 weights, products on the tensor cores; under
    Triton's interpreter its form without PTX) with each fusion, against the float64 product of the dequantised
    matrix: weight rows (n, k in `shapes`) in whole and part tiles, K in one and in several trips and slices."""
    from myassistant.chat import gemv_mma
    from myassistant.chat.int_weights import dequantize, quantize

    gen = torch.Generator().manual_seed(4)
    for rows, (norm, gated, residual, out_float) in [(1, v) for v in VARIANTS] + [(3, VARIANTS[1]), (8, VARIANTS[0]),
                                                                                 (8, VARIANTS[2])]:
        for n, k in shapes:
            w = (torch.randn(2 * n if gated else n, k, generator=gen) * k ** -0.5).to(device, torch.bfloat16)
            x = torch.randn(rows, k, generator=gen).to(device, torch.bfloat16)
            x[0, :8] *= 1000  # bf16 products: no range to keep
            nw = (1 + 0.1 * torch.randn(k, generator=gen)).to(device, torch.bfloat16) if norm else None
            res = torch.randn(rows, n, generator=gen).to(device, torch.bfloat16) if residual else None
            weight = quantize(w, 4)
            want = reference(x, dequantize(weight, torch.bfloat16), res, nw, gated, torch.bfloat16)
            configs = gemv_mma.candidates(n, k, rows)
            assert len(configs) >= 2 and any(c[2] > 1 for c in configs), configs
            configs.append((32, 256, 2, 1, gemv_mma.TAG))  # two tiles a program: the kernel takes them too
            check_one_row_configs(f"int4 mma, {rows} rows", configs, x, weight, res, nw, gated, out_float, want, tol)


def check_one_row_configs(label: str, configs: list[tuple], x, weight: tuple, res, nw, gated: bool, out_float: bool,
                          want: torch.Tensor, tol: float) -> None:
    """Each one-row configuration of chat.gemv._launch over `weight` (q, scale) against `want`, and the squares it
    hands on or takes."""
    from myassistant.chat import gemv

    n, norm, residual = want.shape[1], nw is not None, res is not None
    for config in configs:
        def launch(config=config, **squares):
            out = torch.empty(x.shape[0], n, device=x.device, dtype=torch.float32 if out_float else torch.bfloat16)
            gemv._launch(x, *weight, out, res, nw, 1e-5, gated, config, **squares)
            return out
        out = launch()
        err = float((out.double() - want).norm() / want.norm())
        case = f"{label} {config} norm={norm} gated={gated} residual={residual} n={n} k={x.shape[1]}"
        assert err <= tol, f"{case}: error {err}"
        check_squares(case, launch, x, out, norm, residual)


def check_dense_one_row(device: str, tol: float) -> None:
    """Every one-row candidate of chat.gemv_dense_rows (bf16 weights on the CUDA cores: each block and K split) with
    each fusion, against float64 with the modules' roundings."""
    from myassistant.chat import gemv_dense_rows

    gen = torch.Generator().manual_seed(3)
    for norm, gated, residual, out_float in VARIANTS:
        for n, k in ((80, 1024), (48, 512), (16, 4096)):
            w = (torch.randn(2 * n if gated else n, k, generator=gen) * k ** -0.5).to(device, torch.bfloat16)
            x = torch.randn(1, k, generator=gen).to(device, torch.bfloat16)
            nw = (1 + 0.1 * torch.randn(k, generator=gen)).to(device, torch.bfloat16) if norm else None
            res = torch.randn(1, n, generator=gen).to(device, torch.bfloat16) if residual else None
            want = reference(x, w, res, nw, gated, torch.bfloat16)
            configs = gemv_dense_rows.candidates(n, k, gated)
            # one trip over the whole K, and several where K is longer than the tiles
            assert len(configs) >= 2 and any(c[1] < k for c in configs) == (k > 2048), configs
            check_one_row_configs("bf16", configs, x, (w, None), res, nw, gated, out_float, want, tol)


def check_prefill_tiles(device: str, tol: float) -> None:
    """A short prompt's products against int8 / int4 weights (17-128 rows, one tile: chat.gemv.PREFILL_ROWS) in each
    tile candidate, against the float64 product of the dequantised matrix rounded to bf16."""
    from myassistant.chat import gemv, gemv_pick
    from myassistant.chat.int_weights import dequantize, quantize

    gen = torch.Generator().manual_seed(2)
    for bits in (8, 4):
        for rows, n, k in ((17, 72, 256), (64, 48, 512), (100, 80, 256)):
            w = (torch.randn(n, k, generator=gen) * k ** -0.5).to(device, torch.bfloat16)
            x = torch.randn(rows, k, generator=gen).to(device, torch.bfloat16)
            weight = quantize(w, bits)
            want = reference(x, dequantize(weight, torch.bfloat16), None, None, False, torch.bfloat16)
            assert gemv.tile_rows(rows) in (32, 64, 128)
            for config in gemv_pick.tile_candidates(n, k, bits):
                out = torch.empty(rows, n, device=device, dtype=torch.bfloat16)
                gemv._launch(x, *weight, out, None, None, 0.0, False, config)
                err = float((out.double() - want).norm() / want.norm())
                assert err <= tol, f"{bits} bits {config} rows={rows} n={n} k={k}: error {err}"
            got = gemv.product(x, weight)  # what chat.weight_only.linear runs for these rows on a GPU
            assert float((got.double() - want).norm() / want.norm()) <= tol


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_prefill_tiles():
    from myassistant.chat import gemv, weight_only
    from myassistant.chat.int_weights import quantize

    check_prefill_tiles("cuda", 1e-2)
    weight = quantize(torch.randn(64, 256, device="cuda", dtype=torch.bfloat16), 8)
    assert gemv.prefill_usable(weight, 64) and not gemv.prefill_usable(weight, gemv.PREFILL_ROWS + 1)
    x = torch.randn(200, 256, device="cuda", dtype=torch.bfloat16)  # more rows: the dequantised matrix and cuBLAS
    tile, dequantised = weight_only.linear(x[:100], weight).double(), weight_only.linear(x, weight)[:100].double()
    # cuBLAS multiplies by the weights rounded to bf16 (q * scale), the kernel by q, its sums then scaled
    assert float((tile - dequantised).norm() / dequantised.norm()) <= 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_one_row_products():
    check_one_row("cuda", 1e-2)
    check_dense_one_row("cuda", 1e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_int4_products_of_up_to_8_rows_on_the_tensor_cores():
    check_mma_rows("cuda", 1e-2)


@needs_triton
@pytest.mark.parametrize("n,k,gated,norm,block_k,split", [(14336, 4096, True, True, 512, 2),
                                                          (6144, 4096, False, True, 128, 8),
                                                          (4096, 14336, False, False, 256, 8)])
def test_int4_mma_products_compile_for_hopper_without_spills_or_shared_memory(n, k, gated, norm, block_k, split):
    """chat.gemv_mma's kernel for the 7B shape's products in configurations it picks (gate/up over 4 groups a trip:
    the most registers) compiled for sm_90 by Triton's own ptxas, no GPU needed: no spilled register, 16-byte loads,
    and no shared memory in its loop: the mma fragments are the loaded words as the compiler lays them out (lanes on
    the tensors' first dimension), with no layout conversion between the loads and the mma."""
    from benchmarks.gemv_ptx import compile_ptx, ptxas_report
    from myassistant.chat import gemv_mma

    consts = dict(N=n, K=k, NORM=norm, SHARED_NORM=norm, GATED=gated, RESIDUAL=not norm, SQUARES=not norm, T=1,
                  KW=block_k // 128, SPLIT=split, ASM=True)
    pointers = {name: "fp32" if name in ("ws_ptr", "s_ptr") else "i64" if name.startswith("sq_") else "i32"
                if name in ("w_ptr", "count_ptr") else "bf16" for name in gemv_mma._mma_kernel.arg_names
                if name.endswith("_ptr")}
    ptx = compile_ptx(gemv_mma._mma_kernel, consts, pointers, 1).asm["ptx"]
    assert "0 bytes spill stores, 0 bytes spill loads" in ptxas_report(ptx)
    assert "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32" in ptx and "ld.global.v4.b32" in ptx
    header = re.search(r"^(\$L__BB\d+_\d+):.*Loop Header", ptx, re.M)  # the loop over the trips: from its label
    back = re.compile(rf"bra(\.uni)?\s+\{header.group(1)};")  # its jump back
    loop = ptx[header.start():back.search(ptx, header.start()).start()]
    assert loop.count("mma.sync") == 8 * block_k // 128 * (2 if gated else 1) and ".shared" not in loop


@needs_triton
@pytest.mark.parametrize("arch", [80, 86, 89, 90])
def test_int4_kernels_compile_for_ampere_ada_and_hopper(arch):
    """The bf16 int4 products (chat.gemv's tensor-core tile, chat.gemv_mma's kernel) build for the A100 / A10G / L4
    GPUs of hosted tiers as for an H100 (Triton's ptxas, no GPU): their inline PTX had used bf16x2 subtractions and
    multiplies, which ptxas takes from sm_90 only, so int4 serving failed at its first product on those GPUs."""
    from benchmarks.gemv_ptx import compile_ptx
    from myassistant.chat import gemv, gemv_mma

    pointers = {name: "fp32" if name in ("ws_ptr", "s_ptr") else "i64" if name.startswith("sq_") else "i32"
                if name == "count_ptr" else "bf16" for name in gemv._gemv_kernel.arg_names if name.endswith("_ptr")}
    tile = dict(K=4096, NORM=True, SHARED_NORM=True, GATED=True, RESIDUAL=False, SQUARES=False, QUANT=4, BLOCK_M=16,
                BLOCK_N=32, BLOCK_K=256, SPLIT=1, STAGES=3, UPCAST=False, PRECISION="tf32", GROUP=128, MAGIC=-1)
    assert compile_ptx(gemv._gemv_kernel, tile, {**pointers, "w_ptr": "u8"}, 4, arch=arch).asm["cubin"]
    mma = dict(N=14336, K=4096, NORM=True, SHARED_NORM=True, GATED=True, RESIDUAL=False, SQUARES=False, T=1, KW=2,
               SPLIT=2, ASM=True)
    assert compile_ptx(gemv_mma._mma_kernel, mma, {**pointers, "w_ptr": "i32"}, 1, arch=arch).asm["cubin"]


@needs_triton
def test_int4_products_of_up_to_8_rows_under_tritons_interpreter():
    """chat.gemv_mma's kernel with its mma and bf16x2 multiplies in plain arithmetic (the lanes' sums as the mma
    adds them): its addressing, masks, scales and epilogue; the PTX itself is the gpu test's."""
    run_interpreted("import test_gemv as t; t.check_mma_rows('cpu', 4e-2, ((40, 512),))")


@needs_triton
def test_fused_products_and_decode_step_under_tritons_interpreter():
    run_interpreted("import torch, test_gemv as t; t.check('cpu', 4e-2); t.check_one_row('cpu', 4e-2); t.check_dense_one_row('cpu', 4e-2);"
                    "t.check_prefill_tiles('cpu', 4e-2);"
                    "t.check_decode_step('cpu', torch.float32, 1e-5); t.check_decode_step('cpu', torch.float32, 1e-5, compiled=True);"
                    "t.check_decode_step('cpu', torch.bfloat16, 3e-2);"
                    "t.check_decode_step('cpu', torch.bfloat16, 3e-2, 8);"
                    "t.check_decode_step('cpu', torch.bfloat16, 3e-2, 4)")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("form", list(FORMS))
def test_gpu_fused_products(monkeypatch, form):
    """One weight form a test (each compiles ~25 kernels: a time-boxed device call reports those it reached)."""
    from myassistant.chat import gemv

    monkeypatch.setattr(gemv, "TIME_CANDIDATES", False)  # timing every candidate of 20 small shapes takes minutes
    check("cuda", 1e-2, (form,))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype,bits", [(torch.float32, 16), (torch.bfloat16, 16), (torch.bfloat16, 8),
                                        (torch.bfloat16, 4)], ids=["fp32", "bf16", "int8", "int4"])
def test_gpu_fused_decode_step(monkeypatch, dtype, bits):
    from myassistant.chat import gemv

    monkeypatch.setattr(gemv, "TIME_CANDIDATES", False)
    check_decode_step("cuda", dtype, 1e-5 if dtype == torch.float32 else 1e-2, bits)
