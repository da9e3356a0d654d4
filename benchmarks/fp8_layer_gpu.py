"""Is ``train.qlora_fp8`` faster, layer by layer? One JSON line per 7B (or 1.8B) weight shape and token count.

    python -m benchmarks.fp8_layer_gpu          (SHAPE=7b | 1_8b; a GPU with fp8 tensor cores, bitsandbytes)

For each QLoRA linear layer of the model (Llama layout, as peft wraps it: q, k, v, o, gate, up, down) and 2,048 /
4,096 tokens (a 7B step at bs1 / bs2), microseconds of:

- the weight each step makes: the bf16 fold (``qlora_fold``, W + s B A) against the NF4 -> e4m3 kernel writing W8
  and W8ᵀ (``qlora_fp8._converted``) and bitsandbytes' dequantisation followed by ``rowwise_e4m3`` (the path
  without the kernel);
- the products: bf16 ``x W'ᵀ`` and ``dy W'`` (cuBLAS) against their e4m3 forms (``torch._scaled_mm`` with a
  scale a row, x / dy quantised by ``rowwise_e4m3`` in the time) plus the adapter's bf16 addmm;
- the whole layer, forward and backward, through ``qlora_fold._FoldedLinear`` and ``qlora_fp8.Fp8Linear`` (W'
  / W8ᵀ kept, as under a checkpoint), compiled as a training step compiles it.

Every time is a CUDA graph of 20 calls over the same tensors (``fold_kernel.time_us``).
"""
from __future__ import annotations

import json
import os

import torch

from benchmarks.fold_kernel import time_us
from myassistant.trainer.gpu import qlora_fold, qlora_fp8

SHAPES = {"7b": dict(q=(4096, 4096), k=(1024, 4096), v=(1024, 4096), o=(4096, 4096), gate=(14336, 4096),
                     up=(14336, 4096), down=(4096, 14336)),
          "1_8b": dict(q=(2048, 2048), k=(1024, 2048), v=(1024, 2048), o=(2048, 2048), gate=(8192, 2048),
                       up=(8192, 2048), down=(2048, 8192))}
RANK = 64


def layer(n_out: int, n_in: int):
    import bitsandbytes as bnb

    weight = bnb.nn.Params4bit((torch.randn(n_out, n_in) * 0.02).bfloat16(), requires_grad=False, quant_type="nf4",
                               compress_statistics=True).cuda()
    weight.quant_state.offset = torch.as_tensor(weight.quant_state.offset, dtype=torch.float32, device="cuda")
    quant, meta = qlora_fold._quant_args(weight)
    a = (torch.randn(RANK, n_in, device="cuda") * 0.02).requires_grad_()
    b = (torch.randn(n_out, RANK, device="cuda") * 0.02).requires_grad_()
    return quant, meta, meta + (weight.quant_state.quant_type,), a, b


def weight_times(quant, meta, meta8, a, b) -> dict:
    def unfused():
        return qlora_fp8.rowwise_e4m3(qlora_fp8.dequantized(quant, meta8))

    return dict(fold_us=time_us(lambda: qlora_fold._folded(quant, meta, a, b, 0.25)),
                e4m3_kernel_rows_cols_us=time_us(lambda: qlora_fp8._converted(quant, meta8, True, True)),
                e4m3_kernel_cols_us=time_us(lambda: qlora_fp8._converted(quant, meta8, False, True)),
                dequant_then_rowwise_us=time_us(unfused))


def product_times(n_out: int, n_in: int, tokens: int, a, b) -> dict:
    w = torch.randn(n_out, n_in, device="cuda", dtype=torch.bfloat16) * 0.02
    x = torch.randn(tokens, n_in, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn(tokens, n_out, device="cuda", dtype=torch.bfloat16)
    w8, w_scale = qlora_fp8.rowwise_e4m3(w)
    w8t = w8.t().contiguous()
    ones = torch.ones(1, n_in, device="cuda")
    a16, b16 = a.detach().bfloat16(), b.detach().bfloat16()
    x8, unit = x.to(torch.float8_e4m3fn), torch.ones(tokens, 1, device="cuda")

    def forward8(fast: bool):
        x8, xs = qlora_fp8.rowwise_e4m3(x)
        y = torch._scaled_mm(x8, w8.t(), scale_a=xs, scale_b=w_scale.reshape(1, -1), out_dtype=torch.bfloat16,
                             use_fast_accum=fast)
        return torch.addmm(y, x @ a16.t(), b16.t(), alpha=0.25)

    def backward8():
        d8, ds = qlora_fp8.rowwise_e4m3(dy, w_scale.reshape(1, -1))
        dx = torch._scaled_mm(d8, w8t.t(), scale_a=ds, scale_b=ones, out_dtype=torch.bfloat16)
        return torch.addmm(dx, dy @ b16, a16, alpha=0.25)

    return dict(bf16_forward_us=time_us(lambda: x @ w.t()), bf16_input_grad_us=time_us(lambda: dy @ w),
                e4m3_forward_us=time_us(lambda: forward8(True)),
                e4m3_forward_full_accum_us=time_us(lambda: forward8(False)),
                e4m3_input_grad_us=time_us(backward8),
                e4m3_gemm_alone_us=time_us(lambda: torch._scaled_mm(x8, w8.t(), scale_a=unit,
                                                                     scale_b=w_scale.reshape(1, -1),
                                                                     out_dtype=torch.bfloat16, use_fast_accum=True)))


def layer_times(quant, meta, meta8, a, b, tokens: int) -> dict:
    n_out, n_in = meta[0], meta[1]
    x = torch.randn(tokens, n_in, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn(tokens, n_out, device="cuda", dtype=torch.bfloat16)

    def step(linear, m):
        forward = torch.compile(lambda x: linear.apply(x, a, b, 0.25, m, True, False, *quant))
        return lambda: forward(x).backward(dy)
    return {f"{name}_layer_fwd_bwd_us": time_us(step(linear, m))
            for name, linear, m in (("fold", qlora_fold._FoldedLinear, meta), ("fp8", qlora_fp8.Fp8Linear, meta8))}


def main() -> None:
    if qlora_fp8.unsupported() or not (qlora_fold.enabled() and qlora_fp8.enabled()):  # the kernels registered
        raise SystemExit(f"fp8_layer_gpu: {qlora_fp8.unsupported() or 'needs Triton'}")
    print(torch.__version__, torch.cuda.get_device_name(0), flush=True)
    for name, (n_out, n_in) in SHAPES[os.environ.get("SHAPE", "7b")].items():
        quant, meta, meta8, a, b = layer(n_out, n_in)
        row = dict(case=f"fp8_{name}", shape=[n_out, n_in],
                   **weight_times(quant, meta, meta8, a.detach(), b.detach()))
        for tokens in (2048, 4096):
            for key, us in {**product_times(n_out, n_in, tokens, a, b),
                            **layer_times(quant, meta, meta8, a, b, tokens)}.items():
                row[f"t{tokens}_{key}"] = us
        row = {k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}
        for tokens in (2048, 4096):
            row[f"t{tokens}_layer_fold_over_fp8"] = round(row[f"t{tokens}_fold_layer_fwd_bwd_us"]
                                                          / row[f"t{tokens}_fp8_layer_fwd_bwd_us"], 2)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
