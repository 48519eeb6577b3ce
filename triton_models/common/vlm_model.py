"""The decoupled Triton python model behind ``multimodal/vlm`` and ``video/video_vlm``.

Messages (JSON, text and image parts) and encoded images in; one response per
generated piece of text, then one with the finish reason and token counts, as the
``llm`` model answers. The video model takes sampled frames with their timestamps
and the clip's transcript and asks the same vision-language model about them.
Cancelling the request stops generation within one token.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from vlm_runtime import VisionLanguageModel, decode_image, find_checkpoint
from vlm_text import check_images, parse_vlm_messages, video_messages

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _param(cfg: dict, key: str, default: str) -> str:
    return cfg.get("parameters", {}).get(key, {}).get("string_value", default)


class VLMTritonModel:
    def initialize(self, args: dict) -> None:
        cfg = json.loads(args["model_config"])
        store = Path(os.environ.get("AI_MODELS_DIR", "/opt/ai-models"))
        folder = find_checkpoint(store, _param(cfg, "weights", "multimodal/*"))
        gpu = args.get("model_instance_kind") == "GPU"
        device = f"cuda:{args.get('model_instance_device_id', 0)}" if gpu else "cpu"
        self.vlm = VisionLanguageModel(folder, threads=int(_param(cfg, "n_threads", "2")),
                                       device=device)
        self.video = _param(cfg, "video", "false") == "true"
        self.max_tokens_limit = int(_param(cfg, "max_tokens_limit", "1024"))
        self.max_messages_bytes = int(_param(cfg, "max_messages_bytes", "65536"))
        self.max_images = int(_param(cfg, "max_images", "8"))
        self.max_image_pixels = int(_param(cfg, "max_image_pixels", str(4096 * 4096)))
        pb_utils.Logger.log_info(f"{cfg['name']}: {folder.name} loaded in "
                                 f"{self.vlm.load_s:.1f} s on {device}")

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                self._generate(request, sender)
            except Exception as exc:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))),
                            flags=FINAL)
        return None

    def _generate(self, request, sender) -> None:
        if sender.is_cancelled():  # its client left while it was queued
            sender.send(flags=FINAL)
            return
        raw = pb_utils.get_input_tensor_by_name(request, "MESSAGES").as_numpy().reshape(-1)[0]
        messages = parse_vlm_messages(raw, self.max_messages_bytes)
        blobs = _tensor_list(request, "IMAGES")
        if self.video:
            stamps = [float(t) for t in _tensor_array(request, "TIMESTAMPS")]
            if len(stamps) != len(blobs):
                raise ValueError(f"{len(blobs)} frames but {len(stamps)} TIMESTAMPS")
            if not blobs:
                raise ValueError("a video request needs at least one frame in IMAGES")
            transcript = (_tensor_list(request, "TRANSCRIPT") or [b""])[0].decode()
            messages = video_messages(messages, stamps, transcript)
        check_images(messages, len(blobs), self.max_images)
        images = [decode_image(b, i, self.max_image_pixels) for i, b in enumerate(blobs)]
        max_tokens = int(_scalar(request, "MAX_TOKENS", 256))
        if not 1 <= max_tokens <= self.max_tokens_limit:
            raise ValueError(f"MAX_TOKENS {max_tokens} is outside 1..{self.max_tokens_limit}")
        seed = _scalar(request, "SEED", None)
        reason, produced = self.vlm.generate(
            messages, images, max_tokens=max_tokens,
            temperature=float(_scalar(request, "TEMPERATURE", 0.0)),
            top_p=float(_scalar(request, "TOP_P", 1.0)),
            seed=int(seed) if seed is not None else None,
            on_piece=lambda piece: sender.send(_response(piece, "")),
            cancelled=sender.is_cancelled)
        if reason == "cancelled":
            sender.send(flags=FINAL)
            return
        sender.send(_response("", reason, {"completion_tokens": produced}), flags=FINAL)


def _response(text: str, reason: str, usage: dict | None = None):
    return pb_utils.InferenceResponse(output_tensors=[
        pb_utils.Tensor("TEXT", np.array([text.encode()], dtype=np.object_)),
        pb_utils.Tensor("FINISH_REASON", np.array([reason.encode()], dtype=np.object_)),
        pb_utils.Tensor("USAGE", np.array([json.dumps(usage or {}).encode()],
                                          dtype=np.object_)),
    ])


def _tensor_array(request, name: str) -> np.ndarray:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return tensor.as_numpy().reshape(-1) if tensor is not None else np.zeros(0)


def _tensor_list(request, name: str) -> list[bytes]:
    return [bytes(b) for b in _tensor_array(request, name)]


def _scalar(request, name: str, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return tensor.as_numpy().reshape(-1)[0].item() if tensor is not None else default
