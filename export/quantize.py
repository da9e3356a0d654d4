"""llama.cpp's own quantiser, through llama-cpp-python (`pip install -e '.[llama-cpp]'`).

The k-quants (q4_k_m) choose their scales by an error search that exists only in llama.cpp's C code;
the `gguf` package can read them but not make them. llama-cpp-python builds llama.cpp from source
on install and exposes ``llama_model_quantize``, the function behind ``llama-quantize``.
"""
from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

INSTALL_HINT = ("pip install -e '.[llama-cpp]' in the checkout (llama-cpp-python, which builds llama.cpp from source: "
                "minutes on a fast machine, up to an hour on 2 busy cores)")


class QuantizeError(RuntimeError):
    user_error = True


def llama_cpp_available() -> str | None:
    """None when llama.cpp's quantiser can be called here, else why not."""
    try:
        import llama_cpp  # noqa: F401
    except (ImportError, OSError) as err:
        return f"llama-cpp-python is not installed ({str(err).splitlines()[0]})"
    return None


def require_quantiser() -> None:
    """Refuse (one line, what to install or pick instead) where llama.cpp's quantiser cannot be called."""
    if (problem := llama_cpp_available()) is not None:
        raise QuantizeError(f"k-quants need llama.cpp's quantiser: {problem}; {INSTALL_HINT}, "
                            "or export --quant q8_0 / q4_0, which need no llama.cpp")


def llama_cpp_quantize(src: Path, dst: Path, file_type: int, threads: int | None = None) -> None:
    """Quantise the GGUF `src` (f16/f32) into `dst` as llama.cpp's `file_type` (a gguf.LlamaFileType)."""
    require_quantiser()
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(file_type)
    params.nthread = threads or os.cpu_count() or 1
    log.info("quantising with llama.cpp (file type %d)", int(file_type))
    status = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if status != 0:
        raise QuantizeError(f"llama.cpp could not quantise {src} (status {status})")
