"""o200k_harmony, the tokenizer of gpt-oss, through tiktoken.

The vocabulary is OpenAI's `o200k_base.tiktoken` (199,998 BPE ranks) plus the harmony special
tokens. `load_tokenizer` finds it in this order:

1. the `vocab_file` argument (the CLI's `--vocab`),
2. the environment variable `OPENHARMONY_VOCAB`,
3. tiktoken's own download and cache (needs the network once).

A file or folder given by 1 or 2 is read directly and checked against the published sha256;
nothing is written into tiktoken's or openai-harmony's caches. The pattern and special tokens
come from tiktoken's own definition of `o200k_harmony`, so they cannot drift from it.
"""

from __future__ import annotations

import base64
import codecs
import functools
import hashlib
import os
import tempfile
import threading
import types
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import tiktoken
from tiktoken_ext import openai_public

from .errors import OpenHarmonyError

if TYPE_CHECKING:
    from openai_harmony import HarmonyEncoding

VOCAB_ENV_VAR = "OPENHARMONY_VOCAB"
VOCAB_FILE_NAME = "o200k_base.tiktoken"
ENCODING_NAME = "o200k_harmony"

MISSING_VOCAB_HELP = (
    f"the o200k_base vocabulary is not available: set {VOCAB_ENV_VAR} to the path of "
    f"{VOCAB_FILE_NAME} (or pass --vocab), or connect to the internet once so that tiktoken "
    "can download and cache it"
)

# The tokens that end a gpt-oss generation (generation_config.json's eos_token_id):
# <|return|> ends a final answer, <|call|> a tool call, <|endoftext|> raw text.
EOS_TOKEN_NAMES = ("<|return|>", "<|endoftext|>", "<|call|>")

# openai-harmony reads its vocabulary from $TIKTOKEN_ENCODINGS_BASE, process-wide state: it is
# set only while `load_tokenizer` loads the harmony encoding of a local file, once per file
# (at start-up, before a server's threads), under this lock.
_harmony_env_lock = threading.Lock()


class Tokenizer:
    """Text <-> token ids for gpt-oss (o200k_harmony)."""

    def __init__(self, encoding: tiktoken.Encoding, vocab_path: Path | None = None):
        self.encoding = encoding
        # The local o200k_base.tiktoken this tokenizer was built from; None if tiktoken's cache.
        self.vocab_path = vocab_path
        self._harmony: HarmonyEncoding | None = None

    def __repr__(self) -> str:
        source = str(self.vocab_path) if self.vocab_path else "tiktoken cache"
        return f"Tokenizer({self.encoding.name}, n_vocab={self.n_vocab}, vocab={source})"

    @property
    def n_vocab(self) -> int:
        return self.encoding.n_vocab

    @functools.cached_property
    def special_ids(self) -> dict[str, int]:
        """Every special token name (e.g. '<|return|>') with its id."""
        return {
            name: self.encoding.encode_single_token(name)
            for name in sorted(self.encoding.special_tokens_set)
        }

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Ids that end any generation: <|return|>, <|endoftext|>, <|call|>."""
        return tuple(self.special_ids[name] for name in EOS_TOKEN_NAMES)

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids of `text`.

        With `allow_special=False` (the safe default for user text) a literal '<|end|>' in the
        text is encoded as ordinary text; with True it becomes the special token.
        """
        if allow_special:
            return self.encoding.encode(text, allowed_special="all")
        return self.encoding.encode(text, disallowed_special=())

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.encoding.decode_bytes(list(ids))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        return self.encoding.decode_single_token_bytes(token_id)

    def detokenizer(self) -> StreamingDetokenizer:
        return StreamingDetokenizer(self)

    def harmony(self) -> HarmonyEncoding:
        """openai-harmony's HarmonyGptOss encoding, on this tokenizer's vocabulary.

        Loaded on first use, once: `load_tokenizer` loads it for local files right away, so
        that no later call (from any thread) changes the environment.
        """
        with _harmony_env_lock:
            if self._harmony is None:
                self._harmony = _load_harmony_encoding(self.vocab_path)
        return self._harmony


class StreamingDetokenizer:
    """Turns token ids, one at a time, into text deltas that never split a character.

    Bytes of an unfinished UTF-8 sequence are held back until the next token completes it.
    The deltas of `add()` followed by `finish()` concatenate to exactly
    `tokenizer.decode(all ids)`, replacement characters for invalid bytes included.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token_id: int) -> str:
        return self._decoder.decode(self.tokenizer.token_bytes(token_id))

    def finish(self) -> str:
        """The text still held back (a trailing incomplete character becomes U+FFFD)."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text


def load_tokenizer(vocab_file: str | os.PathLike | None = None) -> Tokenizer:
    """The o200k_harmony tokenizer, from `vocab_file`, `$OPENHARMONY_VOCAB` or tiktoken's cache.

    `vocab_file` and the environment variable may name the file or a folder holding
    o200k_base.tiktoken. Tokenizers from local files are cached per path.
    """
    if vocab_file is None:
        vocab_file = os.environ.get(VOCAB_ENV_VAR) or None
        source = f"${VOCAB_ENV_VAR}"
    else:
        source = "the vocab argument"
    if vocab_file is None:
        return _load_from_tiktoken_cache()
    return _load_from_file(_resolve_vocab_path(Path(vocab_file), source))


def _resolve_vocab_path(path: Path, source: str) -> Path:
    path = path.expanduser()
    if path.is_dir():
        path = path / VOCAB_FILE_NAME
    if not path.is_file():
        raise OpenHarmonyError(f"vocabulary file {path} (from {source}) does not exist")
    return path.resolve()


@functools.lru_cache(maxsize=None)
def _load_from_file(path: Path) -> Tokenizer:
    definition = o200k_harmony_definition()
    encoding = tiktoken.Encoding(
        name=definition["name"],
        pat_str=definition["pat_str"],
        mergeable_ranks=_read_bpe_ranks(path, definition["expected_hash"]),
        special_tokens=definition["special_tokens"],
    )
    tokenizer = Tokenizer(encoding, vocab_path=path)
    tokenizer.harmony()  # now, while loading: it sets $TIKTOKEN_ENCODINGS_BASE for a moment
    return tokenizer


def _read_bpe_ranks(path: Path, expected_hash: str) -> dict[bytes, int]:
    # tiktoken.load.load_tiktoken_bpe would also copy the file into tiktoken's cache; the
    # format is simple enough to read here, with the same hash check and the same parsing.
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_hash:
        raise OpenHarmonyError(
            f"vocabulary file {path} is not o200k_base.tiktoken: its sha256 is {digest}, "
            f"expected {expected_hash}"
        )
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@functools.cache
def o200k_harmony_definition() -> dict:
    """tiktoken's own o200k_harmony definition, minus the ranks it would download.

    `openai_public.o200k_harmony()` fetches the ranks through the module's `load_tiktoken_bpe`.
    Private copies of `o200k_harmony` and `o200k_base`, whose globals name a stand-in loader
    that records the URL and sha256 tiktoken expects and returns no ranks, give the pattern,
    special tokens and hash from tiktoken itself, with no file touched and nothing patched:
    other threads calling tiktoken meanwhile see the real module.
    Returns name, pat_str, special_tokens, vocab_url and expected_hash.
    """
    requested = {}

    def record_request(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        requested.update(vocab_url=url, expected_hash=expected_hash)
        return {}

    private_globals = dict(vars(openai_public), load_tiktoken_bpe=record_request)
    for name in ("o200k_base", "o200k_harmony"):
        function = getattr(openai_public, name)
        private_globals[name] = types.FunctionType(function.__code__, private_globals, name)
    definition = private_globals["o200k_harmony"]()
    return {
        "name": definition["name"],
        "pat_str": definition["pat_str"],
        "special_tokens": definition["special_tokens"],
        **requested,
    }


def _load_from_tiktoken_cache() -> Tokenizer:
    # tiktoken caches encodings itself (tiktoken.registry), so no cache is needed here.
    try:
        encoding = tiktoken.get_encoding(ENCODING_NAME)
    except (OSError, ValueError, ImportError) as error:
        # requests' connection errors are OSErrors; ValueError is a corrupt download.
        raise OpenHarmonyError(f"{MISSING_VOCAB_HELP} ({error})") from error
    return Tokenizer(encoding)


def _load_harmony_encoding(vocab_path: Path | None) -> HarmonyEncoding:
    from openai_harmony import HarmonyEncodingName, HarmonyError, load_harmony_encoding

    def load() -> HarmonyEncoding:
        try:
            return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
        except HarmonyError as error:
            if vocab_path is None:
                problem = f"{MISSING_VOCAB_HELP} (openai-harmony: {error})"
            else:
                problem = f"openai-harmony cannot load the vocabulary file {vocab_path}: {error}"
            raise OpenHarmonyError(problem) from error

    if vocab_path is None:
        return load()
    # openai-harmony reads `$TIKTOKEN_ENCODINGS_BASE/o200k_base.tiktoken` (and checks its
    # sha256). A file under another name is linked into a private folder under that name.
    with tempfile.TemporaryDirectory(prefix="openharmony-vocab-") as private_dir:
        folder = vocab_path.parent
        if vocab_path.name != VOCAB_FILE_NAME:
            folder = Path(private_dir)
            _link_or_copy(vocab_path, folder / VOCAB_FILE_NAME)
        previous = os.environ.get("TIKTOKEN_ENCODINGS_BASE")
        os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(folder)
        try:
            return load()
        finally:
            if previous is None:
                del os.environ["TIKTOKEN_ENCODINGS_BASE"]
            else:
                os.environ["TIKTOKEN_ENCODINGS_BASE"] = previous


def _link_or_copy(source: Path, destination: Path) -> None:
    try:
        destination.symlink_to(source)
    except OSError:
        destination.write_bytes(source.read_bytes())
