"""Does ``train.qlora_fp8`` slow a LoRA's fitting at a model's size? Session 33's 7B step benchmark trained one
repeated random batch for 20 steps, and the last loss was 5.66 with bf16 products against 7.00 with e4m3 ones (bs2;
bs1 3.07 against 4.71), where the demo's tiny LoRA showed no difference. This asks the same of a random Llama of any
shape: LoRA r64 alpha 16 on the seven linear layers, its frozen products plain or in e4m3
(``trainer.gpu.qlora_fp8.Fp8Linear`` over the dense weight: NF4 and the fused kernels are not what is asked), AdamW
at 2e-4, the same batch every step, from the same start.

    python -m benchmarks.fp8_memorise [--hidden 1024 --layers 16 --intermediate 2816] [--seq 512] [--steps 20]
    python -m benchmarks.fp8_memorise --hidden 4096 --layers 32 --intermediate 14336 --seq 2048   # 7B, on a GPU
    ... --forms plain e4m3 forward dgrad block                                    # where the lag comes from

Forms (``--forms``, default ``plain e4m3``): ``plain`` (the compute dtype's products), ``e4m3`` (``Fp8Linear``, what
``train.qlora_fp8`` runs), and three that round the frozen products' inputs to e4m3 and back and multiply in the compute
dtype (``_RoundedProduct``: the values an fp8 GEMM multiplies, its sums in that dtype), to tell which rounding slows the
fit: ``forward`` (x and W a scale a row, forward only), ``dgrad`` (dy and W a scale a row, the input gradient only),
``block`` (both directions, a scale a 128 values of x / dy and a 128 x 128 block of W: DeepSeek-V3's recipe, which
``torch._scaled_mm`` runs on Hopper).

Prints a JSON line a form (its loss every 4 steps and the last, and the fitted model's loss with plain products, as
evaluation runs it), then one with each form's last loss minus plain's and its plain-products loss minus plain's: a
gap that closes there is the rounded forward measuring the same fit noisily; one that stays is a worse fit.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks.fp8_block_gemm_gpu import quantised  # noqa: E402
from benchmarks.fp8_quality_cpu import use_fp8_products  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FORMS = ("plain", "e4m3", "forward", "dgrad", "block")


def e4m3_rounded(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """``t`` [M, K] rounded to e4m3 with a float32 scale a ``rows`` x ``cols`` block (cols 0: the whole row), and back
    in ``t``'s dtype."""
    m, k = t.shape
    q, scale = quantised(t, rows, cols)
    blocks = q.float().reshape(m // rows, rows, scale.shape[1], -1) * scale[:, None, :, None]
    return blocks.reshape(m, k).to(t.dtype)


class _RoundedProduct(torch.autograd.Function):
    """``x @ W.T`` for a frozen W, its inputs rounded as ``form`` says (forward and / or the input gradient)."""

    @staticmethod
    def forward(ctx, x, weight, form):
        ctx.save_for_backward(weight)
        ctx.form, ctx.x_shape, ctx.x_dtype = form, x.shape, x.dtype
        x2 = x.reshape(-1, x.shape[-1]).to(weight.dtype)
        if form == "forward":
            x2, weight = e4m3_rounded(x2, 1, 0), e4m3_rounded(weight, 1, 0)
        elif form == "block":
            x2, weight = e4m3_rounded(x2, 1, 128), e4m3_rounded(weight, 128, 128)
        return (x2 @ weight.t()).reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dy):
        (weight,) = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1]).to(weight.dtype)
        if ctx.form == "dgrad":  # W a scale an output row, as Fp8Linear keeps it; dy a scale a token
            dy2, weight = e4m3_rounded(dy2, 1, 0), e4m3_rounded(weight, 1, 0)
        elif ctx.form == "block":  # the forward's 128 x 128 blocks serve the transposed product too
            dy2, weight = e4m3_rounded(dy2, 1, 128), e4m3_rounded(weight, 128, 128)
        return (dy2 @ weight).reshape(ctx.x_shape).to(ctx.x_dtype), None, None


def use_rounded_products(model, form: str) -> None:
    """Each LoRA layer's frozen product through ``_RoundedProduct`` (peft adds the adapter's product as before)."""
    for module in model.modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            base = module.base_layer
            base.forward = lambda x, base=base: (_RoundedProduct.apply(x, base.weight.detach(), form) if base.training
                                                 else torch.nn.functional.linear(x, base.weight))


def fit(base, state: dict, batch: torch.Tensor, form: str, steps: int) -> tuple[list[float], float]:
    """The losses of ``steps`` steps fitting the LoRA to ``batch`` with ``form``'s products, and the fitted model's
    loss with plain products (evaluation runs them: did the adapter learn less, or is the rounded forward only a
    noisier measure of it?)."""
    from peft import LoraConfig, get_peft_model

    base.load_state_dict(state)
    torch.manual_seed(1)  # the same adapters' start in both forms
    model = get_peft_model(base, LoraConfig(r=64, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS))
    model.train()
    if form == "e4m3":
        use_fp8_products(model)
    elif form != "plain":
        use_rounded_products(model, form)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    losses = []
    for _ in range(steps):
        with torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=batch.is_cuda):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 4))
    model.eval()
    with torch.no_grad(), torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=batch.is_cuda):
        plain = round(model(input_ids=batch, labels=batch).loss.item(), 4)
    model.unload()  # the plain modules back in `base`
    for module in base.modules():
        module.__dict__.pop("forward", None)  # use_rounded_products' forwards gone with the adapters
    return losses, plain


def main() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--intermediate", type=int, default=2816)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--bs", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--forms", nargs="+", choices=FORMS, default=["plain", "e4m3"])
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                      num_hidden_layers=args.layers, num_attention_heads=args.hidden // 128,
                      num_key_value_heads=args.hidden // 128, max_position_embeddings=args.seq)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    with torch.device(args.device):  # a 7B's random init on the GPU: seconds, where the CPU takes minutes
        base = LlamaForCausalLM(cfg).to(dtype)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    batch = torch.randint(0, args.vocab, (args.bs, args.seq), generator=torch.Generator().manual_seed(0))
    last, plain_eval = {}, {}
    for form in dict.fromkeys(["plain", *args.forms]):  # plain first: the others are told against it
        losses, evaluated = fit(base, state, batch.to(args.device), form, args.steps)
        last[form], plain_eval[form] = losses[-1], evaluated
        print(json.dumps({"products": form, "dtype": str(dtype).removeprefix("torch."), "hidden": args.hidden,
                          "layers": args.layers, "seq": args.seq, "bs": args.bs, "steps": args.steps,
                          "losses": losses[::4] + losses[-1:], "fitted_loss_plain_products": evaluated}), flush=True)
    print(json.dumps({"last_loss_minus_plain": {form: round(loss - last["plain"], 4) for form, loss in last.items()
                                                if form != "plain"},
                      "fitted_loss_plain_products_minus_plain": {
                          form: round(loss - plain_eval["plain"], 4) for form, loss in plain_eval.items()
                          if form != "plain"}}), flush=True)


if __name__ == "__main__":
    main()
