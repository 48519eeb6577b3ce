"""Which language a session speaks, and what follows from it.

A transcription language other than English (or ``auto``) needs the multilingual
Whisper model; the reply is spoken in that language (espeak-ng voices where the
store has no neural one) and the LLM is told to answer in it.
"""

from __future__ import annotations

# ISO 639-1 code -> (language, script) for the instruction to the LLM.
LANGUAGES = {
    "hi": ("Hindi", "Devanagari"), "mr": ("Marathi", "Devanagari"),
    "ne": ("Nepali", "Devanagari"), "bn": ("Bengali", "Bengali"),
    "as": ("Assamese", "Bengali"), "ta": ("Tamil", "Tamil"), "te": ("Telugu", "Telugu"),
    "kn": ("Kannada", "Kannada"), "ml": ("Malayalam", "Malayalam"),
    "gu": ("Gujarati", "Gujarati"), "pa": ("Punjabi", "Gurmukhi"), "or": ("Odia", "Odia"),
    "ur": ("Urdu", "Urdu (Perso-Arabic)"), "si": ("Sinhala", "Sinhala"),
    "de": ("German", "Latin"), "fr": ("French", "Latin"), "es": ("Spanish", "Latin"),
    "it": ("Italian", "Latin"), "pt": ("Portuguese", "Latin"), "nl": ("Dutch", "Latin"),
    "ru": ("Russian", "Cyrillic"), "ar": ("Arabic", "Arabic"), "tr": ("Turkish", "Latin"),
    "pl": ("Polish", "Latin"), "sv": ("Swedish", "Latin"), "ja": ("Japanese", "Japanese"),
    "zh": ("Chinese", "Chinese"),
}


def base(language: str | None) -> str:
    return (language or "").lower().replace("_", "-").split("-")[0]


def is_english(language: str | None) -> bool:
    """Unset counts as English (the default models are English)."""
    return not language or base(language) == "en"


def multilingual_stt(language: str | None) -> bool:
    """The English-only Whisper cannot transcribe it: another language, or ``auto``."""
    return not is_english(language)


def answer_in(instructions: str, language: str | None) -> str:
    """The instructions, plus an order to answer in ``language`` when it is not English
    (small models follow a last, plain sentence best)."""
    if is_english(language) or base(language) == "auto":
        return instructions
    name, script = LANGUAGES.get(base(language), (language, ""))
    script = f", written in {script} script" if script and script != "Latin" else ""
    return (f"{instructions}\nThe user speaks {name}. Always answer in {name}{script}, "
            "never in English.")
