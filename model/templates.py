"""Chat templates, as Jinja strings that go into a tokenizer's ``chat_template``.

The project trains and serves through ``tokenizer.apply_chat_template`` so that the prompt format is
the same in both places; these are the templates for tokenizers that ship without one.
"""
from __future__ import annotations

# InternLM2-chat, byte for byte the template of internlm/internlm2-chat-7b's tokenizer_config.json.
INTERNLM2_CHAT = (
    "{{ bos_token }}{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

INTERNLM2_SPECIAL_TOKENS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|action_start|>",
    "<|action_end|>",
    "<|interpreter|>",
    "<|plugin|>",
]

# The token that ends an assistant turn; generation must stop there although eos is </s>.
END_OF_TURN = "<|im_end|>"

TEMPLATES = {"internlm2_chat": INTERNLM2_CHAT}
