"""Streaming TTS as a decoupled Triton python model (piper voices, espeak-ng fallback).

The text is cut into a short first clause and then whole sentences (the splitter
knows abbreviations, decimals and initials), so the first audio leaves after
synthesizing a few words, not the whole answer. Each piece is one response: int16
audio, the sample rate and phoneme timings (lip sync). A cancelled request
(client gone, barge-in) stops between pieces. Text handling and timings live in
common/ (tested offline).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import wave
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

# The rendered model repository has common/ next to the use-case folders.
sys.path.insert(0, str(Path(__file__).resolve().parents[2].parent / "common"))
from sentences import split_for_streaming
from tts_text import alignment, choose_voice, piper_phonemes, spread_phonemes

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _param(cfg: dict, key: str, default: str) -> str:
    return cfg.get("parameters", {}).get(key, {}).get("string_value", default)


def load_voice(onnx_path: Path, gpu: bool, threads: int):
    """A piper voice with alignment output, its onnxruntime session on ``threads``
    threads (piper's own loader takes onnxruntime's default: one thread per core, for
    every worker)."""
    import onnx
    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig
    from piper.patch_voice_with_alignment import add_alignment_output
    from piper.voice import ESPEAK_DATA_DIR

    model = onnx.load(str(onnx_path))
    add_alignment_output(model)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Every sentence has its own output length: with onnxruntime's arena and memory
    # patterns the process kept the high-water mark of every shape it had seen (a
    # stub grew 307 -> 685 MB over 200 sentences; 280-410 MB without them, at the
    # same speed).
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    providers = ["CUDAExecutionProvider"] if gpu else ["CPUExecutionProvider"]
    session = onnxruntime.InferenceSession(model.SerializeToString(), sess_options=options,
                                           providers=providers)
    config = json.loads(Path(f"{onnx_path}.json").read_text(encoding="utf-8"))
    return PiperVoice(config=PiperConfig.from_dict(config), session=session,
                      espeak_data_dir=Path(ESPEAK_DATA_DIR), download_dir=onnx_path.parent)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        cfg = json.loads(args["model_config"])
        store = Path(os.environ.get("AI_MODELS_DIR", "/opt/ai-models"))
        main = store / _param(cfg, "weights", "tts/piper-joe")
        if not list(main.glob("*.onnx")):
            raise pb_utils.TritonModelException(
                f"no piper voice in {main}; run `rtmedia models install-defaults`")
        gpu = args.get("model_instance_kind") == "GPU"
        threads = int(_param(cfg, "intra_op_threads", "1"))
        self.voices: dict[str, object] = {}
        self.languages: dict[str, str] = {}  # language code -> voice name
        # Every piper voice in the store; a catalog download keeps the hub's folders
        # (tts/piper-hi-pratham/hi/hi_IN/pratham/medium/*.onnx), hence rglob.
        for folder in sorted({main, *store.glob("tts/piper-*")}):
            for onnx_path in sorted(folder.rglob("*.onnx")):
                name = folder.name.removeprefix("piper-")
                voice = load_voice(onnx_path, gpu, threads)
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
        self.max_piece_chars = int(_param(cfg, "max_piece_chars", "160"))
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
        speed_t = pb_utils.get_input_tensor_by_name(request, "SPEED")
        return choose_voice(
            _string(request, "TEXT"), _string(request, "VOICE") or "",
            _string(request, "LANGUAGE") or "",
            float(speed_t.as_numpy().reshape(-1)[0]) if speed_t is not None else 1.0,
            max_chars=self.max_chars, voices=self.voices, languages=self.languages,
            default_voice=self.default_voice, espeak=bool(self.espeak))

    def _run(self, sender, text: str, voice: str, language: str, speed: float) -> None:
        offset = 0.0
        try:
            for piece in split_for_streaming(text, max_chars=self.max_piece_chars):
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
                    align = alignment(piece, offset, duration, voice, phonemes)
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
            yield (chunk.audio_int16_array, chunk.sample_rate,
                   piper_phonemes(chunk.phoneme_alignments, chunk.sample_rate))

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
        return audio, rate, spread_phonemes(ipa, audio.size / rate)

    def finalize(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _string(request, name: str) -> str | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    value = tensor.as_numpy().reshape(-1)[0]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
