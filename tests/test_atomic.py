"""Atomic writes: whole files or nothing, with the usual permissions."""

from __future__ import annotations

import os
import stat

import pytest

from automl_prune.atomic import atomic_write, atomic_write_text


def test_writes_whole_file_with_usual_mode(tmp_path) -> None:
    target = atomic_write_text(tmp_path / "sub" / "a.json", '{"x": 1}')
    assert target.read_text() == '{"x": 1}'
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path) -> None:
    target = atomic_write(tmp_path / "w.bin", b"old")

    def explode(handle) -> None:
        handle.write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(target, explode)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["w.bin"]
