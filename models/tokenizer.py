"""A byte-level tokenizer for the random-weight models, built without training or downloads.

Layout of the vocabulary (``vocab_size`` ids in all, so any id the model emits decodes):

* ids 0..255: the 256 bytes, id == byte value, spelled in GPT-2's byte-to-unicode alphabet;
* id 256: ``<|endoftext|>`` (special; the EOS id recorded in the model metadata);
* ids 257..: filler tokens, pronounceable pseudo-words (half of them with a leading space) so
  generated text looks like text. There are no merges, so encoding never produces a filler:
  encoding is one token per UTF-8 byte, which makes prompt lengths in tokens predictable.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from greenprof.errors import UsageError

if TYPE_CHECKING:
    import tokenizers

__all__ = ["EOS_TOKEN", "EOS_TOKEN_ID", "MIN_VOCAB", "build_tokenizer", "bytes_to_unicode"]

EOS_TOKEN = "<|endoftext|>"
EOS_TOKEN_ID = 256
MIN_VOCAB = 257  # 256 bytes + EOS

_ONSETS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"
_CODAS = ("", "n", "r", "s", "l")


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what the ByteLevel pre-tokenizer uses)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def _fillers(count: int) -> list[str]:
    """``count`` distinct pseudo-words in byte-level spelling ("Ġ" is a leading space)."""
    syllables = [o + v + c for o in _ONSETS for v in _VOWELS for c in _CODAS]
    out: list[str] = []
    words_of_len: list[str] = [""]
    while len(out) < count:
        # All words one syllable longer than the previous round, each with and without a space.
        words_of_len = [w + s for w in words_of_len for s in syllables]
        for w in words_of_len:
            out.append("Ġ" + w)
            out.append(w)
            if len(out) >= count:
                break
    return out[:count]


def build_tokenizer(vocab_size: int) -> tokenizers.Tokenizer:
    """A byte-level tokenizer with exactly ``vocab_size`` ids (see the module docstring)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    if vocab_size < MIN_VOCAB:
        raise UsageError(f"vocab_size must be at least {MIN_VOCAB} (256 bytes + EOS), got {vocab_size}")
    byte_chars = bytes_to_unicode()
    vocab: dict[str, int] = {byte_chars[b]: b for b in range(256)}
    vocab[EOS_TOKEN] = EOS_TOKEN_ID
    for i, word in enumerate(_fillers(vocab_size - MIN_VOCAB), start=MIN_VOCAB):
        vocab[word] = i
    assert len(vocab) == vocab_size, "filler words collided with byte tokens"

    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False, byte_fallback=False))
    # use_regex=False: without merges, splitting into words first would change nothing.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(EOS_TOKEN, special=True, normalized=False)])
    return tok
