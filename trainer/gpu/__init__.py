"""The GPU training fast path (`fast`) and its kernels: folded QLoRA (`qlora_fold`), the chunked loss (`lm_loss`),
the micro-step as a CUDA graph (`graphs`). Nothing here is needed on a CPU."""
