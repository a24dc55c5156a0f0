"""Tiny random vision-language models of the three LLaVA families, built from configs (no download),
with a word-level tokenizer carrying LLaVA-1.5's chat template.  Shared by test_vlm and
test_device."""

from __future__ import annotations

import torch

IMAGE = "<image>"
WORDS = ["<pad>", "<unk>", "<s>", "</s>", IMAGE, "USER:", "ASSISTANT:", "Safe", "Unsafe", "safe", "unsafe",
         "policy", "is", "a", "the", "rule", "no", "harm"] + [f"w{i}" for i in range(40)]
FIRST_WORD = WORDS.index("w0")  # user tokens are drawn from w0..w39

# LLaVA-1.5's template as published with llava-hf processors: a user turn renders its images
# first, then its texts; a system turn renders its text without a role.
LLAVA_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] != 'system' %}{{ m['role'].upper() + ': ' }}{% endif %}"
    "{% for c in m['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for c in m['content'] | selectattr('type', 'equalto', 'text') %}{{ c['text'] + ' ' }}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
# A template rendering contents in order (OneVision / Qwen style).
ORDERED_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] + ': ' }}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<image> ' }}{% else %}{{ c['text'] + ' ' }}{% endif %}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>")
    tok.add_special_tokens({"additional_special_tokens": [IMAGE]})
    tok.chat_template = LLAVA_TEMPLATE
    return tok


V = len(WORDS)
PINPOINTS = [[16, 32], [32, 16], [32, 32]]


def _text_config(family: str):
    from transformers import LlamaConfig, Qwen2Config

    kw = dict(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
              max_position_embeddings=256)
    if family == "onevision":
        return Qwen2Config(num_key_value_heads=1, **kw)  # grouped-query attention in the cache
    return LlamaConfig(num_key_value_heads=2, **kw)


def processor(family: str):
    """The Hugging Face image processor (Pillow backend) of ``family``, for 16×16-pixel tiles."""
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import \
        LlavaOnevisionImageProcessorPil

    if family == "llava":
        return LlavaImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    if family == "next":
        return LlavaNextImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
                                          image_grid_pinpoints=PINPOINTS)
    return LlavaOnevisionImageProcessorPil(size={"height": 16, "width": 16},
                                           image_grid_pinpoints=[[16, 16]] + PINPOINTS)


def model(family: str, seed: int = 0):
    """A tiny random ``...ForConditionalGeneration`` of ``family`` in {llava, next, onevision}
    (image tower input 16×16 pixels, patches of 8), and the matching Hugging Face image processor
    (Pillow backend)."""
    import transformers as tf

    vkw = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16,
               patch_size=8)
    common = dict(text_config=_text_config(family), image_token_index=WORDS.index(IMAGE), vision_feature_layer=-1)
    torch.manual_seed(seed)
    if family == "llava":
        cfg = tf.LlavaConfig(vision_config=tf.CLIPVisionConfig(projection_dim=16, **vkw), projector_hidden_act="gelu",
                             vision_feature_select_strategy="default", **common)
        m = tf.LlavaForConditionalGeneration(cfg)
    elif family == "next":
        cfg = tf.LlavaNextConfig(vision_config=tf.CLIPVisionConfig(projection_dim=16, **vkw),
                                 vision_feature_select_strategy="default", image_grid_pinpoints=PINPOINTS, **common)
        m = tf.LlavaNextForConditionalGeneration(cfg)
    else:
        cfg = tf.LlavaOnevisionConfig(vision_config=tf.SiglipVisionConfig(**vkw), vision_feature_select_strategy="full",
                                      image_grid_pinpoints=[[16, 16]] + PINPOINTS, **common)
        m = tf.LlavaOnevisionForConditionalGeneration(cfg)
    return m.eval(), processor(family)


def adapter(family: str, policy: str = "policy is no harm rule rule", **kw):
    from hybridrs.models.vlm import VLMGuardAdapter, prompt_layout

    tok = tokenizer()
    m, proc = model(family)
    return VLMGuardAdapter(m, proc, prompt_layout(tok, policy=policy), tokenizer=tok, **kw)


def user_tokens(b: int, L: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randint(FIRST_WORD, V, (b, L), generator=torch.Generator().manual_seed(seed))
