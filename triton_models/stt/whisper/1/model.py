"""Streaming Whisper as a decoupled Triton python model, batched across streams.

Each audio stream is a Triton sequence; every chunk is answered with one response:
a partial transcript, nothing, or (END chunk) a final with word timestamps. A
FLUSH chunk (a speculative end of turn) is answered with a final too, and the
stream stays open. The
sequence batcher hands ``execute`` one chunk of each of up to max_batch_size
streams; their finals are decoded as one batch (and sent first), then their
partials as another (common/whisper_stream.py, tested offline), each answer to its
own stream's sender. whisper_base/1/model.py is a link to this file: both models
run this code, each with its own config.pbtxt.
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
    BatchedWhisper,
    Chunk,
    StreamingTranscriber,
    WhisperSettings,
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
        model = WhisperModel(
            str(weights),
            device="cuda" if gpu else "cpu",
            device_index=int(args.get("model_instance_device_id", 0)),
            compute_type=_param(cfg, "gpu_compute_type", "float16") if gpu
            else _param(cfg, "compute_type", "int8"),
            cpu_threads=int(_param(cfg, "cpu_threads", "2")),
            local_files_only=True,
        )
        settings = WhisperSettings(
            english_only=weights.name.endswith(".en"),
            default_language=_param(cfg, "language", "en") or None,
            partial_every=int(float(_param(cfg, "partial_interval_s", "0.5")) * SAMPLE_RATE),
            partial_every_busy=int(float(_param(cfg, "partial_interval_busy_s", "0"))
                                   * SAMPLE_RATE),
            max_window=int(float(_param(cfg, "max_window_s", "20")) * SAMPLE_RATE),
            max_chunk=int(float(_param(cfg, "max_chunk_s", "30")) * SAMPLE_RATE),
            beam_size=int(_param(cfg, "beam_size", "1")),
            trim_encoder=_param(cfg, "trim_encoder", "true").lower() == "true",
            stable_commit=int(float(_param(cfg, "stable_commit_s", "0")) * SAMPLE_RATE),
            max_batch=max(1, int(cfg.get("max_batch_size", 16))),
            # a GPU encodes a padded 30 s window about as fast as a short one: one group
            bucket_s=float(_param(cfg, "gpu_batch_bucket_s" if gpu else "batch_bucket_s",
                                  "30" if gpu else "1")),
            encoder_rows=int(_param(cfg, "gpu_encoder_rows" if gpu else "encoder_rows",
                                    "0" if gpu else "1")),
        )
        self.transcriber = StreamingTranscriber(BatchedWhisper(model, settings), settings)
        # Warm up so the first user does not pay for lazy initialisation.
        self.transcriber.handle(0, np.zeros(SAMPLE_RATE, np.float32), start=True, end=True,
                                language="en")

    def execute(self, requests):
        senders, chunks = [], []
        for request in requests:
            sender = request.get_response_sender()
            try:
                lang_t = pb_utils.get_input_tensor_by_name(request, "LANGUAGE")
                chunks.append(Chunk(
                    int(_scalar(request, "CORRID")),
                    pb_utils.get_input_tensor_by_name(request, "AUDIO").as_numpy().reshape(-1),
                    start=bool(_scalar(request, "START")), end=bool(_scalar(request, "END")),
                    language=_decode(lang_t.as_numpy().reshape(-1)[0]) if lang_t is not None
                    else None, flush=bool(_scalar(request, "FLUSH"))))
                senders.append(sender)
            except Exception as exc:  # a bad request must not take the model down
                _fail(sender, exc)

        answered: set[int] = set()

        def send(i: int, result) -> None:
            answered.add(i)
            try:
                if isinstance(result, Exception):
                    _fail(senders[i], result)
                else:
                    senders[i].send(_response(*result), flags=FINAL)
            except Exception as exc:  # e.g. the client cancelled: the others still get theirs
                pb_utils.Logger.log_warn(f"whisper: answer not sent: {exc!r}")

        try:
            self.transcriber.handle_batch(chunks, send)
        except Exception as exc:  # a bug must answer every stream, not leave it waiting
            pb_utils.Logger.log_error(f"whisper batch failed: {exc!r}")
            for i in range(len(senders)):
                if i not in answered:
                    send(i, exc)
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


def _fail(sender, exc: Exception) -> None:
    sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))), flags=FINAL)


def _scalar(request, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return tensor.as_numpy().reshape(-1)[0] if tensor is not None else 0


def _decode(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
