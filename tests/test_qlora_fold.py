"""QLoRA folding (trainer.qlora_fold): the one-kernel W + s B A equals bitsandbytes' dequantisation plus
the adapter; a layer that keeps W' for backward gives the gradients of one that rebuilds it. That a folded
model trains like plain peft (loss and LoRA gradients) is
tests/test_fast_path.py::test_fast_path_matches_plain_qlora_on_gpu."""
from __future__ import annotations

import pytest
import torch

from myassistant.trainer.gpu import qlora_fold
from test_decode_attention import run_interpreted

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def quantized_linear(n_out: int, n_in: int, quant_type: str, nested: bool):
    bnb = pytest.importorskip("bitsandbytes")
    layer = bnb.nn.Linear4bit(n_in, n_out, bias=False, compute_dtype=torch.bfloat16, quant_type=quant_type,
                              compress_statistics=nested)
    layer.weight = bnb.nn.Params4bit((torch.randn(n_out, n_in) * 0.02).bfloat16(), requires_grad=False, quant_type=quant_type,
                                     compress_statistics=nested)
    return layer.cuda()


def quantized_weight_on_the_cpu(n_out: int, n_in: int, quant_type: str, nested: bool) -> torch.Tensor:
    """bitsandbytes' packed weight with its quant_state, as Params4bit holds them, quantised on the CPU."""
    bnbf = pytest.importorskip("bitsandbytes.functional")
    q, state = bnbf.quantize_4bit((torch.randn(n_out, n_in) * 0.02).bfloat16(), blocksize=64, quant_type=quant_type,
                                  compress_statistics=nested)
    q.quant_state = state
    return q


def check_fold(weight: torch.Tensor, rank: int, fold=qlora_fold.folded_weight, interpreted: bool = False) -> None:
    """``fold`` of ``weight`` (on its device) against bitsandbytes' dequantisation plus the adapter in fp32.
    ``interpreted``: the adapter's values are ones bf16 holds (Triton's interpreter truncates a cast to bf16)."""
    n_out, n_in = weight.quant_state.shape
    lora_a = torch.randn(rank, n_in, device=weight.device) * 0.05
    lora_a = lora_a.bfloat16().float() if interpreted else lora_a
    lora_b = torch.zeros(n_out, rank, device=weight.device)
    # B = 0 (a fresh adapter): exactly bitsandbytes' dequantisation
    assert torch.equal(fold(weight, lora_a, lora_b, 0.25),
                       qlora_fold.folded_weight_reference(weight, lora_a, lora_b, 0.25).bfloat16())
    lora_b.normal_(std=0.05)
    lora_b.copy_(lora_b.bfloat16() if interpreted else lora_b)
    got = fold(weight, lora_a, lora_b, 0.25).float()
    exact = qlora_fold.folded_weight_reference(weight, lora_a, lora_b, 0.25)
    base = qlora_fold.folded_weight_reference(weight, lora_a, lora_b * 0, 0.25)
    # the reference's W is bitsandbytes' bf16 one: half a unit in the last place of W, half of the sum
    assert ((got - exact).abs() <= (base.abs() + exact.abs()) * 2**-8 + 1e-6).all()


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("n_out,n_in,quant_type,nested,rank", [
    (4096, 2048, "nf4", True, 64),   # the 1.8B model's wqkv, the presets' quantisation
    (2048, 8192, "nf4", False, 64),  # w2 without double quantisation
    (96, 192, "fp4", True, 8),       # sizes off every tile, a rank below tl.dot's 16
])
def test_folded_weight_is_dequantised_weight_plus_adapter(n_out, n_in, quant_type, nested, rank):
    check_fold(quantized_linear(n_out, n_in, quant_type, nested).weight, rank)


def test_the_fold_kernel_under_tritons_interpreter():
    """The kernel's arithmetic on a CPU (small shapes: the interpreter is slow), the same checks as on a GPU."""
    pytest.importorskip("triton")
    pytest.importorskip("bitsandbytes")
    run_interpreted("import functools, test_qlora_fold as t\n"
                    "for shape, quant_type, nested, rank, bm, bn in (((128, 256), 'nf4', True, 64, 64, 128),"
                    " ((96, 192), 'fp4', True, 8, 64, 128), ((64, 384), 'nf4', False, 16, 32, 256)):\n"
                    "    t.check_fold(t.quantized_weight_on_the_cpu(*shape, quant_type, nested), rank,"
                    " functools.partial(t.qlora_fold.folded_weight_launched, BM=bm, BN=bn, ASM=False), interpreted=True)")



def float_ops_of_the_kernel_for_sm90(nested: bool, kernel=None) -> list[str]:
    """The float32 arithmetic of the fold kernel's PTX (or ``kernel``'s, a copy of it) for an H100 / H200, compiled
    without a GPU, for bf16 adapters as ``qlora_fold._folded`` passes them."""
    import re

    pytest.importorskip("triton")
    from benchmarks.gemv_ptx import compile_ptx

    kernel = kernel or qlora_fold._kernel().fn
    pointers = dict(q_ptr="u8", absmax_ptr="u8" if nested else "fp32", absmax2_ptr="fp32", code2_ptr="fp32",
                    offset_ptr="fp32", code_ptr="fp32", a_ptr="bf16", b_ptr="bf16", out_ptr="bf16")
    consts = dict(BLOCKSIZE=64, BLOCKSIZE2=256, NESTED=nested, R=64, BM=64, BN=128, ASM=True)
    ptx = compile_ptx(kernel, consts, pointers, 4).asm["ptx"]
    return re.findall(r"\b(?:mul|fma|add)\.[a-z.]*f32\b", ptx)


def test_double_quantised_absmax_is_rounded_twice_as_bitsandbytes_does():
    """bitsandbytes dequantises a nested absmax as code2[q] * absmax2 (rounded) and then + offset in another op;
    one fused multiply-add there moves ~8 % of the absmax by a unit and now and then a bf16 weight, which failed
    the gpu test above once. Read from the kernel's sm_90 PTX: one separately rounded multiply and one add more
    than without nesting, no fused multiply-add more."""
    nested, plain = float_ops_of_the_kernel_for_sm90(True), float_ops_of_the_kernel_for_sm90(False)
    assert nested.count("mul.rn.f32") == plain.count("mul.rn.f32") + 1
    assert nested.count("add.f32") == plain.count("add.f32") + 1
    assert nested.count("fma.rn.f32") == plain.count("fma.rn.f32") > 0


def test_the_fold_kernel_builds_from_the_copy_torch_compile_makes_of_it(tmp_path):
    """Inside a compiled layer, Inductor runs a copy of the kernel: its source and the Triton helpers it finds in the
    kernel's module globals, written to a module of its own. A helper the kernel reached otherwise (a closure) was
    missing there: every compiled layer fell back to eager and the step's CUDA graph failed (7B bs2: 6,402 tok/s
    instead of 10,469 once fixed, session 28). The copy must build, to the same arithmetic."""
    import importlib.util

    pytest.importorskip("triton")
    from torch._inductor.codegen.wrapper import user_defined_triton_kernel_transitive_closure_source_code

    copy = tmp_path / "inductor_copy.py"  # Triton reads a kernel's source from its file
    source = user_defined_triton_kernel_transitive_closure_source_code(qlora_fold._kernel().fn)
    # Inductor's module holds that source in a ''' string literal, read back here as Python reads it: torch 2.11 did
    # not escape its backslashes, so a backslash escape in a string of the source breaks the module (layers run eagerly)
    copy.write_text("import triton\nimport triton.language as tl\n\n@triton.jit\n" + eval("'''" + source + "'''"))
    spec = importlib.util.spec_from_file_location("inductor_copy", copy)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for nested in (True, False):
        assert float_ops_of_the_kernel_for_sm90(nested, module.fold_kernel) == float_ops_of_the_kernel_for_sm90(nested)


def compiled_qlora(tiny_checkpoint, tmp_path, fp8: bool = False, **apply):
    """The tiny model as ``train`` runs it on a GPU (folded QLoRA, compiled layers, W' kept; ``fp8``: with
    ``train.qlora_fp8``), a packed batch, and how many folded layers it has."""
    pytest.importorskip("bitsandbytes")
    from test_fast_path import packed_samples, randomize_lora, run_config
    from myassistant.trainer.gpu import fast
    from myassistant.trainer.lora import build_model

    cfg = run_config(tiny_checkpoint, tmp_path, "qlora")
    torch.manual_seed(0)  # the same adapters each call
    model = build_model(cfg)
    randomize_lora(model)
    cfg.train.qlora_keep_folded, cfg.train.qlora_fp8 = True, fp8
    fast.apply(model, cfg, compile=True, **apply)
    model.config.use_cache = False
    model.train()
    return model, fast.collate(packed_samples(model.config.vocab_size)), sum(hasattr(m, "_peft_forward")
                                                                              for m in model.modules())


def profiled_step(model, batch) -> tuple[float, dict, list[str]]:
    """Loss, LoRA gradients and the CUDA kernels' names of a step (after one to compile and autotune); every layer
    compiled (torch.compile's errors are suppressed: a layer that failed would run eagerly and pass the comparisons)."""
    from test_fast_path import loss_and_grads
    from myassistant.trainer.gpu import fast

    loss_and_grads(model, batch)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        loss, grads = loss_and_grads(model, batch)
        torch.cuda.synchronize()
    assert fast.compile_failure(model) is None, fast.compile_failure(model)
    return loss, grads, [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("n_out,n_in", [(256, 384), (96, 192)])
def test_the_fold_compiles_into_a_graph_as_it_runs_eagerly(n_out, n_in):
    """The fold op inside torch.compile (Inductor writes its own launch of the kernel from a copy of its source)
    gives eager's W', with whole tiles and with a ragged edge; fullgraph: a failure raises instead of running eagerly."""
    weight = quantized_linear(n_out, n_in, "nf4", True).weight
    lora_a = torch.randn(64, n_in, device="cuda") * 0.05
    lora_b = torch.randn(n_out, 64, device="cuda") * 0.05
    quant, meta = qlora_fold._quant_args(weight)  # as a folded layer's forward reaches the op (``_forward``)
    qlora_fold._op()
    compiled = torch.compile(lambda a, b: qlora_fold._folded(quant, meta, a, b, 0.25) * 1.0, fullgraph=True)
    eager = qlora_fold.folded_weight(weight, lora_a, lora_b, 0.25)
    # the two autotuners may pick different tiles: the same sums, their order per element at most a bf16 unit apart
    torch.testing.assert_close(compiled(lora_a, lora_b), eager, rtol=2**-7, atol=1e-6)


def checkpointed_step(tiny_checkpoint, tmp_path, **apply) -> tuple[float, dict, list[str], int]:
    """``profiled_step`` of ``compiled_qlora(..., **apply)`` under activation checkpointing (as ``train`` runs it), and
    its number of folded layers."""
    model, batch, layers = compiled_qlora(tiny_checkpoint, tmp_path, **apply)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return (*profiled_step(model, batch), layers)


@pytest.mark.gpu
@gpu
def test_kept_folded_weights_fold_each_layer_twice_a_step_and_change_nothing(tiny_checkpoint, tmp_path):
    """``train.qlora_keep_folded`` (the default), compiled layers under activation checkpointing: the W' the recompute
    builds serves the backward, so a step folds each layer twice (first forward, recompute), not three times,
    with the loss and gradients of the same model without a checkpoint (which folds in forward and backward)."""
    model, batch, layers = compiled_qlora(tiny_checkpoint, tmp_path)
    loss, grads, kernels = profiled_step(model, batch)
    folds = sum("fold_kernel" in k for k in kernels)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    kept_loss, kept_grads, kernels = profiled_step(model, batch)
    kept_folds = sum("fold_kernel" in k for k in kernels)
    # without a checkpoint a layer folds in forward and in backward, unless the compiled graph keeps the forward's
    # W' for backward itself (the op is pure, so AOTAutograd may save its output: 25 of 28 folds on an H200)
    assert layers > 0 and kept_folds == 2 * layers and layers <= folds <= 2 * layers, (folds, kept_folds, layers)
    assert kept_loss == pytest.approx(loss, rel=1e-5)
    # the two compiled graphs (with and without a checkpoint) round their bf16 intermediates apart: 6.8e-3 of a
    # gradient's norm on an H200 (session 28); a wrong W' for the backward would be off by its whole size
    for name, g in grads.items():
        assert (kept_grads[name] - g).norm() <= 2e-2 * g.norm().clamp_min(1e-12), name


@pytest.mark.gpu
@gpu
def test_the_recompute_skips_each_layers_last_product_and_changes_nothing(tiny_checkpoint, tmp_path):
    """Compiled, checkpointed decoder layers (``fast.LAST_PRODUCT``): the recompute leaves out the MLP's output
    product (fewer GEMMs a step, the same folds) and the step's loss and LoRA gradients are those of the recompute
    in full (``skip_last_product=False``)."""
    (loss, grads, kernels, layers), (skip_loss, skip_grads, skip_kernels, _) = (
        checkpointed_step(tiny_checkpoint, tmp_path, skip_last_product=skip) for skip in (False, True))

    def gemms(names):
        return sum(any(k in name.lower() for k in ("gemm", "nvjet", "cutlass", "sm90")) for name in names)
    assert sum("fold_kernel" in k for k in skip_kernels) == sum("fold_kernel" in k for k in kernels) == 2 * layers
    assert 0 < gemms(skip_kernels) < gemms(kernels), (gemms(skip_kernels), gemms(kernels))
    assert skip_loss == pytest.approx(loss, rel=1e-5)
    for name, g in grads.items():  # the saved tensors are the same; only the thrown-away layer output differs
        assert (skip_grads[name] - g).norm() <= 1e-3 * g.norm().clamp_min(1e-12), name


@pytest.mark.parametrize("keep", [False, True])
def test_kept_w_under_a_checkpoint_folds_twice_a_step_with_the_same_gradients(monkeypatch, keep):
    """The layer's autograd (CPU; the fold as W + s B A in torch): under a non-reentrant activation checkpoint a
    kept W' (the recompute's) serves the backward, so a step folds twice instead of three times, and x, A and B get
    the gradients of ``x @ (W + s B A).T``."""
    from torch.utils.checkpoint import checkpoint

    folds = []

    def fold(quant, meta, lora_a, lora_b, scale):  # stands in for the kernel: quant[0] is the dense weight
        folds.append(1)
        return quant[0] + scale * lora_b @ lora_a

    monkeypatch.setattr(qlora_fold, "_folded", fold)
    g = torch.Generator().manual_seed(0)
    w, x, a, b = (torch.randn(*shape, generator=g, dtype=torch.float64)
                  for shape in ((24, 16), (2, 5, 16), (4, 16), (24, 4)))
    for t in (x, a, b):
        t.requires_grad_()
    layer = lambda x: qlora_fold._FoldedLinear.apply(x, a, b, 0.5, (), keep, False, w).square().sum()  # noqa: E731
    checkpoint(layer, x, use_reentrant=False).backward()
    assert len(folds) == (2 if keep else 3)
    got = [t.grad.clone() for t in (x, a, b)]
    for t in (x, a, b):
        t.grad = None
    torch.nn.functional.linear(x, w + 0.5 * b @ a).square().sum().backward()
    for mine, want in zip(got, (x.grad, a.grad, b.grad)):
        torch.testing.assert_close(mine, want)


@pytest.mark.parametrize("keep", [False, True])
def test_a_recompute_skips_the_product_whose_output_backward_never_reads(monkeypatch, keep):
    """A layer ``h = x + L1(x); out = h + L2(relu(h))`` under a checkpoint whose recompute runs in
    ``qlora_fold.recomputing()`` (what trainer.gpu.fast does; L2 stands for a decoder layer's MLP output product):
    the recompute saves L2's input (and W') but does not multiply, so a step runs three products where it ran four,
    and x, A and B get the gradients of the layer computed in full (CPU; the fold as W + s B A in torch)."""
    from contextlib import nullcontext

    from torch.utils.checkpoint import checkpoint

    monkeypatch.setattr(qlora_fold, "_folded", lambda quant, meta, lora_a, lora_b, scale: quant[0] + scale * lora_b @ lora_a)
    g = torch.Generator().manual_seed(0)
    x, w1, a1, b1, w2, a2, b2 = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in
                                 ((2, 5, 16), (16, 16), (4, 16), (16, 4), (16, 16), (4, 16), (16, 4)))
    meta = (16, 16, 64, 1, False, torch.float64)  # n_out ... dtype, as _quant_args gives them
    leaves = (x, a1, b1, a2, b2)
    for t in leaves:
        t.requires_grad_()

    def layer(x):
        h = x + qlora_fold._FoldedLinear.apply(x, a1, b1, 0.5, meta, keep, False, w1)
        return h + qlora_fold._FoldedLinear.apply(h.relu(), a2, b2, 0.5, meta, keep, qlora_fold._recomputing, w2)

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        checkpoint(layer, x, use_reentrant=False,
                   context_fn=lambda: (nullcontext(), qlora_fold.recomputing())).square().sum().backward()
    assert sum(e.name == "aten::linear" for e in prof.events()) == 3  # forward 2, recompute 1
    assert not qlora_fold._recomputing
    got = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    h = x + torch.nn.functional.linear(x, w1 + 0.5 * b1 @ a1)
    (h + torch.nn.functional.linear(h.relu(), w2 + 0.5 * b2 @ a2)).square().sum().backward()
    for mine, want in zip(got, (t.grad for t in leaves)):
        torch.testing.assert_close(mine, want)
