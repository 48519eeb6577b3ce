"""Talking-head frames for a piece of TTS audio, as a decoupled Triton python model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _param(cfg: dict, key: str, default: str) -> str:
    return cfg.get("parameters", {}).get(key, {}).get("string_value", default)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        from pipelines.avatar import Avatar

        cfg = json.loads(args["model_config"])
        self.store = Path(os.environ.get("AI_MODELS_DIR", "/opt/ai-models"))
        default = self.store / _param(cfg, "weights", "avatar/astronaut")
        if not (default / "avatar.json").is_file():
            raise pb_utils.TritonModelException(
                f"no avatar in {default}; run `rtmedia models install-defaults` or "
                "`rtmedia avatar prepare PHOTO`")
        self.default_name = default.name
        self.avatars: dict[str, Avatar] = {self.default_name: Avatar.load(default)}
        self.per_response = int(_param(cfg, "frames_per_response", "5"))
        self.max_audio_s = float(_param(cfg, "max_audio_s", "30"))
        self.wav2lip = None
        renderer = _param(cfg, "renderer", "auto")
        ckpts = sorted((self.store / "avatar" / "wav2lip").glob("**/*.pth"))
        if renderer in ("auto", "wav2lip") and ckpts:
            try:
                from pipelines.wav2lip import Wav2LipRenderer

                gpu = args.get("model_instance_kind") == "GPU"
                self.wav2lip = Wav2LipRenderer(ckpts[0], device="cuda" if gpu else "cpu")
            except ImportError as exc:  # torch missing: the warp renderer still works
                if renderer == "wav2lip":
                    raise pb_utils.TritonModelException(f"wav2lip needs torch: {exc}") from None
        self.renderer = "wav2lip" if self.wav2lip else "warp"

    def _avatar(self, name: str):
        from pipelines.avatar import Avatar

        name = name or self.default_name
        if name not in self.avatars:
            folder = self.store / "avatar" / name
            if "/" in name or not (folder / "avatar.json").is_file():
                raise ValueError(f"unknown AVATAR {name!r}; prepare one with "
                                 "`rtmedia avatar prepare PHOTO --name NAME`")
            self.avatars[name] = Avatar.load(folder)
        return self.avatars[name]

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                self._render(request, sender)
                sender.send(flags=FINAL)
            except Exception as exc:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))),
                            flags=FINAL)
        return None

    def _render(self, request, sender) -> None:
        from pipelines.avatar import FPS, energy_track, viseme_track

        audio = pb_utils.get_input_tensor_by_name(request, "AUDIO").as_numpy().reshape(-1)
        rate = int(pb_utils.get_input_tensor_by_name(request, "SAMPLE_RATE").as_numpy()
                   .reshape(-1)[0])
        if not 8000 <= rate <= 96000:
            raise ValueError(f"SAMPLE_RATE {rate} is outside 8000..96000")
        duration = audio.size / rate
        if duration > self.max_audio_s:
            raise ValueError(f"AUDIO of {duration:.1f} s is longer than the "
                             f"{self.max_audio_s:.0f} s maximum")
        if audio.size == 0:
            raise ValueError("AUDIO is empty")
        avatar = self._avatar(_string(request, "AVATAR"))
        start_t = pb_utils.get_input_tensor_by_name(request, "START_TIME")
        t0 = float(start_t.as_numpy().reshape(-1)[0]) if start_t is not None else 0.0
        align = _string(request, "ALIGNMENT")
        phonemes = json.loads(align).get("phonemes") if align else None
        if self.wav2lip is not None:
            frames_iter = self.wav2lip.render(avatar, audio, rate, t0)
        else:
            track = viseme_track(phonemes, duration) if phonemes else \
                energy_track(audio, rate)
            frames_iter = (avatar.frame(t0 + i / FPS, o, w) for i, (o, w) in enumerate(track))
        batch, first = [], 0
        for i, frame in enumerate(frames_iter):
            if sender.is_cancelled():
                return
            batch.append(frame)
            if len(batch) == self.per_response:
                sender.send(_response(batch, first))
                first, batch = i + 1, []
        if batch:
            sender.send(_response(batch, first))


def _response(frames: list, first: int):
    return pb_utils.InferenceResponse(output_tensors=[
        pb_utils.Tensor("FRAMES", np.stack(frames).astype(np.uint8)),
        pb_utils.Tensor("FIRST_FRAME", np.array([first], dtype=np.int32)),
    ])


def _string(request, name: str) -> str:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return ""
    value = tensor.as_numpy().reshape(-1)[0]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
