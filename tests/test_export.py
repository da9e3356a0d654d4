"""assistant export: the tiny model as GGUF, read back with llama.cpp's own reader (and run by llama.cpp itself
where llama-cpp-python is installed: tests/test_export_llama_cpp.py)."""
from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
import sys

import gguf
import numpy as np
import pytest
import torch
from conftest import ROOT, cli, run_cli

from myassistant.export import ExportError, export_gguf
from myassistant.model import load_model, load_tokenizer
from myassistant.scripts.export import main as export_main

HF_TO_GGUF = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def interleaved(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Row 2j of a head is its row j, row 2j+1 its row d/2 + j (the order llama.cpp rotates pairs in)."""
    d = weight.shape[0] // heads
    order = [h * d + (j // 2 if j % 2 == 0 else d // 2 + j // 2) for h in range(heads) for j in range(d)]
    return weight[order]


def expected_tensors(folder) -> dict[str, torch.Tensor]:
    model = load_model(folder, dtype=torch.float32)
    cfg, out = model.config, {}
    for key, value in model.state_dict().items():
        if key == "model.embed_tokens.weight":
            out["token_embd.weight"] = value
        elif key == "model.norm.weight":
            out["output_norm.weight"] = value
        elif key == "lm_head.weight":
            out["output.weight"] = value
        else:
            _, _, layer, *module, _ = key.split(".")
            name = HF_TO_GGUF[".".join(module)]
            if name == "attn_q":
                value = interleaved(value, cfg.num_attention_heads)
            elif name == "attn_k":
                value = interleaved(value, cfg.num_key_value_heads)
            out[f"blk.{layer}.{name}.weight"] = value
    return out


def field(reader: gguf.GGUFReader, key: str):
    f = reader.fields[key]
    if f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
        return [f.parts[i].tobytes().decode() if f.types[-1] == gguf.GGUFValueType.STRING else f.parts[i][0]
                for i in f.data]
    value = f.parts[f.data[0]]
    return value.tobytes().decode() if f.types[0] == gguf.GGUFValueType.STRING else value[0]


@pytest.mark.parametrize("quant, tolerance", [("f16", 1e-3), ("q8_0", 1e-2), ("q4_0", 0.15)])
def test_gguf_reads_back_as_the_model(tmp_path, tiny_checkpoint, quant, tolerance):
    out = export_gguf(tiny_checkpoint, tmp_path / f"tiny-{quant}.gguf", quant=quant).gguf
    reader = gguf.GGUFReader(out)
    want = expected_tensors(tiny_checkpoint)
    got = {t.name: t for t in reader.tensors}
    assert set(got) == set(want)
    for name, tensor in got.items():
        assert tuple(int(n) for n in tensor.shape[::-1]) == tuple(want[name].shape), name
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(want[name].shape)
        error = np.linalg.norm(values - want[name].numpy()) / np.linalg.norm(want[name].numpy())
        assert error < tolerance, (name, error)
        if tensor.data.ndim == 1 or want[name].ndim == 1:
            assert tensor.tensor_type == gguf.GGMLQuantizationType.F32, name
    expected_type = {"f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0"}[quant]
    assert got["blk.0.ffn_down.weight"].tensor_type == gguf.GGMLQuantizationType[expected_type]

    tokenizer = load_tokenizer(tiny_checkpoint)
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "general.name") == tiny_checkpoint.name  # no recorded assistant name: the folder's
    assert field(reader, "llama.block_count") == config["num_hidden_layers"]
    assert field(reader, "llama.attention.head_count_kv") == config["num_key_value_heads"]
    assert field(reader, "llama.rope.freq_base") == pytest.approx(config["rope_theta"])
    assert field(reader, "tokenizer.ggml.model") == "llama"
    tokens = field(reader, "tokenizer.ggml.tokens")
    vocab = tokenizer.get_vocab()
    assert len(tokens) == config["vocab_size"] and all(tokens[i] == t for t, i in vocab.items())
    im_end = vocab["<|im_end|>"]
    assert field(reader, "tokenizer.ggml.eos_token_id") == im_end
    assert field(reader, "tokenizer.ggml.eot_token_id") == im_end
    assert field(reader, "tokenizer.ggml.bos_token_id") == tokenizer.bos_token_id
    assert bool(field(reader, "tokenizer.ggml.add_bos_token")) is True
    assert field(reader, "tokenizer.chat_template") == tokenizer.chat_template
    types = field(reader, "tokenizer.ggml.token_type")
    assert types[im_end] == gguf.TokenType.CONTROL and types[vocab["<0x0A>"]] == gguf.TokenType.BYTE

    modelfile = out.with_suffix(".Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./{out.name}\n")
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "<|im_start|>{{ .Role }}" in modelfile


def test_the_modelfile_samples_as_the_model_folder_asks(tmp_path, tiny_checkpoint):
    merged = tmp_path / "merged"  # `assistant merge` writes its sampling defaults into generation_config.json
    shutil.copytree(tiny_checkpoint, merged)
    generation = json.loads((merged / "generation_config.json").read_text())
    (merged / "generation_config.json").write_text(json.dumps(
        {**generation, "temperature": 0.3, "top_p": 0.7, "top_k": 40, "repetition_penalty": 1.05}))
    out = export_gguf(merged, tmp_path / "m.gguf", quant="f16").gguf
    params = [line for line in out.with_suffix(".Modelfile").read_text().splitlines() if line.startswith("PARAMETER ")
              and "stop" not in line]
    assert params == ["PARAMETER temperature 0.3", "PARAMETER top_p 0.7", "PARAMETER repeat_penalty 1.05",
                      "PARAMETER top_k 40", "PARAMETER num_ctx 2048"]


def test_cli_export_and_bad_input_leave_no_file(tmp_path, tiny_checkpoint, capsys):
    done = run_cli("export", str(tiny_checkpoint), "--to", "gguf", "--quant", "f16", "--out", str(tmp_path / "m.gguf"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "m.gguf")
    with pytest.raises(SystemExit):
        export_main(["--help"])
    help_text = capsys.readouterr().out
    assert all(q in help_text for q in ("f16", "q8_0", "q4_0", "q4_k_m"))

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "adapter_config.json").write_text("{}")
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_checkpoint.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    out_dir = tmp_path / "out"
    done = run_cli("export", str(run_dir), "--quant", "q4_0", "--out", str(out_dir / "x.gguf"))
    assert done.returncode == 1 and "merge first" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    llava = tmp_path / "llava"
    llava.mkdir()
    (llava / "config.json").write_text(json.dumps({"model_type": "llava"}))
    cases = [(other, "f16", "not a Llama-layout model"), (broken, "q8_0", "truncated"),
             (llava, "f16", "a multimodal \\(Llava\\) model; GGUF export writes text models"),
             (tiny_checkpoint, "q3_x", "q3_x"), (tiny_checkpoint, "f16", "end in .gguf")]
    for folder, quant, message in cases:
        with pytest.raises(ExportError, match=message):
            export_gguf(folder, out_dir / ("x.bin" if message == "end in .gguf" else "x.gguf"), quant=quant)
    assert not out_dir.exists()  # not even the folder --out named: made only for a file written whole
    done = run_cli("export", str(tiny_checkpoint), "--quant", "f16", "--out", str(tmp_path / "M.GGUF"))
    assert done.returncode == 0 and (tmp_path / "M.GGUF").is_file(), done.stderr  # the suffix in capitals


def test_outputs_that_cannot_be_written_are_refused_before_the_work(tmp_path, tiny_checkpoint):
    """A folder where the file or its Modelfile goes, a file where a folder goes, a model path that is a file: one line
    each, before the model loads, and nothing written."""
    (tmp_path / "taken.gguf").mkdir()
    (tmp_path / "m.Modelfile").mkdir()
    (tmp_path / "a_file").write_text("x")
    cases = [(tiny_checkpoint, tmp_path / "taken.gguf", "taken.gguf is a folder"),
             (tiny_checkpoint, tmp_path / "m.gguf", "m.Modelfile is a folder"),
             (tiny_checkpoint, tmp_path / "a_file" / "x.gguf", "a_file is a file, not a folder"),
             (tiny_checkpoint / "config.json", tmp_path / "y.gguf", "config.json is a file: give the model's folder")]
    for folder, out, message in cases:
        done = cli("export", str(folder), "--quant", "q8_0", "--out", str(out))
        assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "m.Modelfile", "taken.gguf"]


def test_a_write_that_fails_midway_is_one_line_and_leaves_nothing(tmp_path, tiny_checkpoint):
    """A full disk (here a file size limit: the same short write) was numpy's traceback; the temporary file and the
    folders made for --out were left behind."""
    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    out = tmp_path / "new" / "deep" / "m.gguf"
    done = subprocess.run([sys.executable, "-m", "myassistant.scripts.cli", "export", str(tiny_checkpoint),
                           "--quant", "f16", "--out", str(out)],
                          capture_output=True, text=True, preexec_fn=small_files, cwd=ROOT)
    assert done.returncode == 1 and f"--out {out}: writing failed" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "MiB free there" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_gguf_is_named_as_the_merged_assistant_or_as_asked(tmp_path, tiny_checkpoint):
    import shutil

    merged = tmp_path / "merged"
    shutil.copytree(tiny_checkpoint, merged)
    (merged / "merge.json").write_text(json.dumps({"name": "Alice"}))
    out = export_gguf(merged, tmp_path / "a.gguf", quant="f16").gguf
    assert field(gguf.GGUFReader(out), "general.name") == "Alice"
    out = export_gguf(merged, out, quant="f16", name="Alice's assistant").gguf  # the same file again: replaced
    assert field(gguf.GGUFReader(out), "general.name") == "Alice's assistant"
