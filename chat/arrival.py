"""The last-arriver pattern of the decode kernels (chat.gemv_epilogue's split K, chat.attention's split KV,
chat.sample_race's rounds): the programs that share a piece of work each leave their part in memory and count
themselves in; the last to arrive combines the parts in a fixed order (one launch, deterministic) and sets the
counter back to 0 for the next launch."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def last_to_arrive(count_ptr, index, total):
    """True for the last of the `total` programs counting at count_ptr[index] (every part stored before it counts
    itself is then visible to it: the barrier, then an acquire-release add)."""
    tl.debug_barrier()  # every thread's stores before the counter says so
    return tl.atomic_add(count_ptr + index, 1, sem="acq_rel") == total - 1
