"""The TTS model's request checks, voice choice and phoneme timings (for lip sync).

Pure Python: the piper Triton model imports this file, the tests import it offline.
"""

from __future__ import annotations

# Languages spoken by espeak-ng when the store has no neural voice for them.
ESPEAK_LANGUAGES = frozenset({
    "hi", "ta", "te", "bn", "mr", "gu", "kn", "ml", "pa", "ur", "or", "as", "ne", "si",
    "en", "de", "fr", "es", "it", "pt", "nl", "ru", "ar", "tr", "pl", "sv", "ja", "cmn",
})
# Piper's sentence/pause markers: they carry time but no mouth shape.
_SILENT = {"^", "$", "_"}
# espeak-ng IPA stress and length marks: not phonemes of their own.
_IPA_MARKS = "ˈˌː"


def choose_voice(text: str | None, voice: str, language: str, speed: float, *,
                 max_chars: int, voices: dict | set, languages: dict[str, str],
                 default_voice: str, espeak: bool) -> tuple[str, str, str, float]:
    """(text, voice, language, speed) for a request, or a ValueError that says why not.

    ``voices``: the neural voice names; ``languages``: language code -> voice name;
    ``espeak``: whether espeak-ng is installed. An empty ``voice`` picks the voice for
    ``language`` (a neural one first, else espeak-ng), or the default voice.
    """
    if text is None or not text.strip():
        raise ValueError("TEXT is empty")
    if len(text) > max_chars:
        raise ValueError(f"TEXT has {len(text)} characters; the maximum is "
                         f"{max_chars}: send it in parts")
    language = language.lower()
    if not 0.25 <= speed <= 4.0:
        raise ValueError(f"SPEED {speed} is outside 0.25..4.0")
    if voice and voice not in voices and voice != "espeak":
        raise ValueError(f"unknown VOICE {voice!r}; available: "
                         f"{', '.join(sorted(voices))}, espeak")
    if not voice:
        base = language.split("-")[0]
        if not language:
            voice = default_voice
        elif language in languages or base in languages:
            voice = languages.get(language) or languages[base]
        elif base in ESPEAK_LANGUAGES and espeak:
            voice = "espeak"
        else:
            raise ValueError(f"no voice for language {language!r}; neural voices: "
                             f"{', '.join(sorted(languages))}; espeak-ng: "
                             f"{', '.join(sorted(ESPEAK_LANGUAGES))}")
    if voice == "espeak" and not espeak:
        raise ValueError("espeak-ng is not installed on the Triton host")
    return text, voice, language or "en", speed


def piper_phonemes(alignments, sample_rate: int) -> list[list]:
    """[[phoneme, start_s, end_s], ...] from piper's per-phoneme sample counts
    (objects with ``phoneme`` and ``num_samples``), pauses left out but timed."""
    phonemes, t = [], 0.0
    for a in alignments or []:
        dur = a.num_samples / sample_rate
        if a.phoneme.strip() and a.phoneme not in _SILENT:
            phonemes.append([a.phoneme, round(t, 4), round(t + dur, 4)])
        t += dur
    return phonemes


def spread_phonemes(ipa: str, duration_s: float) -> list[list]:
    """espeak-ng gives no timings: its IPA phonemes spread evenly over the audio
    (approximate, but the mouth moves with the speech)."""
    symbols = [c for c in ipa if c.strip() and c not in _IPA_MARKS]
    step = duration_s / max(len(symbols), 1)
    return [[p, round(i * step, 4), round((i + 1) * step, 4)] for i, p in enumerate(symbols)]


def alignment(text: str, offset_s: float, duration_s: float, voice: str,
              phonemes: list[list]) -> dict:
    """The ALIGNMENT record of one audio piece: phoneme times relative to the piece,
    the piece placed on the request's timeline by ``offset_s``."""
    return {"text": text, "offset_s": round(offset_s, 4), "duration_s": round(duration_s, 4),
            "voice": voice, "phonemes": phonemes}
