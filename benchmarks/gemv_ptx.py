"""Is the decode kernel (chat.gemv._gemv_kernel) the same machine code as at another revision?

Compiles the kernel of this tree and of `--against` (a git revision) for sm_90 without a GPU (Triton's own
ptxas) for the configurations a decode step uses, and compares the PTX instructions (debug labels and line
tables left out: they name source lines, not instructions; parameters by name), over bf16 weights and weight-only
int8 / int4 ones. The same instructions mean the same bits and, up to ptxas' scheduling, the same speed, so a change
to one of the kernel's paths (or its removal of another) needs no GPU run to show that the others stay as they were.

    python benchmarks/gemv_ptx.py --against f495808      # needs Triton (pip install triton), no GPU

``--quant``: instead, for the int8 / int4 candidates of the 7B shape's products (the package importable): the
tensor-core instruction, the bytes a thread reads from shared memory in the main loop, and ptxas' registers and
spills.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

ROOT = Path(__file__).resolve().parents[1]
# (BLOCK_N, BLOCK_K, SPLIT, warps, stages), NORM, GATED, RESIDUAL, K, float32 out: qkv, gate/up, o / down, lm_head
CASES = [((32, 256, 2, 4, 3), True, False, False, 2048, False), ((32, 256, 1, 4, 3), True, True, False, 4096, False),
         ((16, 256, 4, 4, 3), False, False, True, 8192, False), ((64, 256, 8, 4, 3), False, False, True, 14336, False),
         ((64, 256, 1, 4, 3), True, False, False, 4096, True), ((32, 256, 1, 4, 4), True, True, False, 2048, False)]
POINTERS = {"x_ptr": "bf16", "w_ptr": "bf16", "out_ptr": "bf16", "res_ptr": "bf16", "nw_ptr": "bf16",
            "ws_ptr": "fp32", "count_ptr": "i32", "s_ptr": "fp32", "sq_in_ptr": "i64", "sq_out_ptr": "i64"}


def load(source: str, name: str):
    """chat/gemv.py's text as a module (its own imports only need torch and triton)."""
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_revision(rev: str):
    """chat/gemv.py of git revision `rev` as a module, with the kernel modules it imports (chat.arrival,
    chat.gemv_epilogue, chat.gemv_rows; chat.pdl before its removal) of the revision too while it loads: their kernels
    are part of it."""
    import myassistant.chat

    def show(path: str) -> str | None:
        done = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, text=True, capture_output=True)
        return done.stdout if done.returncode == 0 else None

    source = show("chat/gemv.py")
    kept = {}
    for name in ("pdl", "arrival", "gemv_epilogue", "gemv_rows"):  # in import order: each imports those before it
        if (text := show(f"chat/{name}.py")) is not None:
            kept[name] = sys.modules.get(f"myassistant.chat.{name}")
            module = load(text, f"{name}_reference")
            sys.modules[f"myassistant.chat.{name}"] = module
            setattr(myassistant.chat, name, module)
    try:
        return load(source, "gemv_reference")
    finally:
        for name, module in kept.items():
            if module is None:
                sys.modules.pop(f"myassistant.chat.{name}", None)
            else:
                sys.modules[f"myassistant.chat.{name}"] = module
                setattr(myassistant.chat, name, module)


def instructions(module, case, bits: int = 16) -> list[str]:
    """The kernel's PTX instructions for a case over `bits`-bit weights (16: bf16, 8 / 4: weight-only)."""
    (block_n, block_k, split, warps, stages), norm, gated, residual, k, out_float = case
    kernel = module._gemv_kernel
    # W_FIRST, PDL, ASM, EARLY_RELEASE, PREFETCH: arguments of earlier revisions (before their removal), off there;
    # SHARED_NORM, SQUARES: of later ones (the sums of squares handed on), off
    consts = dict(K=k, NORM=norm, GATED=gated, RESIDUAL=residual, QUANT=bits % 16, BLOCK_M=16, BLOCK_N=block_n,
                  BLOCK_K=block_k, SPLIT=split, STAGES=stages, UPCAST=False, PRECISION="tf32", GROUP=128,
                  MAGIC=-1 if bits == 4 else 0, W_FIRST=False, PDL=False, ASM=False, EARLY_RELEASE=True, PREFETCH=0,
                  SHARED_NORM=False, SQUARES=False)
    consts = {name: value for name, value in consts.items() if name in kernel.arg_names}
    pointers = {**POINTERS, "out_ptr": "fp32" if out_float else "bf16", "w_ptr": {16: "bf16", 8: "i8", 4: "u8"}[bits]}
    ptx = compile_ptx(kernel, consts, pointers, warps).asm["ptx"]
    ptx = ptx.split(".section\t.debug")[0]
    # parameters by name, not number: the int8 / int4 arguments shift the numbers of those after them
    return [re.sub(r"_gemv_kernel_param_\d+", "param", line) for line in ptx.splitlines()
            if line.strip() and not line.startswith("$L__tmp")
            and not line.strip().startswith(("//", ".param", ".file", ".loc", "_gemv_kernel_param"))]


def compile_ptx(kernel, consts: dict, pointers: dict, warps: int, fp_fusion: bool = True, arch: int = 90):
    """The kernel compiled for sm_90 (or sm_`arch`) with the integer arguments' divisibility by 16 a GPU compile sees
    (`fp_fusion`: as the launch asks)."""
    signature = {name: "constexpr" if name in consts else f"*{pointers[name]}" if name in pointers
                 else "fp32" if name in ("eps", "scale") else "i32" for name in kernel.arg_names}
    aligned = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(kernel.arg_names)
               if name in pointers or name == "N" or name.startswith("stride_")}
    source = ASTSource(fn=kernel, signature=signature, attrs=aligned,
                       constexprs={(kernel.arg_names.index(name),): value for name, value in consts.items()})
    return triton.compile(source, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": warps, "enable_fp_fusion": fp_fusion})


def ptxas_report(ptx: str) -> str:
    """What Triton's own ptxas says of `ptx` for sm_90 (`-v`: registers, spills), no GPU needed."""
    import triton.backends.nvidia

    ptxas = Path(triton.backends.nvidia.__file__).parent / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "k.ptx").write_text(ptx)
        done = subprocess.run([str(ptxas), "-arch=sm_90a", "-v", f"{tmp}/k.ptx", "-o", f"{tmp}/k.o"],
                              capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise RuntimeError(f"ptxas failed: {done.stderr[-2000:]}")
    return done.stderr


def shared_bytes(ptx: str) -> int:
    """Bytes one thread reads from shared memory in the main loop (the loop with the most tensor-core ops)."""
    heads = [m.start() for m in re.finditer("Loop Header", ptx)] or [0]
    loop = max((ptx[a:b] for a, b in zip(heads, heads[1:] + [len(ptx)])), key=lambda t: t.count("mma"))
    loads = re.findall(r"ld\.shared(?:\.v(\d))?\.b(\d+)", loop)
    return (sum(int(v or 1) * int(b) // 8 for v, b in loads)
            + sum(4 * int(x) for x in re.findall(r"ldmatrix\S*\.x(\d)", loop)))  # x1 / x2 / x4: 4 bytes a matrix


def quant(module) -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks.decode_cpu import SHAPES
    from benchmarks.gemv_gpu import products
    from myassistant.chat import gemv_pick
    for bits in (4, 8):
        pointers = {**POINTERS, "w_ptr": "u8" if bits == 4 else "i8"}
        for name, (n, k, norm, gated, residual) in products(SHAPES["internlm2-7b"]).items():
            if name == "lm_head":
                continue
            for (block_n, block_k, split, warps, stages) in gemv_pick.candidates(n // 2 if gated else n, k, bits):
                consts = dict(K=k, NORM=norm, GATED=gated, RESIDUAL=residual, QUANT=bits, BLOCK_M=16,
                              BLOCK_N=block_n, BLOCK_K=block_k, SPLIT=split, STAGES=stages, UPCAST=False,
                              PRECISION="tf32", GROUP=128, MAGIC=-1 if bits == 4 else 0, SHARED_NORM=False,
                              SQUARES=False)
                ptx = compile_ptx(module._gemv_kernel, consts, pointers, warps).asm["ptx"]
                info = ptxas_report(ptx)
                print(json.dumps({"case": "quant_ptx", "bits": bits, "product": name,
                                  "config": [block_n, block_k, split, warps, stages],
                                  "mma": "wgmma" if "wgmma.mma_async" in ptx else "mma.sync",
                                  "shared_bytes_per_thread": shared_bytes(ptx),
                                  "packed_bytes_per_thread": block_n * block_k // (2 if bits == 4 else 1)
                                  * (2 if gated else 1) // (32 * warps),
                                  "registers": int(re.search(r"Used (\d+) registers", info).group(1)),
                                  "spill_bytes": int(re.search(r"(\d+) bytes spill stores", info).group(1))}))


def registers_unnamed(lines: list[str]) -> list[str]:
    """The instructions sorted, each virtual register's number left out (%r12 -> %r)."""
    return sorted(re.sub(r"%(r|rd|rs|f|fd|p|h|hh)\d+", r"%\1", line) for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", help="git revision whose chat/gemv.py is the reference")
    parser.add_argument("--quant", action="store_true", help="the int8 / int4 candidates' PTX (see above)")
    args = parser.parse_args(argv)
    if args.quant:
        quant(load((ROOT / "chat" / "gemv.py").read_text(), "gemv_tree"))
        return 0
    if not args.against:
        parser.error("--against REV (or --quant)")
    old = load_revision(args.against)
    new = load((ROOT / "chat" / "gemv.py").read_text(), "gemv_tree")
    same_all = True
    for bits in (16, 8, 4):
        for case in CASES:
            a, b = instructions(old, case, bits), instructions(new, case, bits)
            # the same instructions, possibly in another order and other registers (ptxas schedules and allocates
            # them again anyway; a kernel argument more renumbers the parameter loads' registers)
            same = registers_unnamed(a) == registers_unnamed(b)
            same_all &= same
            print(json.dumps({"case": "ptx", "bits": bits, "config": case[0], "norm": case[1], "gated": case[2],
                              "residual": case[3], "k": case[4], "float_out": case[5], "instructions": [len(a), len(b)],
                              "identical": a == b, "lines_in_another_place": sum(x != y for x, y in zip(a, b)),
                              "same_instructions": same}))
    print(json.dumps({"case": "summary", "against": args.against, "same_instructions": same_all}))
    return 0 if same_all else 1


if __name__ == "__main__":
    sys.exit(main())
