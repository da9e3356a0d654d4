"""chat.config: the one serving config, from flags' values or from the environment of a hosted app."""
from __future__ import annotations

import pytest

from myassistant.chat import EngineError, GenerationSettings, ServeConfig
from myassistant.chat.config import ENV


def test_from_env_reads_only_the_documented_variables_and_names_a_bad_one():
    assert ServeConfig.from_env({}) == ServeConfig()
    env = {"ASSISTANT_QUANTIZE": "None", "ASSISTANT_DECODE_ROWS": "4", "ASSISTANT_FAST_DECODE": "0",
           "ASSISTANT_COMPILE": "1", "APP_TITLE": "Alice", "APP_SYSTEM_PROMPT": " You are Alice. ",
           "APP_CONCURRENCY": "3", "ASSISTANT_INT8_KERNEL": "Dynamic", "ASSISTANT_SOMETHING_ELSE": "x"}
    assert ServeConfig.from_env(env) == ServeConfig(quantize="none", decode_rows=4, fast_decode=False, compile=True,
                                                    title="Alice", system_prompt=" You are Alice. ", concurrency=3,
                                                    int8_kernel="dynamic")
    assert ServeConfig.from_env({"ASSISTANT_COMPILE": ""}).compile is None  # empty = unset
    for name, value, says in (("ASSISTANT_DECODE_ROWS", "eight", "whole number"), ("APP_CONCURRENCY", "0", ">= 1"),
                              ("ASSISTANT_QUANTIZE", "int3", "auto, int8, int8_two_pass, int4, none"),
                              ("ASSISTANT_FAST_DECODE", "no", "0 or 1")):
        with pytest.raises(EngineError, match=f"{name}='{value}'.*{says}") as info:
            ServeConfig.from_env({name: value})
        assert info.type.user_error
    assert set(ENV) <= {f"ASSISTANT_{n}" for n in ("QUANTIZE", "INT8_KERNEL", "FAST_DECODE", "COMPILE",
                                                              "DECODE_ROWS")} | {
        f"APP_{n}" for n in ("TITLE", "SYSTEM_PROMPT", "IDENTITY_GUARD", "CONCURRENCY")}


def test_flags_values_are_checked_like_the_environment():
    with pytest.raises(EngineError, match="dtype='int3'.*decode_rows=0"):
        ServeConfig(dtype="int3", decode_rows=0)


def test_sampling_defaults_come_from_generation_config_where_it_sets_them():
    default = GenerationSettings()
    assert GenerationSettings.from_generation_config({"bos_token_id": 1, "eos_token_id": [2]}) == default
    assert GenerationSettings.from_generation_config({"do_sample": False, "max_new_tokens": 64}) == \
        GenerationSettings(temperature=0, max_new_tokens=64)
    gen = {"do_sample": True, "temperature": 0.3, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.1}
    assert GenerationSettings.from_generation_config(gen) == GenerationSettings(
        temperature=0.3, top_p=0.9, top_k=20, repetition_penalty=1.1)
    assert GenerationSettings.from_generation_config({"top_p": 7}) == default  # unusable: the defaults, warned
