"""The gzip framing of answers: one gzip member per answer, spliced from cached deflate
pieces, read whole by a decoder that stops at the end of the first member (curl, browsers,
Go's gzip.Reader with multistream off); and the plain text, inflated a chunk at a time."""

from __future__ import annotations

import zlib

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as om_text_string_to_metric_families,
)
from prometheus_client.parser import text_string_to_metric_families

from fleet_exporter.exposition import (
    EOF_LINE,
    Body,
    Family,
    Writer,
    encode,
    encoded,
    gzip_member,
    inflate,
    inflating,
    render,
)

FAMILIES = [
    Family("a_gauge", "gauge", "plain help", ("volume",), [(("v1",), 1.0), (("v2",), 2.5)]),
    Family("b_total", "counter", 'help with "quotes"', ("volume",), [(("v1",), 3.0)]),
    Family("c_info", "gauge", "more", ("volume", "node"), [(("v1", 'n"\\'), 1.0)]),
    Family("d_help", "gauge", 'quotes "here"', (), [((), 0.0)]),
]


def one_member(data: bytes) -> bytes:
    """What a single-member gzip reader gets: everything, or the test fails."""
    d = zlib.decompressobj(31)
    out = d.decompress(data)
    assert d.eof, "the gzip stream does not end"
    assert d.unused_data == b"", "more than one gzip member"
    return out


@pytest.mark.parametrize("size", [0, 1, 300, 0xFFFF, 0x10000, 200_000])
def test_head_and_tail_of_any_size_make_one_member(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    empty = Body((), 0, 0)
    assert one_member(b"".join(gzip_member(data, empty))) == data
    assert one_member(b"".join(gzip_member(b"head\n", empty, data))) == b"head\n" + data


def test_an_answer_is_one_member_holding_head_body_and_tail() -> None:
    rendered = render(encoded(FAMILIES, "c-1"))
    head = b"# HELP probe_success x\n"
    for openmetrics in (False, True):
        body = rendered.body(openmetrics)
        expected = encode(FAMILIES, "c-1", openmetrics=openmetrics, eof=False)
        tail = EOF_LINE if openmetrics else b""
        assert one_member(b"".join(gzip_member(head, body, tail))) == head + expected + tail
        assert inflate(body) == expected
        assert body.size == len(expected) and body.crc == zlib.crc32(expected)
    # Only the families whose metadata differs between formats split the shared pieces.
    shared = [p for p in rendered.text.pieces if p in rendered.openmetrics.pieces]
    assert len(shared) == 3 and len(rendered.text.pieces) == 5


@pytest.mark.parametrize("chunk", [1000, 4096, 64 * 1024, 256 * 1024, 1 << 20])
def test_a_body_inflates_whole_a_chunk_at_a_time(chunk: int) -> None:
    """Every chunk size gives back every byte: a chunk that fills up can leave output
    pending inside the inflater after its input is all consumed (64 KiB steps once lost
    9,864 bytes of a 40,000-line answer)."""
    many = [
        Family(
            "x",
            "gauge",
            "h",
            ("i", "j"),
            [((str(i), "a" * (i % 97)), float(i)) for i in range(60_000)],
        )
    ]
    body = render(encoded(many, "c")).text
    chunks = list(inflating(body, chunk))
    assert max(map(len, chunks)) <= chunk
    assert b"".join(chunks) == encode(many, "c")


HOSTILE = 'we"ird\\na\nme\u202e'


def test_writer_lines_parse_back_to_the_same_values() -> None:
    """The fast path escapes as the general encoder does: a parser reads back every
    label value and number exactly, in both formats."""
    w = Writer(HOSTILE)
    block = w.labels(("volume", HOSTILE), ("node", "n1"))
    values = [0.0, 1.0, 1.5e300, -2.5e10, 123456789.0]
    help_ = 'Help "quoted" \\ back'
    fam = w.family(
        "x_bytes",
        "gauge",
        help_,
        [
            f'x_bytes{block},extra="{w.esc(HOSTILE + str(i))}"}} {w.num[v]}\n'
            for i, v in enumerate(values)
        ],
    )
    general = encode([Family("x_bytes", "gauge", help_, (), [])], "c").decode()
    assert fam.text_meta == general
    expected = [
        {"cluster": HOSTILE, "volume": HOSTILE, "node": "n1", "extra": HOSTILE + str(i)}
        for i in range(len(values))
    ]
    for parse, text in (
        (text_string_to_metric_families, fam.text_meta + fam.samples),
        (om_text_string_to_metric_families, fam.openmetrics_meta + fam.samples + "# EOF\n"),
    ):
        (parsed,) = parse(text)
        assert [s.value for s in parsed.samples] == values
        assert [s.labels for s in parsed.samples] == expected
