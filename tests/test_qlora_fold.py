"""QLoRA folding (trainer.qlora_fold): the one-kernel W + s B A equals bitsandbytes' dequantisation plus
the adapter. That a folded model trains like plain peft (loss and LoRA gradients) is
tests/test_fast_path.py::test_fast_path_matches_plain_qlora_on_gpu."""
from __future__ import annotations

import pytest
import torch

from myassistant.trainer.gpu import qlora_fold

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def quantized_linear(n_out: int, n_in: int, quant_type: str, nested: bool):
    bnb = pytest.importorskip("bitsandbytes")
    layer = bnb.nn.Linear4bit(n_in, n_out, bias=False, compute_dtype=torch.bfloat16, quant_type=quant_type,
                              compress_statistics=nested)
    layer.weight = bnb.nn.Params4bit((torch.randn(n_out, n_in) * 0.02).bfloat16(), requires_grad=False, quant_type=quant_type,
                                     compress_statistics=nested)
    return layer.cuda()


@pytest.mark.parametrize("n_out,n_in,quant_type,nested,rank", [
    (4096, 2048, "nf4", True, 64),   # the 1.8B model's wqkv, the presets' quantisation
    (2048, 8192, "nf4", False, 64),  # w2 without double quantisation
    (96, 192, "fp4", True, 8),       # sizes off every tile, a rank below tl.dot's 16
])
def test_folded_weight_is_dequantised_weight_plus_adapter(n_out, n_in, quant_type, nested, rank):
    weight = quantized_linear(n_out, n_in, quant_type, nested).weight
    lora_a = torch.randn(rank, n_in, device="cuda") * 0.05
    lora_b = torch.zeros(n_out, rank, device="cuda")
    # B = 0 (a fresh adapter): exactly bitsandbytes' dequantisation
    assert torch.equal(qlora_fold.folded_weight(weight, lora_a, lora_b, 0.25),
                       qlora_fold.folded_weight_reference(weight, lora_a, lora_b, 0.25).bfloat16())
    lora_b.normal_(std=0.05)
    got = qlora_fold.folded_weight(weight, lora_a, lora_b, 0.25).float()
    exact = qlora_fold.folded_weight_reference(weight, lora_a, lora_b, 0.25)
    base = qlora_fold.folded_weight_reference(weight, lora_a, lora_b * 0, 0.25)
    # the reference's W is bitsandbytes' bf16 one: half a unit in the last place of W, half of the sum
    assert ((got - exact).abs() <= (base.abs() + exact.abs()) * 2**-8 + 1e-6).all()
