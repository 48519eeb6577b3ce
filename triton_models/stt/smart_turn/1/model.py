"""End-of-turn classifier (smart-turn v3.2 ONNX) as a Triton python model.

One request per pause in a user's turn: the turn's audio so far in, the
probability that the speaker is done out. The features (Whisper log-mel of the
last 8 s) are computed in common/turn_features.py; requests batched together by
Triton run as one ONNX call.
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
from turn_features import RATE, log_mel

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _param(cfg: dict, key: str, default: str) -> str:
    return cfg.get("parameters", {}).get(key, {}).get("string_value", default)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import onnxruntime

        cfg = json.loads(args["model_config"])
        store = Path(os.environ.get("AI_MODELS_DIR", "/opt/ai-models"))
        folder = store / _param(cfg, "weights", "stt/smart-turn-v3.2")
        found = sorted(folder.glob("*.onnx"))
        if not found:
            raise pb_utils.TritonModelException(
                f"no smart-turn ONNX in {folder}; run `rtmedia models install-defaults`")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(_param(cfg, "intra_op_threads", "1"))
        options.inter_op_num_threads = 1
        gpu = args.get("model_instance_kind") == "GPU"
        providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu
                     else ["CPUExecutionProvider"])
        self.session = onnxruntime.InferenceSession(str(found[0]), sess_options=options,
                                                    providers=providers)
        self.input = self.session.get_inputs()[0].name
        self.max_samples = int(float(_param(cfg, "max_audio_s", "30")) * RATE)
        self.session.run(None, {self.input: log_mel(np.zeros(RATE, np.float32))[None]})

    def execute(self, requests):
        features, senders = [], []
        for request in requests:
            sender = request.get_response_sender()
            try:
                audio = pb_utils.get_input_tensor_by_name(request, "AUDIO").as_numpy()
                audio = audio.reshape(-1).astype(np.float32, copy=False)
                if audio.size == 0:
                    raise ValueError("AUDIO is empty: send the turn's 16 kHz mono float32 audio")
                if audio.size > self.max_samples:
                    raise ValueError(f"AUDIO of {audio.size / RATE:.1f} s is longer than "
                                     f"{self.max_samples / RATE:.0f} s; send the last 8 s")
                if not np.all(np.isfinite(audio)):
                    raise ValueError("AUDIO contains NaN or infinite samples")
                features.append(log_mel(audio))
                senders.append(sender)
            except Exception as exc:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))),
                            flags=FINAL)
        if not features:
            return None
        try:
            probs = self.session.run(None, {self.input: np.stack(features)})[0].reshape(-1)
        except Exception as exc:
            for sender in senders:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"end-of-turn model failed: {exc}")), flags=FINAL)
            return None
        for sender, p in zip(senders, probs, strict=True):
            sender.send(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("PROBABILITY", np.array([[p]], dtype=np.float32))]),
                flags=FINAL)
        return None
