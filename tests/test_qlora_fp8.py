"""fp8 frozen products for QLoRA layers (``train.qlora_fp8``, trainer.gpu.qlora_fp8): the layer's outputs and
gradients within e4m3's rounding of float64, the adapter's gradients at bf16's, keep / skip as the bf16 fold's;
a LoRA model trained with them reaches the loss of the same training in bf16; on a GPU, the compiled QLoRA step
against the bf16 fold."""
from __future__ import annotations

import pytest
import torch

from myassistant.trainer.gpu import qlora_fp8
from myassistant.trainer.gpu.qlora_fp8 import Fp8Linear


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double(), want.detach().double()
    return float((got - want).norm() / want.norm())


def layer_inputs(seed: int = 0, tokens: int = 48, n_in: int = 256, n_out: int = 192, rank: int = 16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, tokens // 2, n_in, generator=g).bfloat16().requires_grad_()
    w = (torch.randn(n_out, n_in, generator=g) * 0.05).bfloat16()
    a = (torch.randn(rank, n_in, generator=g) * 0.05).requires_grad_()
    b = (torch.randn(n_out, rank, generator=g) * 0.05).requires_grad_()
    return x, w, a, b


def grads_of(fn, x, a, b, dy):
    for t in (x, a, b):
        t.grad = None
    y = fn()
    y.backward(dy)
    return y.detach(), x.grad.clone(), a.grad.clone(), b.grad.clone()


def test_a_row_of_e4m3_keeps_its_values_to_a_sixteenth_and_zero_rows_stay_zero():
    t = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, -3.0, 0.2, 1e4], [1e-3, 2e-3, -5e-4, 7e-4]])
    q, scale = qlora_fp8.rowwise_e4m3(t)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (3, 1) and torch.isfinite(scale).all()
    back = q.float() * scale
    assert torch.equal(back[0], torch.zeros(4))
    assert back[1, 3] == pytest.approx(1e4, rel=1e-6)  # the row's largest at e4m3's largest, exactly
    normal = t.abs() >= t.abs().amax(1, keepdim=True) / 64  # scaled to >= 7: e4m3's normal numbers
    assert ((back - t).abs() <= t.abs() * 2**-4 + 1e-30)[normal & (t != 0)].all()
    # column scales multiply first (W's row scales onto dy's columns in backward)
    q2, scale2 = qlora_fp8.rowwise_e4m3(t, torch.tensor([[1.0, 2.0, 1.0, 0.5]]))
    assert q2.float().mul(scale2)[1, 1] == pytest.approx(-6.0, rel=2**-4)


@pytest.mark.parametrize("keep", [False, True])
def test_the_fp8_layer_is_within_e4m3_rounding_of_float64_and_its_adapter_gradients_at_bf16s(keep):
    x, w, a, b = layer_inputs()
    dy = torch.randn(2, 24, 192, generator=torch.Generator().manual_seed(1)).bfloat16()
    y, dx, da, db = grads_of(lambda: Fp8Linear.apply(x, a, b, 2.0, None, keep, False, w), x, a, b, dy)
    x64, a64, b64 = (t.detach().double().requires_grad_() for t in (x, a, b))
    y64 = x64 @ w.double().t() + 2.0 * (x64 @ a64.t()) @ b64.t()
    y64.backward(dy.double())
    # e4m3 rounds each input to 2^-4 relative: ~3.4 % over a product of two; the NF4 weight is ~10 % off its original
    assert y.dtype == torch.bfloat16 and relative(y, y64) < 0.05 and relative(dx, x64.grad) < 0.05
    # the adapter's gradients come from the bf16 x and dy, as the bf16 fold's do
    assert relative(da, a64.grad) < 1e-2 and relative(db, b64.grad) < 1e-2
    assert dx.dtype == x.dtype and da.dtype == db.dtype == torch.float32


def test_a_kept_w8_a_rebuilt_one_and_a_skipped_recompute_give_the_same_gradients():
    """``keep`` saves W8ᵀ instead of the quantised parts; ``skip`` (a recompute whose output nothing reads) returns
    zeros and saves what backward needs: the same backward bit for bit."""
    x, w, a, b = layer_inputs(seed=2)
    dy = torch.randn(2, 24, 192, generator=torch.Generator().manual_seed(3)).bfloat16()
    rebuilt = grads_of(lambda: Fp8Linear.apply(x, a, b, 0.5, None, False, False, w), x, a, b, dy)
    kept = grads_of(lambda: Fp8Linear.apply(x, a, b, 0.5, None, True, False, w), x, a, b, dy)
    for mine, want in zip(kept, rebuilt):
        assert torch.equal(mine, want)
    for keep in (False, True):
        y, *skipped = grads_of(lambda: Fp8Linear.apply(x, a, b, 0.5, None, keep, True, w), x, a, b, dy)
        assert y.shape == rebuilt[0].shape and not y.any()
        for mine, want in zip(skipped, rebuilt[1:]):
            assert torch.equal(mine, want)


def test_a_lora_model_trained_with_fp8_products_reaches_the_loss_of_bf16(tiny_checkpoint, tmp_path):
    """The tiny model's LoRA layers run as ``Fp8Linear`` (their bf16 base weight for the NF4 one, as
    benchmarks/fp8_quality_cpu.py runs the demo's) or as bf16 products, the same 60 AdamW steps on the same packed samples: the fp8 run's loss curve follows the bf16 one."""
    from test_fast_path import packed_samples, run_config
    from benchmarks.fp8_quality_cpu import use_fp8_products
    from myassistant.trainer import data as data_lib
    from myassistant.trainer.lora import build_model

    rows = packed_samples(200)
    losses = {}
    for fp8 in (False, True):
        cfg = run_config(tiny_checkpoint, tmp_path, "lora")
        torch.manual_seed(0)
        model = build_model(cfg).to(torch.bfloat16)
        model.config.use_cache = False
        model.train()
        if fp8:
            use_fp8_products(model)
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            p.data = p.data.float()  # fp32 master weights, as training keeps the adapters
        opt = torch.optim.AdamW(params, lr=3e-3)
        batch = data_lib.collate(rows)
        curve = []
        for _ in range(60):
            loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            curve.append(float(loss))
        losses[fp8] = curve
    bf16, fp8 = losses[False], losses[True]
    assert bf16[-1] < bf16[0] - 1.0  # it learnt (6.93 -> 5.74 nats on random tokens)
    # measured: at most 0.006 nats apart over the 60 steps; an adapter the fp8 products lost would stay near 6.9
    assert max(abs(f - b) for f, b in zip(fp8, bf16)) < 0.05, (fp8, bf16)
    assert fp8 != bf16  # the fp8 products did run


def test_qlora_fp8_is_a_qlora_fast_path_setting():
    from myassistant.trainer.config import RunConfig, validate

    cfg = RunConfig()
    cfg.train.qlora_fp8, cfg.quant.method = True, "lora"
    assert any(e.startswith("train.qlora_fp8: runs QLoRA layers") for e in validate(cfg))
    cfg.quant.method = "qlora"
    assert not any(e.startswith("train.qlora_fp8") for e in validate(cfg))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only answer")
def test_without_an_fp8_gpu_the_setting_says_why():
    assert qlora_fp8.unsupported() == "needs a CUDA GPU"


def test_dequantised_nf4_is_bitsandbytes_own():
    bnbf = pytest.importorskip("bitsandbytes.functional")
    from myassistant.trainer.gpu import qlora_fold

    for quant_type, nested in (("nf4", True), ("fp4", False)):
        q, state = bnbf.quantize_4bit((torch.randn(96, 128) * 0.02).bfloat16(), blocksize=64, quant_type=quant_type,
                                      compress_statistics=nested)
        q.quant_state = state
        quant, meta = qlora_fold._quant_args(q)
        if nested:
            state.offset = torch.as_tensor(state.offset)  # as qlora_fold.apply makes it
        got = qlora_fp8.dequantized(quant, meta + (quant_type,))
        assert torch.equal(got, bnbf.dequantize_4bit(q, state))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_fp8_qlora_step_follows_the_bf16_fold(tiny_checkpoint, tmp_path):
    """The tiny model as ``train`` runs it with ``train.qlora_fp8`` (compiled layers, checkpointed, W8ᵀ kept, the
    last product skipped in the recompute): every layer compiles, fp8 GEMMs run, and the loss and LoRA gradients
    are those of the bf16 fold within e4m3's rounding."""
    if qlora_fp8.unsupported():
        pytest.skip(qlora_fp8.unsupported())
    from test_qlora_fold import checkpointed_step

    (loss, grads, kernels, _), (fp8_loss, fp8_grads, fp8_kernels, _) = (
        checkpointed_step(tiny_checkpoint, tmp_path, fp8=fp8) for fp8 in (False, True))
    assert not any("fold_kernel" in k for k in fp8_kernels) and any("fold_kernel" in k for k in kernels)
    assert any("e4m3_kernel" in k for k in fp8_kernels)
    assert fp8_loss == pytest.approx(loss, rel=2e-2)
    for name, g in grads.items():
        assert (fp8_grads[name] - g).norm() <= 0.1 * g.norm().clamp_min(1e-12), name


def check_conversion(weight, launch=None) -> None:
    """NF4 / FP4 -> e4m3 in one kernel against bitsandbytes' dequantisation scaled per row by ``rowwise_e4m3``:
    the same bits, W8ᵀ the transpose of W8. ``launch``: the kernel under Triton's interpreter (float32 out, cast
    here; the interpreter's own e4m3 cast does not round to nearest)."""
    from myassistant.trainer.gpu import qlora_fold

    quant, meta = qlora_fold._quant_args(weight)
    meta = meta + (weight.quant_state.quant_type,)
    assert launch is not None or qlora_fp8.enabled()  # the custom op registered
    want, want_scale = qlora_fp8.rowwise_e4m3(qlora_fp8.dequantized(quant, meta))
    for rows, cols in ((True, True), (True, False), (False, True)):
        w8, w8t, scale = qlora_fp8._converted(quant, meta, rows, cols, *(() if launch is None else (torch.float32,
                                                                                                   launch)))
        assert torch.equal(scale, want_scale)
        for got, expected, wanted in ((w8, want, rows), (w8t, want.t(), cols)):
            if not wanted:
                assert got.numel() == 0
                continue
            # the same values: bytes, but for the sign of a zero (FP4's code table has -0, which bitsandbytes'
            # CUDA dequantisation keeps and the kernel writes as +0: the same in every product; session 33)
            got, expected = got.to(torch.float8_e4m3fn).view(torch.uint8), expected.contiguous().view(torch.uint8)
            zeros = ((got & 0x7F) == 0) & ((expected & 0x7F) == 0)
            assert torch.equal(torch.where(zeros, 0, got), torch.where(zeros, 0, expected))


def test_the_e4m3_kernel_under_tritons_interpreter():
    pytest.importorskip("triton")
    pytest.importorskip("bitsandbytes")
    from test_decode_attention import run_interpreted

    run_interpreted("import functools, torch, test_qlora_fp8 as t, test_qlora_fold as f\n"
                    "from myassistant.trainer.gpu import qlora_fp8\n"
                    "for shape, quant_type, nested, bm, bn in (((128, 256), 'nf4', True, 64, 128),"
                    " ((96, 192), 'fp4', True, 64, 128), ((64, 384), 'nf4', False, 32, 256)):\n"
                    "    w = f.quantized_weight_on_the_cpu(*shape, quant_type, nested)\n"
                    "    if nested: w.quant_state.offset = torch.as_tensor(w.quant_state.offset)\n"
                    "    launch = functools.partial(qlora_fp8._launch, qlora_fp8._kernel().fn, BM=bm, BN=bn)\n"
                    "    t.check_conversion(w, launch)")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("n_out,n_in,quant_type,nested", [(4096, 2048, "nf4", True), (2048, 8192, "nf4", False),
                                                          (96, 192, "fp4", True)])
def test_gpu_e4m3_kernel_is_the_rounded_dequantised_weight(n_out, n_in, quant_type, nested):
    from test_qlora_fold import quantized_linear

    check_conversion(quantized_linear(n_out, n_in, quant_type, nested).weight)


def instructions(ptx: str) -> list[str]:
    """The kernel's instructions (the mnemonics of its body: no line / file records, no debug sections)."""
    import re

    return re.findall(r"^\s+([a-z][\w.]*)\b", ptx.split(".section")[0], re.M)


def test_the_e4m3_kernel_builds_for_ada_and_hopper_and_from_inductors_copy(tmp_path):
    """Every autotuned tile compiles for sm_89 (L4, RTX 40) and sm_90 (H100 / H200) with e4m3's own rounding
    conversion and, on sm_90, without spilling; the copy of the kernel Inductor launches inside a compiled layer (its
    source read back from a string literal, qlora_fold's test says why) builds to the same PTX."""
    import importlib.util
    import re

    pytest.importorskip("triton")
    from torch._inductor.codegen.wrapper import user_defined_triton_kernel_transitive_closure_source_code
    from benchmarks.gemv_ptx import compile_ptx, ptxas_report

    kernel = qlora_fp8._kernel()
    copy = tmp_path / "inductor_copy.py"
    source = user_defined_triton_kernel_transitive_closure_source_code(kernel.fn)
    copy.write_text("import triton\nimport triton.language as tl\n\n@triton.jit\n" + eval("'''" + source + "'''"))
    spec = importlib.util.spec_from_file_location("inductor_copy", copy)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pointers = dict(q_ptr="u8", absmax_ptr="fp32", code_ptr="fp32", inverse_ptr="fp32", rows_ptr="fp8e4nv",
                    cols_ptr="fp8e4nv")
    for config in kernel.configs:
        consts = dict(BLOCKSIZE=64, ROWS=True, COLS=True, **config.kwargs)
        for arch in (89, 90):
            ptx = compile_ptx(kernel.fn, consts, pointers, config.num_warps, arch=arch).asm["ptx"]
            assert re.search(r"cvt\.rn\.satfinite\.e4m3x2\.f(32|16x2)", ptx), arch
        copied = compile_ptx(module.e4m3_kernel, consts, pointers, config.num_warps).asm["ptx"]
        assert instructions(copied) == instructions(ptx) and len(instructions(ptx)) > 100
        assert " 0 bytes spill stores" in ptxas_report(ptx), config
