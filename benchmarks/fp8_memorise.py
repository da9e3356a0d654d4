"""Does ``train.qlora_fp8`` slow a LoRA's fitting at a model's size? Session 33's 7B step benchmark trained one
repeated random batch for 20 steps, and the last loss was 5.66 with bf16 products against 7.00 with e4m3 ones (bs2;
bs1 3.07 against 4.71), where the demo's tiny LoRA showed no difference. This asks the same of a random Llama of any
shape: LoRA r64 alpha 16 on the seven linear layers, its frozen products plain or in e4m3
(``trainer.gpu.qlora_fp8.Fp8Linear`` over the dense weight: NF4 and the fused kernels are not what is asked), AdamW
at 2e-4, the same batch every step, from the same start.

    python -m benchmarks.fp8_memorise [--hidden 1024 --layers 16 --intermediate 2816] [--seq 512] [--steps 20]
    python -m benchmarks.fp8_memorise --hidden 4096 --layers 32 --intermediate 14336 --seq 2048   # 7B, on a GPU

Prints a JSON line a form (its loss every 4 steps and the last), then one with the difference of the last losses.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks.fp8_quality_cpu import use_fp8_products  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def fit(base, state: dict, batch: torch.Tensor, fp8: bool, steps: int) -> list[float]:
    from peft import LoraConfig, get_peft_model

    base.load_state_dict(state)
    torch.manual_seed(1)  # the same adapters' start in both forms
    model = get_peft_model(base, LoraConfig(r=64, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS))
    model.train()
    if fp8:
        use_fp8_products(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    losses = []
    for _ in range(steps):
        with torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=batch.is_cuda):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 4))
    model.unload()  # the plain modules back in `base`
    return losses


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
    last = {}
    for fp8 in (False, True):
        losses = fit(base, state, batch.to(args.device), fp8, args.steps)
        last[fp8] = losses[-1]
        print(json.dumps({"products": "e4m3" if fp8 else str(dtype).removeprefix("torch."), "hidden": args.hidden,
                          "layers": args.layers, "seq": args.seq, "bs": args.bs, "steps": args.steps,
                          "losses": losses[::4] + losses[-1:]}), flush=True)
    print(json.dumps({"last_loss_e4m3_minus_plain": round(last[True] - last[False], 4)}), flush=True)


if __name__ == "__main__":
    main()
