"""Vision-language generation with transformers: the real checkpoint formats, streamed.

Loads any image-text-to-text checkpoint that transformers reads with
``AutoProcessor`` + ``AutoModelForImageTextToText`` from a model-store folder
(SmolVLM/Idefics3, Qwen2-VL/Qwen2.5-VL, LLaVA, ...: config.json, *.safetensors,
tokenizer and processor files, chat template). Generation runs in the calling
thread; each sampled token's text goes to ``on_piece`` at once, and ``cancelled``
is asked between tokens so a cancelled request stops within one token.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

try:  # in the model repository, where common/ itself is on sys.path
    from vlm_text import IncrementalText, merge_text_parts
except ImportError:  # imported as the package rtmedia_models_common
    from rtmedia_models_common.vlm_text import IncrementalText, merge_text_parts


def find_checkpoint(store: Path, weights: str) -> Path:
    """``weights`` is ``<use_case>/<model>`` or ``<use_case>/*`` (the most recently
    installed model of that use case whose folder holds a transformers checkpoint)."""
    if weights.endswith("/*"):
        candidates = [p.parent for p in (store / weights[:-2]).glob("*/config.json")
                      if (p.parent / "manifest.json").is_file()]
        if not candidates:
            raise FileNotFoundError(
                f"no vision-language checkpoint in {store / weights[:-2]}; "
                "run `rtmedia models download-use-case` for it")
        return max(candidates, key=lambda p: (p / "manifest.json").stat().st_mtime)
    folder = store / weights
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in {folder}")
    return folder


def decode_image(data: bytes, index: int, max_pixels: int):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > max_pixels:
            raise ValueError(f"image {index} has {image.width}x{image.height} pixels; the "
                             f"maximum is {max_pixels}")
        return image.convert("RGB")
    except (UnidentifiedImageError, OSError):
        raise ValueError(f"image {index} is not a PNG, JPEG, WebP or GIF image") from None


class VisionLanguageModel:
    def __init__(self, folder: Path, *, threads: int = 2, device: str = "cpu"):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        started = time.monotonic()
        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.torch = torch
        self.processor = AutoProcessor.from_pretrained(folder)
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
        self.model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype)
        self.model.to(device).eval()
        self.device = device
        self.tokenizer = self.processor.tokenizer
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.load_s = time.monotonic() - started

    def generate(self, messages: list[dict], images: list, *, max_tokens: int,
                 temperature: float, top_p: float, seed: int | None,
                 on_piece: Callable[[str], None], cancelled: Callable[[], bool]
                 ) -> tuple[str, int]:
        """Stream the reply; return (finish reason, tokens generated)."""
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        torch = self.torch
        prompt = self.processor.apply_chat_template(merge_text_parts(messages),
                                                    add_generation_prompt=True)
        inputs = self.processor(text=prompt, images=images or None, return_tensors="pt")
        inputs = inputs.to(self.device)
        text = IncrementalText(lambda ids: self.tokenizer.decode(
            ids, skip_special_tokens=True))
        state = {"prompt": True, "tokens": 0, "last": None, "cancelled": False}

        class Pieces(BaseStreamer):
            def put(self, value) -> None:
                if state["prompt"]:  # generate() first hands over the prompt
                    state["prompt"] = False
                    return
                ids = [int(i) for i in value.reshape(-1).tolist()]
                state["tokens"] += len(ids)
                state["last"] = ids[-1]
                piece = text.push(ids)
                if piece:
                    on_piece(piece)

            def end(self) -> None:
                pass

        class Cancel(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                state["cancelled"] = state["cancelled"] or cancelled()
                return torch.full((input_ids.shape[0],), state["cancelled"],
                                  dtype=torch.bool, device=input_ids.device)

        if seed is not None:
            torch.manual_seed(seed)
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} \
            if temperature > 0 else {"do_sample": False}
        with torch.inference_mode():
            self.model.generate(**inputs, max_new_tokens=max_tokens, streamer=Pieces(),
                                stopping_criteria=StoppingCriteriaList([Cancel()]),
                                pad_token_id=self.tokenizer.pad_token_id, **sampling)
        if state["cancelled"]:
            return "cancelled", state["tokens"]
        tail = text.finish()
        if tail:
            on_piece(tail)
        reason = "length" if state["tokens"] >= max_tokens and state["last"] not in self.eos \
            else "stop"
        return reason, state["tokens"]
