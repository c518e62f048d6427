"""The one atomic-write helper (lipdeq.io) and the validators (lipdeq.validate)."""
import json
import os
import subprocess
import sys

import pytest

from lipdeq.io import NoSpaceError, atomic_write, write_json, write_text
from lipdeq.validate import (check_choice, check_finite, check_nonnegative, check_nonnegative_int,
                             check_positive, check_positive_int, check_probability)


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a.json"
    write_json(path, {"x": 1})
    write_json(path, {"x": 2})
    assert json.loads(path.read_text()) == {"x": 2}
    assert os.listdir(tmp_path) == ["a.json"]
    mask = os.umask(0)
    os.umask(mask)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~mask


def test_failure_inside_the_block_keeps_the_old_file(tmp_path):
    path = tmp_path / "r.txt"
    write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as fh:
            fh.write("new, half")
            raise RuntimeError("crash")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["r.txt"]


def test_file_size_limit_gives_no_space_error_naming_the_file(tmp_path):
    """Under a 1 KiB file-size limit (EFBIG), the write fails with one clear message."""
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))\n"
        "from lipdeq.io import write_text, NoSpaceError\n"
        "try:\n"
        f"    write_text({str(tmp_path / 'big.txt')!r}, 'x' * 100000)\n"
        "except NoSpaceError as e:\n"
        "    print('NOSPACE', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "NOSPACE" in out.stdout and "no space left writing" in out.stdout and "big.txt" in out.stdout
    assert not (tmp_path / "big.txt").exists() and os.listdir(tmp_path) == []


def test_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        with atomic_write("x", mode="a"):
            pass


@pytest.mark.parametrize("fn, good, bad", [
    (check_positive_int, [(1, 1), (3.0, 3)], [0, -1, 2.5, True, "3", float("nan"), float("inf")]),
    (check_nonnegative_int, [(0, 0), (4, 4)], [-1, 0.5, False, None]),
    (check_positive, [(0.5, 0.5), (3, 3.0)], [0, -1e-9, float("inf"), float("nan"), True, "1"]),
    (check_nonnegative, [(0, 0.0)], [-1, float("nan"), float("inf")]),
    (check_finite, [(-2, -2.0)], [float("nan"), float("-inf"), None]),
    (check_probability, [(0, 0.0), (1, 1.0), (0.3, 0.3)], [-0.1, 1.1, float("nan")]),
])
def test_validators_name_the_argument(fn, good, bad):
    for value, expected in good:
        assert fn("--flag", value) == expected and type(fn("--flag", value)) is type(expected)
    for value in bad:
        with pytest.raises(ValueError, match="--flag"):
            fn("--flag", value)


def test_check_choice():
    assert check_choice("solver", "a", {"a", "b"}) == "a"
    with pytest.raises(ValueError, match=r"solver must be one of \['a', 'b'\], got 'c'"):
        check_choice("solver", "c", {"a", "b"})


def test_strict_json_writes_null_for_non_finite_numbers():
    import json
    from lipdeq.io import strict_json
    obj = {"bound": float("inf"), "rows": [1.5, float("nan"), (-float("inf"), 2)], "n": 3,
           "name": "x", "none": None}
    text = strict_json(obj)

    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")
    assert json.loads(text, parse_constant=refuse) == {
        "bound": None, "rows": [1.5, None, [None, 2]], "n": 3, "name": "x", "none": None}
