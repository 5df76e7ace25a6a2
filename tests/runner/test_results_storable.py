"""What the runner writes back is storable in jsonb and bounded (conveyor.results): NUL,
lone surrogates and NaN replaced, oversize outputs truncated with a marker. Checked against
the real database: PostgreSQL accepts the text the runner sends."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from conveyor.results import encode_results, size_of, truncate

Conn = psycopg.Connection[dict[str, Any]]


def stored(conn: Conn, text: str) -> Any:
    row = conn.execute("select %s::jsonb as v", (text,)).fetchone()
    assert row is not None
    return row["v"]


@pytest.mark.parametrize(
    ("received", "kept"),
    [
        ({"ok": "a\x00b"}, {"ok": "a\ufffdb"}),  # a webhook answering {"ok":"a\u0000b"}
        ({"k\x00": ["x\x00", {"y": "\x00"}]}, {"k\ufffd": ["x\ufffd", {"y": "\ufffd"}]}),
        ({"s": "lone \ud800 and \udfff"}, {"s": "lone \ufffd and \ufffd"}),
        ({"n": float("nan"), "i": [float("inf"), -float("inf")]}, {"n": None, "i": [None, None]}),
    ],
)
def test_what_jsonb_refuses_is_replaced_and_the_database_takes_it(
    conn: Conn, received: dict[str, Any], kept: dict[str, Any]
) -> None:
    result = {"msg_id": 1, "ok": True, "output": received}
    with pytest.raises(psycopg.errors.DataError):  # the text written before
        stored(conn, json.dumps([result]))
    assert stored(conn, encode_results([result])) == [{"msg_id": 1, "ok": True, "output": kept}]


def test_an_ordinary_batch_is_written_as_json_dumps_writes_it(conn: Conn) -> None:
    results = [
        {"msg_id": n, "ok": True, "output": {"status": 200, "body": "caf\u00e9 \U0001f600"}}
        for n in range(10)
    ]
    assert encode_results(results) == json.dumps(results)
    assert stored(conn, encode_results(results)) == results


def test_a_text_that_only_looks_like_an_escape_is_kept_as_it_is(conn: Conn) -> None:
    output = {"doc": "write \\u0000 or \\ud800, NaN or Infinity in JSON"}
    assert stored(conn, encode_results([{"output": output}])) == [{"output": output}]


def test_an_oversize_object_keeps_its_keys_and_loses_its_largest_values_first(conn: Conn) -> None:
    cap = 4096
    output = {"status": 200, "headers": {"content-type": "text/plain"}, "body": "x" * 50_000}
    [result] = stored(conn, encode_results([{"msg_id": 1, "ok": True, "output": output}], cap))
    kept = result["output"]
    assert kept["status"] == 200 and kept["headers"] == {"content-type": "text/plain"}
    assert kept["body"] == "x" * 512 + (
        "\u2026 [truncated by the runner: 50002 bytes, over the limit of 4096 (CONVEYOR_MAX_OUTPUT_BYTES)]"
    )
    assert size_of(kept) <= cap


def test_an_oversize_value_of_another_kind_becomes_a_marker() -> None:
    cap = 4096
    body = [{"n": n} for n in range(2000)]
    assert truncate(body, cap) == {
        "truncated": True,
        "bytes": size_of(body),
        "max_output_bytes": cap,
        "preview": json.dumps(body)[:512],
    }
    # an object of many members, none large alone: the whole becomes the marker
    many = {f"k{n}": n for n in range(2000)}
    assert truncate(many, cap)["truncated"] is True
    assert size_of(truncate(many, cap)) <= cap


def test_the_error_is_bounded_too_and_keeps_its_message() -> None:
    error = {"message": "HTTP 500: " + "e" * 100_000, "type": "http"}
    [result] = json.loads(encode_results([{"ok": False, "error": error}], 8192))
    assert result["error"]["type"] == "http"
    assert result["error"]["message"].startswith("HTTP 500: eee")
    assert size_of(result["error"]) <= 8192


def test_a_value_nested_too_deeply_for_json_becomes_a_marker_and_the_batch_is_written(conn: Conn) -> None:
    deep: Any = "x"
    for _ in range(5000):  # json.dumps raises RecursionError on it
        deep = [deep]
    results = [{"msg_id": 1, "output": {"deep": deep}}, {"msg_id": 2, "output": {"status": 200}}]
    assert stored(conn, encode_results(results)) == [
        {"msg_id": 1, "output": {"truncated": True, "reason": "nested too deeply to store"}},
        {"msg_id": 2, "output": {"status": 200}},
    ]
