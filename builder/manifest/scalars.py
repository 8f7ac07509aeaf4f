"""Small helpers for reading YAML scalars and wording problems."""

from __future__ import annotations

BOOLS = {"yes": True, "true": True, "on": True, "no": False, "false": False, "off": False}


def parse_int(text: str) -> int:
    """A YAML 1.1 integer as PyYAML resolves it (sign, 0b, 0x, 0o/0 octal, a:b sexagesimal)."""
    sign = -1 if text.startswith("-") else 1
    text = text.lstrip("+-")
    if text.startswith("0b"):
        return sign * int(text[2:], 2)
    if text.startswith("0x"):
        return sign * int(text[2:], 16)
    if text.startswith("0o"):
        return sign * int(text[2:], 8)
    if text != "0" and text.startswith("0"):
        return sign * int(text, 8)
    if ":" in text:
        number = 0
        for part in text.split(":"):
            number = number * 60 + int(part)
        return sign * number
    return sign * int(text)


def short(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


def did_you_mean(word: str, choices: tuple[str, ...]) -> str:
    import difflib  # only when a word is wrong: not on every start

    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close and word:
        close = [c for c in choices if c.startswith(word)][:1]
    return f" (did you mean {close[0]!r}?)" if close else ""


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7f)}


def one_line(message: str) -> str:
    """A problem's message as one printable line: control characters escaped."""
    return message.translate(_CONTROL)
