"""backworks_core.bodies: bounded Content-Encoding decoding and depth-bounded JSON."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable, Iterable, Iterator

import brotli
import pytest
from mitmproxy.test import tutils

from backworks_core import bodies
from backworks_core.bodies import BodyTooLarge, CorruptBody, JsonTooDeep, UnsupportedEncoding, decode, decoded_body, json_depth, loads_json

try:
    import zstandard

    def zstd_compress(data: bytes) -> bytes:
        return zstandard.ZstdCompressor(level=3).compress(data)
except ImportError:  # mitmproxy 12: backports.zstd / compression.zstd
    zstd_compress = bodies._zstdlib.compress  # type: ignore[union-attr]


COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda d: gzip.compress(d, 9),
    "x-gzip": lambda d: gzip.compress(d, 9),
    "deflate": lambda d: zlib.compress(d, 9),
    "br": lambda d: brotli.compress(d, quality=5),
    "zstd": zstd_compress,
}
DOC = json.dumps({"user": {"name": "Zoë", "tags": list(range(50))}}).encode()
MiB = 1024 * 1024
# What one decoding step may add past the limit (documented in backworks_core/bodies.py).
STEP_BOUND = {
    "gzip": bodies.STEP,
    "deflate": bodies.STEP,
    "br": 2 * bodies.STEP if bodies._BROTLI_BOUNDED else 32 * MiB,  # Brotli 1.2 grows its buffer in blocks: 96 KiB
    "zstd": bodies.STEP if bodies._zstdlib is not None else 8 * 128 * 1024,
}


def request(body: bytes, *encodings: str) -> object:
    req = tutils.treq(content=b"")
    req.raw_content = body
    for value in encodings:
        req.headers.add("Content-Encoding", value)
    return req


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    """200 MiB of zeros in each coding: a few hundred bytes to a few hundred KB on the wire."""
    zeros = b"\0" * (200 * MiB)
    made = {coding: COMPRESS[coding](zeros) for coding in ("gzip", "deflate", "br", "zstd")}
    made["gzip, br"] = brotli.compress(made["gzip"])  # chained: 200 MiB behind ~1 KB of br
    return made


# --------------------------------------------------------------------------- codings


@pytest.mark.parametrize("coding", sorted(COMPRESS))
def test_every_coding_decodes(coding: str) -> None:
    assert decoded_body(request(COMPRESS[coding](DOC), coding), 1024) == DOC


def test_raw_deflate_and_case_and_spaces() -> None:
    raw_deflate = zlib.compress(DOC)[2:-4]
    assert decoded_body(request(raw_deflate, "deflate"), 1024) == DOC
    assert decoded_body(request(gzip.compress(DOC), "  GZip "), 1024) == DOC


def test_identity_and_empty_elements() -> None:
    assert decoded_body(request(DOC), 1024) == DOC
    assert decoded_body(request(DOC, "identity"), 1024) == DOC
    assert decoded_body(request(gzip.compress(DOC), "identity, , gzip,"), 1024) == DOC


@pytest.mark.parametrize("fields", [("gzip, br",), ("gzip", "br")])
def test_a_chain_is_undone_last_first_across_header_fields(fields: tuple[str, ...]) -> None:
    body = brotli.compress(gzip.compress(DOC))
    assert decoded_body(request(body, *fields), 1024) == DOC


def test_a_three_coding_chain() -> None:
    body = zstd_compress(brotli.compress(zlib.compress(DOC)))
    assert decoded_body(request(body, "deflate, br, zstd"), 1024) == DOC


def test_concatenated_gzip_members_decode_as_one_body() -> None:
    assert decoded_body(request(gzip.compress(b"ab") + gzip.compress(b"cd"), "gzip"), 1024) == b"abcd"


def test_zstd_frames_decode_as_one_body() -> None:
    assert decoded_body(request(zstd_compress(b"ab") + zstd_compress(b"cd"), "zstd"), 1024) == b"abcd"


@pytest.mark.parametrize("coding", ["compress", "x-compress", "bz2", "zlib_codec", "base64", "rot13", "none", "aes128gcm", "gzip;q=1"])
def test_other_codings_are_415_with_accept_encoding(coding: str) -> None:
    # mitmproxy falls back to Python's codecs for unknown names: bz2 and zlib_codec would inflate
    with pytest.raises(UnsupportedEncoding) as caught:
        decoded_body(request(b"x" * 10, f"gzip, {coding}"), 1024)
    assert caught.value.status == 415
    assert caught.value.headers == {"Accept-Encoding": "gzip, deflate, br, zstd, identity"}


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
def test_corrupt_truncated_and_trailing_streams_are_400(coding: str) -> None:
    good = COMPRESS[coding](DOC * 20)
    for body in (b"\xff" * 40 + good, good[: len(good) // 2], good[:-1], good + b"\x00junk"):
        with pytest.raises(CorruptBody) as caught:
            decoded_body(request(body, coding), 10 * MiB)
        assert caught.value.status == 400 and f"does not decode as {coding}" in caught.value.message


def test_a_zstd_window_over_8_mib_is_refused() -> None:
    if bodies._zstdlib is not None:
        compress = bodies._zstdlib.ZstdCompressor(options={bodies._zstdlib.CompressionParameter.window_log: 25})
        frame = compress.compress(b"\1" * (40 * MiB), mode=compress.FLUSH_FRAME)
    else:
        params = zstandard.ZstdCompressionParameters.from_level(3, window_log=25)
        frame = zstandard.ZstdCompressor(compression_params=params).compress(b"\1" * (40 * MiB))
    with pytest.raises(CorruptBody):
        decode(frame, ["zstd"], 100 * MiB)


# --------------------------------------------------------------------------- limits


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
def test_exact_limit_boundaries(coding: str) -> None:
    data = bytes(range(256)) * 1000  # 256,000 bytes
    body = COMPRESS[coding](data)
    assert decode(body, [coding], len(data)) == data
    with pytest.raises(BodyTooLarge) as caught:
        decode(body, [coding], len(data) - 1)
    assert caught.value.status == 413 and caught.value.limit == len(data) - 1
    assert str(len(data) - 1) in caught.value.message


def test_identity_is_held_to_the_limit_too() -> None:
    assert decode(b"x" * 100, [], 100) == b"x" * 100
    with pytest.raises(BodyTooLarge):
        decode(b"x" * 101, [], 100)


def test_a_body_larger_than_the_limit_as_received_is_refused_before_any_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setitem(bodies.DECODERS, "gzip", lambda chunks: calls.append("gzip") or iter(()))
    with pytest.raises(BodyTooLarge):
        decode(b"\x1f\x8b" + b"\0" * 200, ["gzip"], 100)
    assert calls == []


def counting(decoders: dict[str, Callable[[Iterable[bytes]], Iterator[bytes]]], produced: dict[str, int]) -> dict[str, Callable[[Iterable[bytes]], Iterator[bytes]]]:
    """Each decoder wrapped: `produced[coding]` is the most it ever yielded (across its stages)."""

    def wrap(coding: str, decoder: Callable[[Iterable[bytes]], Iterator[bytes]]) -> Callable[[Iterable[bytes]], Iterator[bytes]]:
        def counted(chunks: Iterable[bytes]) -> Iterator[bytes]:
            total = 0
            for chunk in decoder(chunks):
                total += len(chunk)
                produced[coding] = max(produced.get(coding, 0), total)
                yield chunk

        return counted

    return {coding: wrap(coding, decoder) for coding, decoder in decoders.items()}


@pytest.mark.parametrize("codings", ["gzip", "deflate", "br", "zstd", "gzip, br"])
@pytest.mark.parametrize("limit", [0, 1, 1000, 10 * MiB])
def test_a_bomb_is_never_decoded_past_the_limit_plus_one_step(bombs: dict[str, bytes], codings: str, limit: int, monkeypatch: pytest.MonkeyPatch) -> None:
    produced: dict[str, int] = {}
    monkeypatch.setattr(bodies, "DECODERS", counting(dict(bodies.DECODERS), produced))
    body = bombs[codings]
    assert len(body) <= 210_000  # 200 MiB behind at most a few hundred KB (gzip/deflate cap at ~1:1030)
    with pytest.raises(BodyTooLarge):
        decode(body, [c.strip() for c in codings.split(",")], limit)
    if len(body) > limit:  # refused as received, before any decoding
        assert produced == {}
        return
    assert produced, "the decoders ran"
    for coding, total in produced.items():
        assert total <= limit + STEP_BOUND[coding], (coding, total)


def test_the_bombs_are_small(bombs: dict[str, bytes]) -> None:
    assert len(bombs["br"]) <= 1024 and len(bombs["zstd"]) <= 16 * 1024 and len(bombs["gzip, br"]) <= 1024


# --------------------------------------------------------------------------- the per-message cache


def test_a_body_is_decoded_once_for_every_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    produced: dict[str, int] = {}
    runs: list[int] = []
    original = bodies.DECODERS["gzip"]
    monkeypatch.setitem(bodies.DECODERS, "gzip", lambda chunks: (runs.append(1), original(chunks))[1])
    req = request(gzip.compress(DOC), "gzip")
    assert decoded_body(req, 1024) == DOC
    assert decoded_body(req, 4096) == DOC
    with pytest.raises(BodyTooLarge):
        decoded_body(req, 10)  # a lower limit still applies to what is kept
    assert len(runs) == 1
    req.raw_content = gzip.compress(b"[1]")  # a transform changed it: decoded again
    assert decoded_body(req, 1024) == b"[1]"
    assert len(runs) == 2 and produced == {}


def test_a_refusal_is_remembered_and_a_larger_limit_tries_again() -> None:
    req = request(gzip.compress(b"\0" * 5000), "gzip")
    with pytest.raises(BodyTooLarge):
        decoded_body(req, 1000)
    with pytest.raises(BodyTooLarge):
        decoded_body(req, 999)
    assert decoded_body(req, 5000) == b"\0" * 5000
    broken = request(b"not gzip", "gzip")
    for _ in range(2):
        with pytest.raises(CorruptBody):
            decoded_body(broken, 1000)


def test_a_streamed_body_is_empty() -> None:
    req = request(b"", "gzip")
    req.raw_content = None
    assert decoded_body(req, 10) == b""


# --------------------------------------------------------------------------- JSON depth


def nested(depth: int, opener: str = "[", closer: str = "]") -> str:
    return opener * depth + closer * depth


def test_json_depth_limit_is_exact() -> None:
    assert loads_json(nested(64)) is not None
    with pytest.raises(JsonTooDeep) as caught:
        loads_json(nested(65))
    assert caught.value.status == 400 and caught.value.message == "JSON nested deeper than 64 levels"
    deep_objects = '{"a":' * 65 + "1" + "}" * 65
    with pytest.raises(JsonTooDeep):
        loads_json(deep_objects.encode())
    assert loads_json('{"a":' * 64 + "1" + "}" * 64, 64)["a"]["a"]


@pytest.mark.parametrize("text", [nested(100_000), "[" * 100_000, '{"a":' * 100_000, nested(100_000, "[{\"a\":", "}]")])
def test_100000_levels_are_refused_never_a_recursion_error(text: str) -> None:
    with pytest.raises(JsonTooDeep):
        loads_json(text)
    with pytest.raises(JsonTooDeep):
        loads_json(text.encode())


def test_brackets_in_strings_do_not_count() -> None:
    text = json.dumps({"s": "[" * 1000 + "{" * 1000, "list": [[1]]})
    assert loads_json(text)["list"] == [[1]]


def test_invalid_json_is_json_s_own_error() -> None:
    with pytest.raises(ValueError):
        loads_json(b'{"a": ')
    assert not issubclass(JsonTooDeep, ValueError) and not issubclass(BodyTooLarge, ValueError)


def test_json_depth_walks_without_recursion() -> None:
    assert json_depth(1) == 0 and json_depth([]) == 1 and json_depth({"a": [{}]}) == 3
    deep: list = []
    node = deep
    for _ in range(50_000):
        node.append([])
        node = node[0]
    assert json_depth(deep) == 50_001
    assert json_depth(deep, stop=10) == 11


def test_a_refusal_kept_in_the_cache_does_not_keep_the_message_alive() -> None:
    import gc
    import weakref

    req = request(brotli.compress(b"\0" * (20 * MiB)), "br")
    with pytest.raises(BodyTooLarge):
        decoded_body(req, 1000)
    ref = weakref.ref(req)
    del req
    gc.collect()
    assert ref() is None
