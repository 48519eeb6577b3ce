"""Streaming Whisper as a decoupled Triton python model.

Each audio stream is a Triton sequence; every chunk is answered with one response:
a partial transcript, nothing, or (END chunk, or an over-long window cut at a
segment boundary) a final with word timestamps. The streaming logic lives in
common/whisper_stream.py (tested offline). whisper_base/1/model.py is a link to
this file: both models run this code, each with its own config.pbtxt.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

# The rendered model repository has common/ next to the use-case folders.
sys.path.insert(0, str(Path(__file__).resolve().parents[2].parent / "common"))
from whisper_stream import (
    SAMPLE_RATE,
    StreamingTranscriber,
    WhisperSettings,
    short_window_model,
)

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _param(cfg: dict, key: str, default: str) -> str:
    return cfg.get("parameters", {}).get(key, {}).get("string_value", default)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        from faster_whisper import WhisperModel

        cfg = json.loads(args["model_config"])
        store = Path(os.environ.get("AI_MODELS_DIR", "/opt/ai-models"))
        weights = store / _param(cfg, "weights", "stt/whisper-tiny.en")
        if not (weights / "model.bin").is_file():
            raise pb_utils.TritonModelException(
                f"Whisper weights not found in {weights}; run `rtmedia models install-defaults`"
            )
        gpu = args.get("model_instance_kind") == "GPU"
        model = short_window_model(WhisperModel)(
            str(weights),
            device="cuda" if gpu else "cpu",
            device_index=int(args.get("model_instance_device_id", 0)),
            compute_type=_param(cfg, "compute_type", "float16" if gpu else "int8"),
            cpu_threads=int(_param(cfg, "cpu_threads", "2")),
            local_files_only=True,
        )
        self.transcriber = StreamingTranscriber(model, WhisperSettings(
            english_only=weights.name.endswith(".en"),
            default_language=_param(cfg, "language", "en") or None,
            partial_every=int(float(_param(cfg, "partial_interval_s", "0.5")) * SAMPLE_RATE),
            max_window=int(float(_param(cfg, "max_window_s", "20")) * SAMPLE_RATE),
            max_chunk=int(float(_param(cfg, "max_chunk_s", "30")) * SAMPLE_RATE),
            beam_size=int(_param(cfg, "beam_size", "1")),
            trim_encoder=_param(cfg, "trim_encoder", "true").lower() == "true",
        ))
        # Warm up so the first user does not pay for lazy initialisation.
        list(model.transcribe(np.zeros(SAMPLE_RATE, np.float32), language="en",
                              beam_size=1, without_timestamps=True)[0])

    def execute(self, requests):
        # Finals first: a user waits on an end of turn, while a partial that comes a
        # little later only updates a caption (matters when many streams share a batch).
        requests = sorted(requests, key=lambda r: not bool(_scalar(r, "END")))
        for request in requests:
            sender = request.get_response_sender()
            try:
                lang_t = pb_utils.get_input_tensor_by_name(request, "LANGUAGE")
                text, final, details = self.transcriber.handle(
                    int(_scalar(request, "CORRID")),
                    pb_utils.get_input_tensor_by_name(request, "AUDIO").as_numpy().reshape(-1),
                    start=bool(_scalar(request, "START")), end=bool(_scalar(request, "END")),
                    language=_decode(lang_t.as_numpy().reshape(-1)[0]) if lang_t is not None
                    else None,
                )
                sender.send(_response(text, final, details), flags=FINAL)
            except Exception as exc:  # a bad request must not take the model down
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))),
                            flags=FINAL)
        self.transcriber.expire_idle()
        return None

    def finalize(self) -> None:
        self.transcriber.streams.clear()


def _response(text: str, final: bool, details: dict):
    return pb_utils.InferenceResponse(output_tensors=[
        pb_utils.Tensor("TEXT", np.array([[text.encode()]], dtype=np.object_)),
        pb_utils.Tensor("IS_FINAL", np.array([[final]], dtype=bool)),
        pb_utils.Tensor("DETAILS", np.array([[json.dumps(details).encode()]], dtype=np.object_)),
    ])


def _scalar(request, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return tensor.as_numpy().reshape(-1)[0] if tensor is not None else 0


def _decode(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
