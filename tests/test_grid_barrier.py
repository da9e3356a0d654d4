"""benchmarks/grid_barrier_gpu.py measures issue 21's persistent-kernel lever on a GPU; here its kernels are checked
for what they compute under Triton's interpreter (one program: the interpreter runs programs one after another,
so a grid barrier can only be met by a grid of one), so a device call spends its time measuring."""

import pytest

from test_decode_attention import needs_triton, run_interpreted

CHECK = """
import sys, torch
sys.path.insert(0, '..')
from benchmarks.grid_barrier_gpu import Step
shape = [(32, 64), (64, 32), (96, 64), (64, 96)] * 2  # rows, columns: each phase reads the previous one's output
step = Step(shape, 'cpu')
step.kernels(16, 32)
want = step.output()
assert want.shape == (64,) and torch.allclose(want.float(), step.reference().float(), rtol=2e-2, atol=2e-2), (want, step.reference())
for kw in ({}, {'preload': True}):
    step.buf.zero_()
    step.persistent(1, 16, 32, timed=False, **kw)
    assert torch.equal(step.output(), want), kw
    assert int(step.counter) == len(shape), int(step.counter)  # one arrival a phase
"""


@needs_triton
def test_persistent_step_equals_a_kernel_a_phase_under_tritons_interpreter():
    run_interpreted(CHECK)


DATAFLOW = """
import sys, torch
sys.path.insert(0, '..')
from benchmarks.grid_barrier_gpu import Step
from benchmarks.dataflow_gpu import Dataflow
shape = [(32, 64), (64, 32), (96, 64), (64, 96)] * 2
step = Step(shape, 'cpu')
flow = Dataflow(step, 16, 32)
flow.kernels()
want = flow.output()
assert want.shape == (64,) and torch.allclose(want.float(), step.reference().float(), rtol=2e-2, atol=2e-2)
for slice_ in (False, True):
    for ticket in (False, True):
        flow.buf[flow.maxn:].zero_()
        flow.dataflow(slice_, ticket)
        assert torch.equal(flow.output(), want), (slice_, ticket)
        assert int(flow.state[-1]) == (sum(flow.items) if ticket else 0)
        done = flow.state[:-1].view(len(shape), flow.slices)
        assert torch.equal(done[:, 0], torch.tensor(flow.items, dtype=torch.int32)), done  # each item counted once
        slices = done[:, 1:]
        if slice_:  # and in the slice of the rows it wrote: BLOCK_K / BLOCK_N a slice
            assert torch.equal(slices.sum(1), done[:, 0]) and set(slices[slices > 0].tolist()) == {2}, done
        else:
            assert not slices.any(), done
"""


@needs_triton
def test_dataflow_step_equals_a_kernel_a_phase_under_tritons_interpreter():
    """benchmarks/dataflow_gpu.py: one launch whose items wait for their inputs computes the chain the kernel-a-phase
    form does, bit for bit, and every item counts itself in where its readers wait (programs run in order here)."""
    run_interpreted(DATAFLOW)


MLP = """
import sys, torch
sys.path.insert(0, '..')
from benchmarks.mlp_fused_gpu import Mlp
mlp = Mlp(hidden=256, inter=384, layers=2, device='cpu')
want = mlp.reference()
outs = {}
for form in ('rows', 'two', 'fused'):
    mlp.run(form, block_i=32, warps=4, bw=4, bo=4)
    outs[form] = got = mlp.ys[-1].double()
    err = float((got - want).abs().max() / want.abs().max())
    assert err < 2e-2, (form, err)  # h rounded to bf16 in fp32 or float64, through two random layers
for form in ('two', 'fused'):  # the same sums in another order
    assert float((outs[form] - outs['rows']).abs().max() / want.abs().max()) < 1e-4, form
"""


@needs_triton
def test_one_launch_mlp_equals_two_under_tritons_interpreter():
    """benchmarks/mlp_fused_gpu.py: gate/up and down in one launch a layer (partial sums reduced into the output), in
    two, and down as row blocks compute the same chain as float64 from the same int4 values."""
    run_interpreted(MLP)
