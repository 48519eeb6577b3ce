"""Streaming TTS as a decoupled Triton python model (piper voices, espeak-ng fallback).

The text is cut into a short first clause and then whole sentences, so the first
audio leaves after synthesizing a few words, not the whole answer. Each piece is
one response: int16 audio, the sample rate and phoneme timings (lip sync). A
cancelled request (client gone, barge-in) stops between pieces.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import wave
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
# Languages spoken by espeak-ng when the store has no neural voice for them.
ESPEAK_LANGUAGES = {
    "hi", "ta", "te", "bn", "mr", "gu", "kn", "ml", "pa", "ur", "or", "as", "ne", "si",
    "en", "de", "fr", "es", "it", "pt", "nl", "ru", "ar", "tr", "pl", "sv", "ja", "cmn",
}
_SENTENCE_END = re.compile(r"(?<=[.!?;:…।])\s+")
_CLAUSE_END = re.compile(r"(?<=[,;:—–])\s+")


def split_for_streaming(text: str, first_clause_chars: int = 60) -> list[str]:
    """Sentences, with the first one cut at its first clause when that is long."""
    sentences = [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]
    if sentences and len(sentences[0]) > first_clause_chars:
        clauses = [c for c in _CLAUSE_END.split(sentences[0], maxsplit=1) if c.strip()]
        sentences[:1] = clauses
    return sentences


def _param(cfg: dict, key: str, default: str) -> str:
    return cfg.get("parameters", {}).get(key, {}).get("string_value", default)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        from piper import PiperVoice

        cfg = json.loads(args["model_config"])
        store = Path(os.environ.get("AI_MODELS_DIR", "/opt/ai-models"))
        main = store / _param(cfg, "weights", "tts/piper-joe")
        if not list(main.glob("*.onnx")):
            raise pb_utils.TritonModelException(
                f"no piper voice in {main}; run `rtmedia models install-defaults`")
        gpu = args.get("model_instance_kind") == "GPU"
        self.voices: dict[str, object] = {}
        self.languages: dict[str, str] = {}  # language code -> voice name
        # Every piper voice in the store (tts/piper-*) is available by name.
        for folder in sorted({main, *store.glob("tts/piper-*")}):
            for onnx_path in folder.glob("*.onnx"):
                name = folder.name.removeprefix("piper-")
                voice = PiperVoice.load(onnx_path, use_cuda=gpu, include_alignments=True)
                self.voices[name] = voice
                lang = json.loads(Path(f"{onnx_path}.json").read_text(encoding="utf-8")).get(
                    "language", {}).get("code", "")
                for code in (lang, lang.split("_")[0]):
                    if code:
                        self.languages.setdefault(code.lower(), name)
        self.default_voice = _param(cfg, "default_voice", "joe")
        if self.default_voice not in self.voices:
            self.default_voice = next(iter(self.voices))
        self.max_chars = int(_param(cfg, "max_text_chars", "4000"))
        self.espeak = shutil.which("espeak-ng")
        self.pool = ThreadPoolExecutor(int(_param(cfg, "workers", "2")),
                                       thread_name_prefix="tts")
        list(self.voices[self.default_voice].synthesize("Ready."))  # warm up

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                job = self._parse(request)
            except Exception as exc:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))),
                            flags=FINAL)
                continue
            self.pool.submit(self._run, sender, *job)
        return None

    def _parse(self, request):
        text = _string(request, "TEXT")
        if text is None or not text.strip():
            raise ValueError("TEXT is empty")
        if len(text) > self.max_chars:
            raise ValueError(f"TEXT has {len(text)} characters; the maximum is "
                             f"{self.max_chars}: send it in parts")
        voice = _string(request, "VOICE") or ""
        language = (_string(request, "LANGUAGE") or "").lower()
        speed_t = pb_utils.get_input_tensor_by_name(request, "SPEED")
        speed = float(speed_t.as_numpy().reshape(-1)[0]) if speed_t is not None else 1.0
        if not 0.25 <= speed <= 4.0:
            raise ValueError(f"SPEED {speed} is outside 0.25..4.0")
        if voice and voice not in self.voices and voice != "espeak":
            raise ValueError(f"unknown VOICE {voice!r}; available: "
                             f"{', '.join(sorted(self.voices))}, espeak")
        if not voice:
            if not language:
                voice = self.default_voice
            elif language in self.languages or language.split("-")[0] in self.languages:
                voice = self.languages.get(language) or self.languages[language.split("-")[0]]
            elif language.split("-")[0] in ESPEAK_LANGUAGES and self.espeak:
                voice = "espeak"
            else:
                raise ValueError(f"no voice for language {language!r}; neural voices: "
                                 f"{', '.join(sorted(self.languages))}; espeak-ng: "
                                 f"{', '.join(sorted(ESPEAK_LANGUAGES))}")
        if voice == "espeak" and not self.espeak:
            raise ValueError("espeak-ng is not installed on the Triton host")
        return text, voice, language or "en", speed

    def _run(self, sender, text: str, voice: str, language: str, speed: float) -> None:
        offset = 0.0
        try:
            for piece in split_for_streaming(text):
                if sender.is_cancelled():
                    break
                if voice == "espeak":
                    chunks = [self._espeak(piece, language, speed)]
                else:
                    chunks = self._piper(piece, voice, speed)
                for audio, rate, phonemes in chunks:
                    if sender.is_cancelled():
                        break
                    duration = audio.size / rate
                    align = {"text": piece, "offset_s": round(offset, 4),
                             "duration_s": round(duration, 4), "voice": voice,
                             "phonemes": phonemes}
                    offset += duration
                    sender.send(pb_utils.InferenceResponse(output_tensors=[
                        pb_utils.Tensor("AUDIO", audio.astype(np.int16)),
                        pb_utils.Tensor("SAMPLE_RATE", np.array([rate], dtype=np.int32)),
                        pb_utils.Tensor("ALIGNMENT", np.array([json.dumps(align).encode()],
                                                              dtype=np.object_)),
                    ]))
            sender.send(flags=FINAL)
        except Exception as exc:
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                f"synthesis failed: {exc}")), flags=FINAL)

    def _piper(self, text: str, voice_name: str, speed: float):
        from piper import SynthesisConfig

        voice = self.voices[voice_name]
        syn = SynthesisConfig(length_scale=1.0 / speed)
        for chunk in voice.synthesize(text, syn, include_alignments=True):
            rate = chunk.sample_rate
            phonemes, t = [], 0.0
            for a in chunk.phoneme_alignments or []:
                dur = a.num_samples / rate
                if a.phoneme.strip() and a.phoneme not in ("^", "$", "_"):
                    phonemes.append([a.phoneme, round(t, 4), round(t + dur, 4)])
                t += dur
            yield chunk.audio_int16_array, rate, phonemes

    def _espeak(self, text: str, language: str, speed: float):
        wpm = str(int(165 * speed))
        # Text goes through stdin as UTF-8 bytes: the embedded interpreter may encode
        # command-line arguments as ASCII.
        data = text.encode("utf-8")
        wav = subprocess.run([self.espeak, "-v", language, "-s", wpm, "--stdout", "--stdin"],
                             input=data, capture_output=True, check=True, timeout=30).stdout
        with wave.open(BytesIO(wav)) as w:
            rate = w.getframerate()
            audio = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        ipa = subprocess.run([self.espeak, "-v", language, "-q", "--ipa", "--stdin"],
                             input=data, capture_output=True, timeout=30).stdout.decode("utf-8",
                                                                                       "replace")
        # espeak-ng gives no timings: spread its phonemes evenly (approximate).
        symbols = [c for c in ipa if c.strip() and c not in "ˈˌː"]
        step = (audio.size / rate) / max(len(symbols), 1)
        phonemes = [[p, round(i * step, 4), round((i + 1) * step, 4)]
                    for i, p in enumerate(symbols)]
        return audio, rate, phonemes

    def finalize(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _string(request, name: str) -> str | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    value = tensor.as_numpy().reshape(-1)[0]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
