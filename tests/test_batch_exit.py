"""A process that ends while the batched decoder is mid-step exits cleanly (chat.batch closes its scheduler
thread at exit; before, Python ended the daemon thread inside a torch op and the process aborted with
"terminate called without an active exception": `assistant chat` returned -6 after /exit at times)."""
from __future__ import annotations

import os
import subprocess
import sys

from myassistant.model import build_tiny_checkpoint

SCRIPT = """
import sys, threading, time
from myassistant.chat import ChatEngine, GenerationSettings
engine = ChatEngine.from_pretrained(sys.argv[1], device="cpu", quantize="none")
engine.stop_ids = []
out = []
chat = lambda: out.extend(engine.stream([{"role": "user", "content": "hi"}], max_new_tokens=1000, temperature=0))
threading.Thread(target=chat, daemon=True).start()
while not out:
    time.sleep(0.05)
time.sleep(0.5)
assert engine.batch.thread is not None
print("exiting mid-reply")
"""


def test_exit_while_a_reply_is_being_decoded_is_clean(tmp_path):
    # wide enough that a step's time is spent inside torch's kernels, where the abort happened
    model = build_tiny_checkpoint(tmp_path / "wide", hidden_size=1024, num_hidden_layers=4, num_attention_heads=8,
                                  num_key_value_heads=2, intermediate_size=4096)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(model)], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "exiting mid-reply" in proc.stdout, proc.stderr[-2000:]
    assert "terminate called" not in proc.stderr
