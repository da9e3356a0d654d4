"""Weight-only int8 / int4 decoder layers (chat.weight_only): the layers' bf16 weights replaced, not kept; the model,
the fast decoder and (on a GPU) the chat engine compute what the dequantised weights compute."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from myassistant.chat import fast, int_weights, weight_only


def tiny_llama(dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=500, rms_norm_eps=1e-5)
    return LlamaForCausalLM(config).to(dtype).eval()


def dequantised_reference(model: torch.nn.Module, bits: int) -> torch.nn.Module:
    """A copy of `model` whose decoder layers' Linear weights are their quantised values, dequantised."""
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for module in reference.model.layers.modules():
            if type(module) is torch.nn.Linear:
                module.weight.copy_(int_weights.dequantize(int_weights.quantize(module.weight, bits), module.weight.dtype))
    return reference


def layer_bytes(model: torch.nn.Module) -> int:
    layers = model.model.layers
    return sum(t.numel() * t.element_size() for t in (*layers.parameters(), *layers.buffers()))


@pytest.mark.parametrize("bits", [8, 4])
def test_quantised_layers_compute_what_the_dequantised_weights_do(bits):
    model = tiny_llama()
    reference = dequantised_reference(model, bits)
    before = layer_bytes(model)
    weight_only.to_device(model, torch.device("cpu"), bits, model.model.layers)
    assert not any(type(m) is torch.nn.Linear for m in model.model.layers.modules())
    assert sum(type(m) is weight_only.QuantLinear for m in model.modules()) == 14
    # fp32 weights: int8 a quarter of the bytes (+ scales and the norms), int4 an eighth
    assert layer_bytes(model) < before * (0.27 if bits == 8 else 0.15)
    ids = torch.randint(0, 500, (1, 12))
    with torch.inference_mode():
        assert torch.allclose(model(ids).logits, reference(ids).logits, atol=1e-5)
        got, want = (fast.StaticCacheDecoder(m, 32, compile=False) for m in (model, reference))
        assert torch.allclose(got.prefill(ids, got.new_cache()), want.prefill(ids, want.new_cache()), atol=1e-5)
        # the decoder's stacked q/k/v and gate/up: the modules' buffers are views into them
        assert model.model.layers[0].self_attn.k_proj.q.untyped_storage().data_ptr() == \
            got.fused[0][0].q.untyped_storage().data_ptr()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("quantize", ["int8", "int4"])
def test_gpu_engine_serves_int8_int4_layers_like_their_dequantised_weights(tmp_path, quantize):
    """`ChatEngine.from_pretrained(quantize="int8" | "int4")` on a GPU: the layers' weights quantised (less GPU memory,
    no bf16 Linear left), its greedy decode steps (fused kernels, CUDA graphs) against the dequantised bf16 model's
    own forward."""
    from myassistant.chat import ChatEngine
    from myassistant.model import build_tiny_checkpoint

    folder = build_tiny_checkpoint(tmp_path / "tiny", hidden_size=128, intermediate_size=256)
    plain = ChatEngine.from_pretrained(folder, device="cuda", quantize="none")
    engine = ChatEngine.from_pretrained(folder, device="cuda", quantize=quantize)
    bits = weight_only.BITS[quantize]
    assert not any(type(m) is torch.nn.Linear for m in engine.model.model.layers.modules())
    assert layer_bytes(engine.model) < layer_bytes(plain.model) * (0.6 if bits == 8 else 0.35)
    reference = dequantised_reference(plain.model, bits)
    messages = [{"role": "user", "content": "hello there, how are you?"}]
    settings = engine.defaults.__class__(temperature=0, max_new_tokens=24)
    prompt_ids = engine.prompt(messages, settings)[0]
    engine.stop_ids = []  # a random model: the reply runs its full length
    reply = list(engine.tokens(prompt_ids, settings))  # the batched, graphed decoder
    assert len(reply) > 0
    with torch.inference_mode():
        logits = reference(torch.tensor([prompt_ids + reply], device="cuda")).logits[0, len(prompt_ids) - 1:-1].float()
    # teacher-forced: the reference's greedy choice at each step of the engine's reply
    agree = float((logits.argmax(-1) == torch.tensor(reply, device="cuda")).float().mean())
    assert agree >= 0.9, f"{quantize}: top-1 agreement with the dequantised reference {agree}"
    assert isinstance(engine.generate(messages, temperature=0, max_new_tokens=8), str)  # the model's own forward path


def test_quantize_switch_means_weight_only_layers_on_a_gpu():
    """ServeConfig.quantize on a CUDA device: int8 / int4 (two_pass: int8) weight-only layers where Triton is
    installed, bf16 otherwise; auto stays bf16 there (the CPU's default int8 is a CPU path)."""
    import importlib.util

    from myassistant.chat.quant import resolve_quantize

    cuda = torch.device("cuda")
    has_triton = importlib.util.find_spec("triton") is not None
    assert resolve_quantize("auto", cuda) == "none"
    assert resolve_quantize("none", cuda) == "none"
    assert resolve_quantize("int4", cuda) == ("int4" if has_triton else "none")
    assert resolve_quantize("int8_two_pass", cuda) == ("int8" if has_triton else "none")
