"""Text tokenizers that reproduce their reference implementations id for id.

Three kinds, chosen by `TokenizerConfig.kind`:
  clip_bpe       OpenAI CLIP's byte-level BPE, as open_clip's `SimpleTokenizer` runs it.
  sentencepiece  a SentencePiece model, as HF's `SiglipTokenizer` runs it (SigLIP in open_clip), or
                 (`encode="plain"`) as big_vision's tokenizers run it: the model's own encode.
  hf_json        a HF `tokenizer.json`, through the `tokenizers` package.
Every kind first applies `TokenizerConfig.clean` to each text, then returns int32
[N, context_length] ids padded with `pad_id`. `Tokenizer.decode` turns ids back into text.

Texts longer than the context are truncated as the reference truncates them, keeping the end
token where it keeps it (clip_bpe: always; sentencepiece: the eos; hf_json: what its
post-processor adds). That is silent in the references; `Tokenizer.tokenize_with_truncation`
and `Tokenizer.count_truncated` say which texts lost tokens.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import heapq
import html
import os
import pathlib
import re
import string
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from jaxvlm.config_base import Config, check_choice, check_int
from jaxvlm.errors import InputError

CLIP_BPE_FILE = pathlib.Path(__file__).parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"

KINDS = ("clip_bpe", "sentencepiece", "hf_json")
CLEANS = ("lower", "canonicalize", "whitespace", "ascii_lower", "unicode_lower", "none")
ENCODES = ("hf_siglip", "plain")


@dataclasses.dataclass(frozen=True)
class TokenizerConfig(Config):
    name: ClassVar[str] = "tokenizer config"

    kind: str  # one of KINDS
    file: str  # file name inside the model directory
    context_length: int
    clean: str = "lower"  # one of CLEANS, applied to each text before tokenizing
    pad_id: int = 0
    eos_id: int | None = None  # sentencepiece: appended to every text, kept on truncation
    # hf_json: this id becomes pad_id wherever it is (open_clip's strip_sep_token, which zeroes BERT's [SEP])
    strip_id: int | None = None
    encode: str = "hf_siglip"  # sentencepiece: one of ENCODES (SentencePieceTokenizer says what each does)
    # hf_json: texts split on whitespace ahead of the file's pre-tokenizer, as transformers' XLMRobertaTokenizer
    # rebuilds a tokenizer.json (MetaCLIP 2's XLM-V): no lone '▁' piece at a text's ends or before a special token
    whitespace_split: bool = False

    def __post_init__(self) -> None:
        check_choice("tokenizer kind", self.kind, KINDS)
        check_choice("tokenizer clean", self.clean, CLEANS)
        check_choice("tokenizer encode", self.encode, ENCODES)
        if self.encode != "hf_siglip" and self.kind != "sentencepiece":
            raise InputError(f"tokenizer encode {self.encode!r} is for kind 'sentencepiece' only, not {self.kind!r}")
        check_int("tokenizer context_length", self.context_length, 2)
        object.__setattr__(self, "context_length", int(self.context_length))  # a numpy integer is written as JSON
        if self.strip_id is not None:
            check_int("tokenizer strip_id", self.strip_id, 0)
            if self.kind != "hf_json":
                raise InputError(f"tokenizer strip_id applies to kind 'hf_json' only, not {self.kind!r}")
        if self.whitespace_split and self.kind != "hf_json":
            raise InputError(f"tokenizer whitespace_split applies to kind 'hf_json' only, not {self.kind!r}")
        if not isinstance(self.file, str) or self.file in ("", "..") or pathlib.PurePath(self.file).name != self.file:
            # a path would read (or, when a model directory is written, write) outside the directory
            raise InputError(f"tokenizer file must be a plain file name, got {self.file!r}")


# --- text cleaning (the options of open_clip's tokenizers) ------------------------------------


def basic_clean(text: str) -> str:
    import ftfy  # imported lazily: it is slow to import and only the cleaning needs it

    text = ftfy.fix_text(text)
    # Twice, so that double-escaped entities ("&amp;amp;") come out as plain text.
    return html.unescape(html.unescape(text)).strip()


def whitespace_clean(text: str) -> str:
    return " ".join(text.split())


_ASCII_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def canonicalize_text(text: str) -> str:
    """big_vision's prompt canonicalisation: '_' to space, ASCII punctuation dropped, lower case."""
    text = text.replace("_", " ").translate(_ASCII_PUNCTUATION).lower()
    return whitespace_clean(text)


def _valid_unicode(text: str) -> str:
    """``text`` with surrogate code points, which a str can hold but no encoding can, made
    characters: a pair becomes the character it stands for, a lone one U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def clean_text(text: str, mode: str) -> str:
    if mode == "none":
        return text
    if mode == "lower":
        return whitespace_clean(basic_clean(text)).lower()
    if mode == "whitespace":
        return whitespace_clean(basic_clean(text))
    if mode == "canonicalize":
        return canonicalize_text(basic_clean(text))
    if mode == "ascii_lower":  # TensorFlow's tf.strings.lower (big_vision's `lower` op): A-Z only
        return text.translate(_ASCII_LOWER)
    if mode == "unicode_lower":  # the `tokenizers` Lowercase normaliser transformers' Siglip2Tokenizer adds
        return text.lower()
    raise InputError(f"tokenizer clean {mode!r} is not one of {', '.join(CLEANS)}")


# --- tokenizers --------------------------------------------------------------------------------


class Tokenizer:
    """Turns texts into int32 [N, context_length] ids and ids back into text.

    Subclasses give `_row` for one cleaned text (its ids and whether tokens were cut off to fit
    the context) and `_decode` for a list of in-vocabulary ids.
    """

    context_length: int
    vocab_size: int
    pad_id: int
    clean: str

    def __call__(self, texts: Sequence[str] | str) -> np.ndarray:
        return self.tokenize_with_truncation(texts)[0]

    def tokenize_with_truncation(self, texts: Sequence[str] | str) -> tuple[np.ndarray, np.ndarray]:
        """(ids, truncated): the ids `__call__` returns, and bool [N], True where a text held more
        tokens than the context has room for and lost the ones past it."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise InputError("empty text list: give at least one text")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InputError(f"text {i} is a {type(t).__name__}, not a str")
        rows = self._batch_rows([clean_text(_valid_unicode(t), self.clean) for t in texts])
        out = np.full((len(rows), self.context_length), self.pad_id, dtype=np.int32)
        truncated = np.zeros(len(rows), dtype=bool)
        for i, (ids, cut) in enumerate(rows):
            out[i, : len(ids)] = ids
            truncated[i] = cut
        return out, truncated

    def count_truncated(self, texts: Sequence[str] | str) -> int:
        """How many of ``texts`` are longer than the context (and so truncated by `__call__`)."""
        return int(self.tokenize_with_truncation(texts)[1].sum())

    def _batch_rows(self, texts: list[str]) -> list[tuple[list[int], bool]]:
        return [self._row(t) for t in texts]

    def _row(self, text: str) -> tuple[list[int], bool]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids` (a list or 1-d array), special tokens skipped, ends stripped.

        The ids are decoded as given: cutting a generated sequence at its end token is the caller's job.
        """
        ids = [int(i) for i in ids]
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise InputError(f"token id {i} is outside the tokenizer's vocabulary of {self.vocab_size} ids")
        return self._decode(ids).strip()

    def _decode(self, ids: list[int]) -> str:
        raise NotImplementedError


def _bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable character table of GPT-2 / CLIP byte-level BPE.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls, space, ...)
    are mapped, in byte order, onto code points 256, 257, ...
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class ClipBpeTokenizer(Tokenizer):
    """OpenAI CLIP's tokenizer: <start_of_text> + BPE tokens + <end_of_text>, padded with 0."""

    NUM_MERGES = 49152 - 256 - 2  # the merges CLIP uses: vocab 49408 = 2*256 bytes + merges + 2 specials
    SOT, EOT = "<start_of_text>", "<end_of_text>"

    def __init__(self, path: str | os.PathLike, context_length: int = 77, clean: str = "lower", pad_id: int = 0):
        self.context_length, self.clean, self.pad_id = context_length, clean, pad_id
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                lines = f.read().split("\n")
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read CLIP BPE merges file {path}: {e}") from None
        merges = [tuple(line.split()) for line in lines[1 : self.NUM_MERGES + 1]]  # line 0 is a header
        if len(merges) != self.NUM_MERGES or any(len(m) != 2 for m in merges):
            raise InputError(f"{path} is not a CLIP BPE merges file ({self.NUM_MERGES} merges expected)")
        self._byte_char = _bytes_to_unicode()
        self._char_byte = {c: b for b, c in self._byte_char.items()}
        chars = list(self._byte_char.values())
        vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [self.SOT, self.EOT]
        self._tokens = vocab
        self._encoder = {tok: i for i, tok in enumerate(vocab)}
        self._ranks = {m: i for i, m in enumerate(merges)}
        self.vocab_size = len(vocab)
        self.sot_id, self.eot_id = self._encoder[self.SOT], self._encoder[self.EOT]
        import regex  # \p{L} / \p{N} classes are not in the standard `re`

        self._pattern = regex.compile(
            rf"{regex.escape(self.SOT)}|{regex.escape(self.EOT)}"
            r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        self._word_ids = functools.lru_cache(maxsize=1 << 17)(self._word_ids_uncached)

    # Pickled into Grain's worker processes: the word cache is per process, so it is rebuilt there.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_word_ids"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._word_ids = functools.lru_cache(maxsize=1 << 17)(self._word_ids_uncached)

    def _word_ids_uncached(self, word: str) -> tuple[int, ...]:
        # Only the exact lower-case literals are special; other spellings that the
        # case-insensitive pattern lets through are ordinary BPE words, as in the reference.
        if word == self.SOT or word == self.EOT:
            return (self._encoder[word],)
        symbols = [self._byte_char[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        return tuple(self._encoder[s] for s in _merge(symbols, self._ranks))

    def encode(self, text: str) -> list[int]:
        """BPE ids of an already cleaned text, without start/end tokens."""
        ids = []
        for word in self._pattern.findall(text):
            ids.extend(self._word_ids(word))
        return ids

    def _row(self, text: str) -> tuple[list[int], bool]:
        # open_clip: the first context_length - 1 tokens, then <end_of_text> in the last place
        full = [self.sot_id, *self.encode(text)]
        return full[: self.context_length - 1] + [self.eot_id], len(full) > self.context_length - 1

    def _decode(self, ids: list[int]) -> str:
        # open_clip's `SimpleTokenizer.decode`, without the two special tokens.
        chars = "".join(self._tokens[i] for i in ids if i != self.sot_id and i != self.eot_id)
        text = bytes(self._char_byte[c] for c in chars).decode("utf-8", errors="replace")
        return text.replace("</w>", " ")


def _merge(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-level BPE as open_clip runs it: take the lowest-ranked adjacent pair, merge all its
    occurrences left to right, repeat. The pairs wait in a heap over a linked list of symbols, so a
    word of n symbols costs O(n log n), not open_clip's O(n^2) (minutes for a 100 kB one-word caption)."""
    following = [*range(1, len(symbols)), -1]
    preceding = list(range(-1, len(symbols) - 1))

    def rank(i: int) -> int | None:  # of the pair that starts at live symbol i
        j = following[i]
        return ranks.get((symbols[i], symbols[j])) if j >= 0 else None

    heap = [(r, i) for i in range(len(symbols)) if (r := rank(i)) is not None]
    heapq.heapify(heap)
    while heap:
        best = heap[0][0]
        starts = set()
        while heap and heap[0][0] == best:
            starts.add(heapq.heappop(heap)[1])
        merged = []
        for i in sorted(starts):  # left to right; an occurrence overlapping the one before is gone
            if symbols[i] is None or rank(i) != best:
                continue
            j = following[i]
            symbols[i], symbols[j] = symbols[i] + symbols[j], None
            following[i] = following[j]
            if following[j] >= 0:
                preceding[following[j]] = i
            merged.append(i)
        for i in merged:  # the pairs the merges made
            for k in (preceding[i], i):
                if k >= 0 and (r := rank(k)) is not None:
                    heapq.heappush(heap, (r, k))
    return [s for s in symbols if s is not None]


SPIECE_UNDERLINE = "\u2581"


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model run the way HF's `SiglipTokenizer` runs it.

    Per text: prefix '▁', split off literal special tokens (`</s>`, `<unk>`), canonicalise each
    remaining chunk (lower case, ASCII punctuation dropped, whitespace collapsed), encode it
    behind an unk-token prefix that is then cut off, truncate to context_length - 1, append eos
    unless the ids already end with it, pad with pad_id. After open_clip's "canonicalize" clean
    this comes down to `sp.encode(text) + [eos]`; the rest matters for texts that still hold
    special-token literals.

    With ``encode="plain"`` the text is the model's own `encode` of the whole cleaned text, special-token
    literals and punctuation included (big_vision's tokenizers), then the same eos, truncation and padding.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        context_length: int = 64,
        clean: str = "canonicalize",
        pad_id: int = 0,
        eos_id: int | None = None,
        encode: str = "hf_siglip",
    ):
        import sentencepiece as spm

        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(path))
        except (OSError, RuntimeError) as e:
            raise InputError(f"cannot load SentencePiece model {path}: {e}") from None
        self.context_length, self.clean, self.pad_id = context_length, clean, pad_id
        self.plain = encode == "plain"
        self.vocab_size = self._sp.get_piece_size()
        eos = self._sp.eos_id() if eos_id is None else eos_id
        self.eos_id = eos if eos >= 0 else None
        self._unk = self._sp.id_to_piece(self._sp.unk_id())
        # HF encodes each chunk behind the unk token's text and cuts those pieces off again (its
        # guard against SentencePiece stripping a leading '▁'). A chunk that follows a special
        # token then starts mid-word, which changes its pieces, so the trick is kept as is.
        self._unk_len = len(self._sp.encode(self._unk, out_type=str))
        self._specials = {self._unk}
        if self.eos_id is not None:
            self._specials.add(self._sp.id_to_piece(self.eos_id))
        alternatives = "|".join(re.escape(s) for s in sorted(self._specials, key=len, reverse=True))
        self._split = re.compile(f"({alternatives})")

    def _chunk_pieces(self, chunk: str) -> list[str]:
        chunk = re.sub(r"\s+", " ", chunk.lower().translate(_ASCII_PUNCTUATION)).strip()
        pieces = self._sp.encode(self._unk + chunk, out_type=str)
        return pieces[self._unk_len :] if len(pieces) >= self._unk_len else pieces

    def pieces(self, text: str) -> list[str]:
        """SentencePiece pieces of an already cleaned text, without eos."""
        # Odd entries are the special tokens. (HF also strips the whitespace around them, which
        # the chunk canonicalisation does anyway.)
        parts = self._split.split(SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " "))
        pieces = []
        for i, part in enumerate(parts):
            if i % 2:
                pieces.append(part)
            elif part:
                pieces.extend(self._chunk_pieces(part))
        if len(pieces) > 1 and pieces[0] == SPIECE_UNDERLINE and pieces[1] in self._specials:
            pieces = pieces[1:]
        return pieces

    def encode(self, text: str) -> list[int]:
        if self.plain:
            return self._sp.encode(text)
        return [self._sp.piece_to_id(p) for p in self.pieces(text)]

    def _row(self, text: str) -> tuple[list[int], bool]:
        full = self.encode(text)
        if self.eos_id is None:
            return full[: self.context_length], len(full) > self.context_length
        ids = full[: self.context_length - 1]
        if not ids or ids[-1] != self.eos_id:
            ids.append(self.eos_id)
        if not full or full[-1] != self.eos_id:
            full.append(self.eos_id)
        return ids, len(full) > self.context_length

    def _decode(self, ids: list[int]) -> str:
        return self._sp.decode(ids)


class HfJsonTokenizer(Tokenizer):
    """A HF `tokenizer.json`: its own normaliser, pre-tokenizer and special tokens."""

    def __init__(
        self,
        path: str | os.PathLike,
        context_length: int = 77,
        clean: str = "none",
        pad_id: int = 0,
        strip_id: int | None = None,
        whitespace_split: bool = False,
    ):
        from tokenizers import Tokenizer as _Backend
        from tokenizers import pre_tokenizers

        try:
            backend = _Backend.from_file(str(path))
        except Exception as e:  # the Rust side raises bare Exceptions for unreadable files
            raise InputError(f"cannot load tokenizer.json {path}: {e}") from None
        self.context_length, self.clean, self.pad_id, self.strip_id = context_length, clean, pad_id, strip_id
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        # Truncation leaves room for the special tokens the post-processor adds.
        backend.enable_truncation(max_length=context_length)
        backend.no_padding()
        if whitespace_split:
            own = [backend.pre_tokenizer] if backend.pre_tokenizer is not None else []
            backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), *own])
        self._backend = backend
        # CLIP's tokenizer.json ends words with "</w>", which its ByteLevel decoder leaves in;
        # transformers' CLIPTokenizerFast turns it into a space after decoding, as `_decode` does.
        self._word_end = getattr(backend.model, "end_of_word_suffix", None)

    def _batch_rows(self, texts: list[str]) -> list[tuple[list[int], bool]]:
        # with truncation enabled, the backend keeps what it cut off in `overflowing`
        rows = [(e.ids, bool(e.overflowing)) for e in self._backend.encode_batch(texts)]
        if self.strip_id is None:
            return rows
        return [([self.pad_id if i == self.strip_id else i for i in ids], cut) for ids, cut in rows]

    def _decode(self, ids: list[int]) -> str:
        text = self._backend.decode(ids, skip_special_tokens=True)
        return text.replace(self._word_end, " ") if self._word_end else text


def build_tokenizer(cfg: TokenizerConfig, directory: str | os.PathLike) -> Tokenizer:
    """The tokenizer `cfg` describes, reading `cfg.file` from `directory`."""
    path = pathlib.Path(directory) / cfg.file
    if not path.is_file():
        raise InputError(f"tokenizer file not found: {path}")
    if cfg.kind == "clip_bpe":
        return ClipBpeTokenizer(path, cfg.context_length, cfg.clean, cfg.pad_id)
    if cfg.kind == "sentencepiece":
        return SentencePieceTokenizer(path, cfg.context_length, cfg.clean, cfg.pad_id, cfg.eos_id, cfg.encode)
    return HfJsonTokenizer(path, cfg.context_length, cfg.clean, cfg.pad_id, cfg.strip_id, cfg.whitespace_split)
