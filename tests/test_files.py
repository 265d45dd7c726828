"""The atomic writer every job's outputs go through."""

import json
import os

import pytest

from blip_jax.files import write_atomic, write_json_atomic


def test_whole_file_or_the_previous_one(tmp_path):
    path = str(tmp_path / "out.jsonl")
    write_atomic(path, "old\n")

    def rows():
        yield "first\n"
        raise KeyboardInterrupt  # killed mid-stream

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, rows())
    assert open(path).read() == "old\n" and os.listdir(tmp_path) == ["out.jsonl"]  # no temporary left
    write_atomic(path, (f"{i}\n" for i in range(3)))
    assert open(path).read() == "0\n1\n2\n"
    write_json_atomic(str(tmp_path / "m.json"), {"b": 1, "a": "é"}, sort_keys=True, ensure_ascii=False)
    assert (tmp_path / "m.json").read_text(encoding="utf-8") == '{"a": "é", "b": 1}'
    assert json.loads((tmp_path / "m.json").read_text(encoding="utf-8")) == {"a": "é", "b": 1}
