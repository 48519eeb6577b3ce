"""A tiny randomly initialised vision-language checkpoint in SmolVLM's real layout.

No vision-language weights can be had from the package index here, so the tests and
benchmarks write one: the same files ``HuggingFaceTB/SmolVLM-256M-Instruct`` ships
(config.json with an Idefics3 model, model.safetensors, tokenizer.json,
tokenizer_config.json, processor_config.json, chat template, generation_config.json),
with a byte-level BPE tokenizer trained on a few sentences and ~70 k random
parameters. Its answers are noise; the path it exercises (processor, image
splitting, vision encoder, connector, text decoder, streaming) is the real one.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from streaming.model_store import Manifest, ModelStore

ROW_COL = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>",
           "<fake_token_around_image>", "<image>", "<global-img>", *ROW_COL]
# The shape of SmolVLM's template: "User:<image>question<end_of_utterance>\nAssistant:"
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
CORPUS = ["The quick brown fox jumps over the lazy dog.", "What is in this picture?",
          "A red stop sign at the corner of the street.", "Video frames: 0.0 s, 1.5 s.",
          "Transcript: hello, welcome to the kitchen."]


# Model dimensions: "tiny" for tests (~70 k parameters), "256m" SmolVLM-256M-Instruct's
# own (text: Llama 576 x 30 layers; vision: SigLIP 768 x 12 layers, 512-pixel tiles of
# 16-pixel patches, pixel shuffle 4: 64 image tokens a tile) for benchmarks: the real
# model's compute and memory, with random weights and this small vocabulary.
SIZES = {
    "tiny": {"text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                      "num_attention_heads": 4, "num_key_value_heads": 2},
             "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
             "scale_factor": 2, "tile": 32, "longest_edge": 64},
    # ~25 M parameters: a heavy path that really loads a small CPU, in minutes not hours
    "small": {"text": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 8,
                       "num_attention_heads": 4, "num_key_value_heads": 2},
              "vision": {"hidden_size": 256, "intermediate_size": 1024,
                         "num_hidden_layers": 6, "num_attention_heads": 4,
                         "image_size": 256, "patch_size": 16},
              "scale_factor": 2, "tile": 256, "longest_edge": 512},
    "256m": {"text": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                      "num_attention_heads": 9, "num_key_value_heads": 3},
             "vision": {"hidden_size": 768, "intermediate_size": 3072,
                        "num_hidden_layers": 12, "num_attention_heads": 12,
                        "image_size": 512, "patch_size": 16},
             "scale_factor": 4, "tile": 512, "longest_edge": 512},
}


def write_tiny_vlm(folder: Path, *, seed: int = 0, size: str = "tiny") -> Path:
    """Write the checkpoint files into ``folder`` (created); return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3Processor,
        PreTrainedTokenizerFast,
    )
    from transformers.models.idefics3.image_processing_pil_idefics3 import (
        Idefics3ImageProcessorPil,
    )

    folder.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(CORPUS * 10, trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>",
                                        eos_token="<end_of_utterance>",
                                        pad_token="<|endoftext|>")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL}
    dims = SIZES[size]
    config = Idefics3Config(
        text_config={"model_type": "llama", "vocab_size": len(tokenizer),
                     **dims["text"], "max_position_embeddings": 8192,
                     "bos_token_id": ids["<|im_start|>"],
                     "eos_token_id": ids["<end_of_utterance>"],
                     "pad_token_id": ids["<|endoftext|>"]},
        vision_config=dims["vision"], scale_factor=dims["scale_factor"],
        image_token_id=ids["<image>"])
    tile, scale = dims["tile"], dims["scale_factor"]
    image_seq_len = (tile // dims["vision"]["patch_size"]) ** 2 // scale ** 2
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<end_of_utterance>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(folder)
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessorPil(
            size={"longest_edge": dims["longest_edge"]}, max_image_size={"longest_edge": tile},
            do_image_splitting=True),
        tokenizer=tokenizer, image_seq_len=image_seq_len, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(folder)
    return folder


def install_tiny_vlm(store: ModelStore, use_case: str, name: str = "tiny-vlm",
                     *, seed: int = 0, size: str = "tiny") -> Path:
    """Write the checkpoint into the store as ``<use_case>/<name>`` with a manifest."""
    staging = store.staging_dir(use_case, name)
    shutil.rmtree(staging)
    write_tiny_vlm(staging, seed=seed, size=size)
    manifest = Manifest(name=name, use_case=use_case,
                        files=ModelStore.describe_files(staging),
                        source={"generated": "bench/tiny_vlm.py", "seed": seed,
                                "size": size},
                        licence="Apache-2.0",
                        description=f"random Idefics3 (SmolVLM layout, {size}) for tests",
                        installed_at=time.time())
    return store.commit(staging, manifest)
