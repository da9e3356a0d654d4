"""The model layer against the ORIGINAL InternLM2 code's outputs, round trips, and bad folders."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from myassistant import model
from conftest import FIXTURES, ROOT, run_cli
from myassistant.model.checkpoint import CheckpointError

GOLDEN = FIXTURES / "internlm2"


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_logits_and_generation_match_original_code(attn):
    g = load_file(GOLDEN / "tiny" / "golden.safetensors")
    m = model.load_model(GOLDEN / "tiny", attn_implementation=attn)
    assert type(m).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        out = m(g["input_ids"], attention_mask=g["attention_mask"], output_hidden_states=True)
        torch.testing.assert_close(out.logits, g["logits"], atol=1e-5, rtol=0)
        torch.testing.assert_close(out.hidden_states[-1], g["last_hidden_state"], atol=1e-5, rtol=0)
        left = m(g["leftpad_input_ids"], attention_mask=g["leftpad_attention_mask"],
                 position_ids=g["leftpad_position_ids"]).logits
        mask = g["leftpad_attention_mask"].bool()
        torch.testing.assert_close(left[mask], g["leftpad_logits"][mask], atol=1e-5, rtol=0)
        gen = m.generate(g["gen_prompt_ids"], attention_mask=torch.ones_like(g["gen_prompt_ids"]),
                         max_new_tokens=12, do_sample=False)
    assert gen.tolist() == g["generated_ids"].tolist()


def test_dynamic_rope_matches_original_and_is_stateless():
    g = load_file(GOLDEN / "tiny_dynamic_rope" / "golden.safetensors")
    m = model.load_model(GOLDEN / "tiny_dynamic_rope", attn_implementation="eager")
    assert m.config.rope_parameters["rope_type"] == "dynamic"
    with torch.no_grad():
        fresh_short = m(g["short_input_ids"]).logits
        long = m(g["input_ids"]).logits  # 48 > max_position_embeddings 32: NTK scaling is active
        short_after_long = m(g["short_input_ids"]).logits
    torch.testing.assert_close(long, g["logits"], atol=1e-5, rtol=0)
    torch.testing.assert_close(fresh_short, g["short_logits"], atol=1e-5, rtol=0)
    # The original code kept the stretched rotary cache after a long input; we match a fresh model.
    torch.testing.assert_close(short_after_long, g["short_logits"], atol=1e-5, rtol=0)


def _spm_variants():
    return [
        {},
        {"add_dummy_prefix": True},
        {"normalization": "nmt_nfkc"},
    ]


@pytest.mark.parametrize("variant", _spm_variants())
def test_tokenizer_ids_equal_sentencepiece(tmp_path, variant):
    sentencepiece = pytest.importorskip("sentencepiece")
    from myassistant.model.tiny import default_corpus, train_spm_tokenizer
    from myassistant.model.tokenizer import tokenizer_from_spm

    f = train_spm_tokenizer(default_corpus(), tmp_path / "tokenizer.model", 800, **variant)
    ours = tokenizer_from_spm(f)
    ref = sentencepiece.SentencePieceProcessor(model_file=str(f))
    texts = ["Hello world, 你好！今天有什么可以帮你的吗？", "weird  spaces\tand 🙂 emoji \n newline",
             "  lead and trail  ", "Ｆｕｌｌ width ＡＢＣ 12345", "骆驼 zebra quizzes", "a"]
    for text in texts:
        ids = ours(text, add_special_tokens=False)["input_ids"]
        assert ids == ref.encode(text), text
        assert ours.decode(ids) == ref.decode(ids), text


def test_tokenizer_specials_template_and_nul_piece(tmp_path):
    folder = model.build_tiny_checkpoint(tmp_path / "m", nul_piece=True)
    raw = (folder / "tokenizer.model").read_bytes()
    assert b"a\x00b" in raw  # the piece sentencepiece 0.2.2 refuses; we must not care
    tok = model.load_tokenizer(folder)
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    assert tok.convert_ids_to_tokens(tok("hi")["input_ids"])[0] == "<s>"
    im_start, im_end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert model.stop_token_ids(tok) == [2, im_end]
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你是谁"}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == "<s><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n你是谁<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(im_start) == 3 and ids.count(im_end) == 2 and ids[0] == 1
    assert tok.decode(ids) == text
    # Saved and loaded again by plain AutoTokenizer: same ids, same template, no remote code.
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path / "saved")
    again = AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert again(text, add_special_tokens=False)["input_ids"] == ids
    assert again.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == text


def _logits(m, ids):
    with torch.no_grad():
        return m(ids).logits


def test_round_trip_standard_and_back_to_internlm2(tmp_path, tiny_checkpoint):
    ids = torch.randint(3, 900, (2, 11), generator=torch.Generator().manual_seed(0))
    src = model.load_model(tiny_checkpoint)
    tok = model.load_tokenizer(tiny_checkpoint)
    want = _logits(src, ids)

    std = model.save_model(src, tok, tmp_path / "std")
    assert (std / "model.safetensors").exists() and (std / "tokenizer.json").exists()
    cfg = json.loads((std / "config.json").read_text())
    assert cfg["model_type"] == "llama" and "auto_map" not in cfg
    # Plain transformers, in a fresh offline process: no trust_remote_code, no project code.
    script = textwrap.dedent(f"""
        import torch, sys
        from transformers import AutoModelForCausalLM, AutoTokenizer
        m = AutoModelForCausalLM.from_pretrained({str(std)!r}).eval()
        t = AutoTokenizer.from_pretrained({str(std)!r})
        ids = torch.tensor({ids.tolist()})
        torch.save(m(ids).logits.detach(), {str(tmp_path / 'plain.pt')!r})
        print(t.apply_chat_template([{{"role": "user", "content": "hi"}}], tokenize=False, add_generation_prompt=True))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("<|im_start|>assistant")
    torch.testing.assert_close(torch.load(tmp_path / "plain.pt"), want, atol=1e-6, rtol=0)

    back = model.save_model(model.load_model(std), model.load_tokenizer(std), tmp_path / "back", layout="internlm2")
    original = load_file(tiny_checkpoint / "model.safetensors")
    written = load_file(back / "model.safetensors")
    assert written.keys() == original.keys()
    for key in original:
        assert torch.equal(written[key], original[key]), key
    assert json.loads((back / "config.json").read_text())["model_type"] == "internlm2"
    torch.testing.assert_close(_logits(model.load_model(back), ids), want, atol=1e-6, rtol=0)
    assert "auto_map" not in json.loads((back / "config.json").read_text())  # no remote code to point at

    # written from a release that ships InternLM2's remote code (as a real download does): the code, tokenizer.model
    # and the auto_map entries go with it, so that the original code (trust_remote_code) loads it as the release
    release = tmp_path / "release"
    shutil.copytree(tiny_checkpoint, release)
    for name in ("configuration_internlm2.py", "modeling_internlm2.py", "tokenization_internlm2.py"):
        (release / name).write_text(f"# {name}: InternLM2's remote code\n")
    tokenizer_config = json.loads((release / "tokenizer_config.json").read_text())
    (release / "tokenizer_config.json").write_text(json.dumps({**tokenizer_config, "tokenizer_class": "InternLM2Tokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]}}))
    again = model.save_model(model.load_model(std), model.load_tokenizer(std), tmp_path / "again", layout="internlm2",
                             release=release)
    assert json.loads((again / "config.json").read_text())["auto_map"] == json.loads(
        (release / "config.json").read_text())["auto_map"]
    written = json.loads((again / "tokenizer_config.json").read_text())
    assert written["tokenizer_class"] == "InternLM2Tokenizer" and written["auto_map"]["AutoTokenizer"][0] == \
        "tokenization_internlm2.InternLM2Tokenizer"
    for name in ("configuration_internlm2.py", "modeling_internlm2.py", "tokenization_internlm2.py", "tokenizer.model"):
        assert (again / name).read_bytes() == (release / name).read_bytes(), name
    torch.testing.assert_close(_logits(model.load_model(again), ids), want, atol=1e-6, rtol=0)
    assert model.load_tokenizer(again)("你好")["input_ids"] == model.load_tokenizer(std)("你好")["input_ids"]


def test_sharded_bin_checkpoint_with_index(tmp_path, tiny_checkpoint):
    folder = tmp_path / "bin"
    shutil.copytree(tiny_checkpoint, folder)
    sd = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    keys = sorted(sd)
    shards = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2], "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
    for name, names in shards.items():
        torch.save({k: sd[k] for k in names}, folder / name)
    weight_map = {k: name for name, names in shards.items() for k in names}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    ids = torch.tensor([[1, 5, 9, 200]])
    torch.testing.assert_close(_logits(model.load_model(folder), ids), _logits(model.load_model(tiny_checkpoint), ids))


def test_bf16_load_and_sharded_safetensors_save(tmp_path, tiny_checkpoint):
    m = model.load_model(tiny_checkpoint, dtype="bfloat16")
    assert m.dtype == torch.bfloat16
    out = model.save_model(m, model.load_tokenizer(tiny_checkpoint), tmp_path / "sharded", max_shard_size=100_000)
    assert (out / "model.safetensors.index.json").exists()
    assert len(list(out.glob("model-*.safetensors"))) > 1
    assert model.load_model(out).dtype == torch.bfloat16


def _copy(tiny, tmp_path, name="broken"):
    dst = tmp_path / name
    shutil.copytree(tiny, dst)
    return dst


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda d: shutil.rmtree(d), "no such model folder"),
        (lambda d: (d / "config.json").unlink(), "no config.json"),
        (lambda d: (d / "config.json").write_text('{"model_type": "internlm9"}'), "unknown model_type 'internlm9'"),
        (lambda d: (d / "config.json").write_text('{"model_type": '), "config.json:1: invalid JSON"),
        (lambda d: (d / "model.safetensors").unlink(), "no weights"),
        (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:5000]),
         "truncated or damaged"),
        (lambda d: (d / "model.safetensors").write_text(
            "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 809896\n"), "git-lfs pointer file"),
        (lambda d: (d / "model.safetensors.index.json").write_text(
            json.dumps({"weight_map": {"output.weight": "model-00002-of-00002.safetensors"}})),
         "missing weight shards model-00002-of-00002.safetensors"),
    ],
    ids=["no-dir", "no-config", "unknown-type", "bad-json", "no-weights", "truncated", "lfs-pointer", "missing-shard"],
)
def test_bad_folders_give_one_clear_error(tmp_path, tiny_checkpoint, damage, expected):
    folder = _copy(tiny_checkpoint, tmp_path)
    damage(folder)
    with pytest.raises(CheckpointError, match=expected.replace("(", r"\(").replace(".", r"\.")):
        model.load_model(folder)


def test_pointer_tokenizer_is_reported(tmp_path, tiny_checkpoint):
    folder = _copy(tiny_checkpoint, tmp_path)
    (folder / "tokenizer.model").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:f868\nsize 1477754\n")
    with pytest.raises(CheckpointError, match="tokenizer.model is a git-lfs pointer file.*git lfs pull"):
        model.load_tokenizer(folder)


def test_tiny_cli_writes_a_loadable_checkpoint(tmp_path):
    out = run_cli("tiny", str(tmp_path / "t"), "--layers", "1", "--hidden-size", "32", "--heads", "2", "--kv-heads", "1",
                  "--intermediate-size", "64")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "t")
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json",
        "tokenizer.model", "tokenizer_config.json"]
    assert not list(tmp_path.glob(".t.tmp-*"))  # nothing half-written left behind
    m = model.load_model(tmp_path / "t")
    assert m.config.num_hidden_layers == 1 and m.config.hidden_size == 32


def test_cli_unknown_command_and_help():
    out = run_cli("nope")
    assert out.returncode == 2 and "unknown command 'nope'" in out.stderr
    out = run_cli("--help")
    assert out.returncode == 0 and "train" in out.stdout and "push-app" in out.stdout
    assert ROOT.joinpath("scripts", "cli.py").exists()
