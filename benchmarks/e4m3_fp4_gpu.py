"""Where ``train.qlora_fp8``'s NF4 / FP4 -> e4m3 kernel differs from its reference on a GPU: session 33's H200 run
of ``tests/test_qlora_fp8.py -m gpu`` failed the FP4 case (96 x 192, nested) with some bytes differing, where the NF4
cases and every tile under Triton's interpreter pass. For each case: how many bytes differ from the compiled
reference (``rowwise_e4m3``, which a GPU runs through torch.compile) and from the eager one, and the first ones with
their dequantised weight, row scale and quotient (is it e4m3's subnormal range, a rounding tie, the table?).

    python3 -m benchmarks.e4m3_fp4_gpu        # a CUDA GPU, bitsandbytes; from the repo root
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_qlora_fold import quantized_linear  # noqa: E402

from myassistant.trainer.gpu import qlora_fold, qlora_fp8  # noqa: E402


def main() -> None:
    assert qlora_fp8.enabled(), "needs a CUDA GPU with bitsandbytes and Triton"  # registers the kernel's op
    for n_out, n_in, qt, nested in ((96, 192, "fp4", True), (96, 192, "fp4", False), (96, 192, "nf4", True)):
        w = quantized_linear(n_out, n_in, qt, nested).weight
        quant, meta = qlora_fold._quant_args(w)
        meta = meta + (w.quant_state.quant_type,)
        deq = qlora_fp8.dequantized(quant, meta)
        want, want_scale = qlora_fp8.rowwise_e4m3(deq)
        eager, eager_scale = qlora_fp8._e4m3_rows(deq, None)
        w8, w8t, scale = qlora_fp8._converted(quant, meta, True, True)
        g, e, ea = w8.view(torch.uint8), want.contiguous().view(torch.uint8), eager.contiguous().view(torch.uint8)
        bad = (g != e).nonzero()
        print(qt, nested, "mismatch", len(bad), "of", g.numel(), "vs eager", int((g != ea).sum()), "compiled vs eager",
              int((e != ea).sum()), "scales", torch.equal(scale, want_scale), torch.equal(want_scale, eager_scale),
              "transposed", int((w8t.view(torch.uint8) != want.t().contiguous().view(torch.uint8)).sum()))
        for r, c in bad[:8].tolist():
            row_scale = float(want_scale.flatten()[r])
            print("  ", r, c, "got", g[r, c].item(), float(w8[r, c].float()), "want", e[r, c].item(),
                  float(want[r, c].float()), "eager", float(eager[r, c].float()), "deq", float(deq[r, c].float()),
                  "scale", row_scale, "x/scale", float(deq[r, c].float()) / row_scale)


if __name__ == "__main__":
    main()
