"""Streaming chat LLM as a decoupled Triton python model (llama.cpp, GGUF weights).

Tokens go out as they are sampled. Between tokens the model asks Triton whether
the request was cancelled (client disconnect, barge-in) and stops generating at
once, freeing the instance for the next user.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
ROLES = {"system", "user", "assistant"}


def _param(cfg: dict, key: str, default: str) -> str:
    return cfg.get("parameters", {}).get(key, {}).get("string_value", default)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        from llama_cpp import Llama

        cfg = json.loads(args["model_config"])
        store = Path(os.environ.get("AI_MODELS_DIR", "/opt/ai-models"))
        folder = store / _param(cfg, "weights", "agent/smollm2-135m")
        ggufs = sorted(folder.glob("*.gguf"))
        if not ggufs:
            raise pb_utils.TritonModelException(
                f"no .gguf in {folder}; run `rtmedia models install-defaults`")
        gpu = args.get("model_instance_kind") == "GPU"
        self.llm = Llama(
            model_path=str(ggufs[0]),
            n_ctx=int(_param(cfg, "n_ctx", "2048")),
            n_threads=int(_param(cfg, "n_threads", "2")),
            n_gpu_layers=int(_param(cfg, "n_gpu_layers", "-1")) if gpu else 0,
            main_gpu=int(args.get("model_instance_device_id", 0)),
            verbose=False,
        )
        self.max_tokens_limit = int(_param(cfg, "max_tokens_limit", "1024"))
        self.max_messages_bytes = int(_param(cfg, "max_messages_bytes", "65536"))
        self.eos = self.llm.token_eos()

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                self._generate(request, sender)
            except Exception as exc:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))),
                            flags=FINAL)
        return None

    def _parse(self, request) -> tuple[list[dict], dict]:
        raw = pb_utils.get_input_tensor_by_name(request, "MESSAGES").as_numpy().reshape(-1)[0]
        if len(raw) > self.max_messages_bytes:
            raise ValueError(f"MESSAGES is {len(raw)} bytes; the maximum is "
                             f"{self.max_messages_bytes}")
        try:
            messages = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"MESSAGES is not valid JSON: {exc}") from None
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise ValueError('MESSAGES must be a non-empty JSON list of {"role": '
                             '"system"|"user"|"assistant", "content": "..."}')
        max_tokens = _scalar(request, "MAX_TOKENS", 256)
        if not 1 <= max_tokens <= self.max_tokens_limit:
            raise ValueError(f"MAX_TOKENS {max_tokens} is outside 1..{self.max_tokens_limit}")
        opts = {
            "max_tokens": int(max_tokens),
            "temperature": float(_scalar(request, "TEMPERATURE", 0.7)),
            "top_p": float(_scalar(request, "TOP_P", 0.95)),
        }
        seed = _scalar(request, "SEED", None)
        if seed is not None:
            opts["seed"] = int(seed)
        if bool(_scalar(request, "IGNORE_EOS", False)):
            opts["logit_bias"] = {self.eos: -1e9}
        return messages, opts

    def _generate(self, request, sender) -> None:
        messages, opts = self._parse(request)
        # llama.cpp raises a ValueError naming the sizes when the prompt overflows n_ctx.
        stream = self.llm.create_chat_completion(messages=messages, stream=True, **opts)
        reason, produced = "stop", 0
        try:
            for chunk in stream:
                if sender.is_cancelled():
                    reason = "cancelled"
                    break
                choice = chunk["choices"][0]
                piece = choice.get("delta", {}).get("content") or ""
                if piece:
                    produced += 1
                    sender.send(_response(piece, ""))
                if choice.get("finish_reason"):
                    reason = choice["finish_reason"]
        finally:
            stream.close()  # stops llama.cpp from sampling further tokens
        usage = {"completion_tokens": produced}
        if reason == "cancelled":
            sender.send(flags=FINAL)
        else:
            sender.send(_response("", reason, usage), flags=FINAL)


def _response(text: str, reason: str, usage: dict | None = None):
    return pb_utils.InferenceResponse(output_tensors=[
        pb_utils.Tensor("TEXT", np.array([text.encode()], dtype=np.object_)),
        pb_utils.Tensor("FINISH_REASON", np.array([reason.encode()], dtype=np.object_)),
        pb_utils.Tensor("USAGE", np.array([json.dumps(usage or {}).encode()], dtype=np.object_)),
    ])


def _scalar(request, name: str, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return tensor.as_numpy().reshape(-1)[0].item() if tensor is not None else default
