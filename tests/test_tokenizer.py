"""o200k_harmony tokenizer: ids against tiktoken's own encoding and the published tables."""

import hashlib
import os
import shutil

import pytest
import requests
import tiktoken
import tiktoken.load
import tiktoken.registry
from hypothesis import given, settings
from hypothesis import strategies as st

from openharmony.errors import OpenHarmonyError
from openharmony.tokenizer import load_tokenizer, o200k_harmony_definition

from vocab import VOCAB, requires_vocab

# From /work/shared/vocab/README.md.
O200K_BASE_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
O200K_BASE_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
README_SPECIAL_IDS = {
    "<|startoftext|>": 199998,
    "<|endoftext|>": 199999,
    "<|return|>": 200002,
    "<|constrain|>": 200003,
    "<|channel|>": 200005,
    "<|start|>": 200006,
    "<|end|>": 200007,
    "<|message|>": 200008,
    "<|call|>": 200012,
}
SAMPLE_TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.\n\n  Indented line\ttab",
    "emoji: 🦜🏳️‍🌈👩‍👩‍👧 and flags 🇫🇷",
    "中文、日本語のテキスト、한국어 텍스트",
    "math: ∑_{i=1}^{n} i² = n(n+1)(2n+1)/6, 3.14159, 1,000,000",
    "code: def f(x):\n    return x ** 2  # comment\n",
    "rare scripts: 𝔘 𓀀 ꙮ ᚠᛇᚻ",
    "",
]




@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(VOCAB)


@pytest.fixture
def tiktoken_reference(tmp_path, monkeypatch):
    """tiktoken's own o200k_harmony, fed the file through its cache as its README describes."""
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    shutil.copy(VOCAB, cache / hashlib.sha1(O200K_BASE_URL.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # keep it out of other tests
    return tiktoken.get_encoding("o200k_harmony")


@requires_vocab
def test_hello_world(tokenizer):
    assert tokenizer.encode("Hello world") == [13225, 2375]
    assert tokenizer.decode([13225, 2375]) == "Hello world"


@requires_vocab
def test_special_ids_match_the_published_table(tokenizer):
    assert tokenizer.n_vocab == 201088
    for name, token_id in README_SPECIAL_IDS.items():
        assert tokenizer.special_ids[name] == token_id
        assert tokenizer.decode([token_id]) == name
    named = set(README_SPECIAL_IDS.values())
    for token_id in range(200000, 201088):
        if token_id not in named:
            assert tokenizer.special_ids[f"<|reserved_{token_id}|>"] == token_id
    assert tokenizer.eos_token_ids == (200002, 199999, 200012)


def test_definition_comes_from_tiktoken():
    definition = o200k_harmony_definition()
    assert definition["expected_hash"] == O200K_BASE_SHA256
    assert definition["vocab_url"] == O200K_BASE_URL
    assert definition["name"] == "o200k_harmony"


@requires_vocab
def test_ids_equal_tiktoken_and_openai_harmony(tokenizer, tiktoken_reference):
    harmony = tokenizer.harmony()
    for text in SAMPLE_TEXTS:
        expected = tiktoken_reference.encode(text)
        assert tokenizer.encode(text) == expected
        assert harmony.encode(text) == expected
    assert tokenizer.encoding._pat_str == tiktoken_reference._pat_str
    assert tokenizer.encoding._special_tokens == tiktoken_reference._special_tokens


@requires_vocab
def test_round_trips(tokenizer):
    for text in SAMPLE_TEXTS:
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
        assert tokenizer.decode_bytes(ids) == text.encode("utf-8")


@requires_vocab
def test_special_token_text_is_plain_text_unless_allowed(tokenizer):
    text = "a<|end|>b"
    plain = tokenizer.encode(text)
    assert 200007 not in plain
    assert tokenizer.decode(plain) == text
    assert tokenizer.encode(text, allow_special=True) == [64, 200007, 65]


@requires_vocab
def test_detokenizer_holds_back_split_characters(tokenizer):
    # '𝔘' is three tokens: b'\xf0\x9d', b'\x94', b'\x98'.
    ids = tokenizer.encode("𝔘!")
    assert [tokenizer.token_bytes(i) for i in ids[:3]] == [b"\xf0\x9d", b"\x94", b"\x98"]
    detokenizer = tokenizer.detokenizer()
    assert [detokenizer.add(i) for i in ids] == ["", "", "𝔘", "!"]
    assert detokenizer.finish() == ""


@requires_vocab
def test_detokenizer_flushes_an_unfinished_character(tokenizer):
    detokenizer = tokenizer.detokenizer()
    first_two = tokenizer.encode("𝔘")[:2]
    assert [detokenizer.add(i) for i in first_two] == ["", ""]
    assert detokenizer.finish() == tokenizer.decode(first_two) == "\ufffd"


@requires_vocab
@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=60))
def test_detokenizer_deltas_are_whole_characters(tokenizer, text):
    ids = tokenizer.encode(text)
    detokenizer = tokenizer.detokenizer()
    deltas = [detokenizer.add(i) for i in ids] + [detokenizer.finish()]
    assert "".join(deltas) == text
    for delta in deltas:
        # A split character would show up as U+FFFD; valid text never decodes to one here.
        assert "\ufffd" not in delta or "\ufffd" in text
        delta.encode("utf-8")  # no lone surrogates


@requires_vocab
@settings(max_examples=200, deadline=None)
@given(
    picks=st.lists(
        st.one_of(
            st.tuples(st.just("byte"), st.integers(min_value=0, max_value=255)),
            st.tuples(st.just("id"), st.integers(min_value=0, max_value=199997)),
        ),
        max_size=40,
    )
)
def test_detokenizer_matches_tiktoken_on_any_ids(tokenizer, picks):
    # Single-byte tokens in any order make partial and invalid UTF-8 (which decodes to U+FFFD);
    # tiktoken's decode of the whole sequence is the reference.
    ids = [
        tokenizer.encoding.encode_single_token(bytes([value])) if kind == "byte" else value
        for kind, value in picks
    ]
    detokenizer = tokenizer.detokenizer()
    streamed = "".join(detokenizer.add(i) for i in ids) + detokenizer.finish()
    assert streamed == tokenizer.encoding.decode(ids)


@requires_vocab
def test_folder_and_file_give_the_same_cached_tokenizer():
    assert load_tokenizer(VOCAB) is load_tokenizer(VOCAB.parent / VOCAB.name)
    if VOCAB.name == "o200k_base.tiktoken":
        assert load_tokenizer(VOCAB.parent) is load_tokenizer(VOCAB)


@requires_vocab
def test_environment_variable_is_used(monkeypatch, tmp_path):
    copy = tmp_path / "o200k_base.tiktoken"
    shutil.copy(VOCAB, copy)
    monkeypatch.setenv("OPENHARMONY_VOCAB", str(tmp_path))
    assert load_tokenizer().vocab_path == copy.resolve()


@requires_vocab
def test_local_files_write_no_cache(monkeypatch, tmp_path):
    caches = tmp_path / "caches"
    caches.mkdir()
    for variable in ("TIKTOKEN_CACHE_DIR", "TIKTOKEN_RS_CACHE_DIR"):
        monkeypatch.setenv(variable, str(caches))
    monkeypatch.delenv("TIKTOKEN_ENCODINGS_BASE", raising=False)
    renamed = tmp_path / "vocab.bpe"  # harmony() must link it under the expected name
    shutil.copy(VOCAB, renamed)
    tokenizer = load_tokenizer(renamed)
    assert tokenizer.harmony().encode("Hello world") == [13225, 2375]
    assert list(caches.iterdir()) == []
    assert "TIKTOKEN_ENCODINGS_BASE" not in os.environ


def test_missing_file_is_named(tmp_path):
    with pytest.raises(OpenHarmonyError, match="does-not-exist.tiktoken"):
        load_tokenizer(tmp_path / "does-not-exist.tiktoken")


@requires_vocab
def test_wrong_file_fails_the_hash_check(tmp_path):
    corrupt = tmp_path / "o200k_base.tiktoken"
    data = bytearray(VOCAB.read_bytes())
    data[:4] = b"QUJD"  # first token b'!' becomes b'ABC'
    corrupt.write_bytes(bytes(data))
    with pytest.raises(OpenHarmonyError, match=f"{corrupt}.*sha256.*{O200K_BASE_SHA256}"):
        load_tokenizer(corrupt)


def test_no_vocabulary_and_no_network_says_what_to_do(monkeypatch, tmp_path):
    def no_network(url):
        raise requests.ConnectionError(f"cannot reach {url}")

    monkeypatch.delenv("OPENHARMONY_VOCAB", raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # an empty cache
    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    with pytest.raises(OpenHarmonyError) as raised:
        load_tokenizer()
    message = str(raised.value)
    assert "OPENHARMONY_VOCAB" in message and "--vocab" in message and "internet" in message
