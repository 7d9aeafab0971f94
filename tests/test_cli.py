"""The CLI as a user meets it: good and bad arguments, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mobilenetv2.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mobilenetv2", *args], capture_output=True, text=True, timeout=300
    )


def test_variants(capsys: pytest.CaptureFixture) -> None:
    assert main(["variants"]) == 0
    out = capsys.readouterr().out
    assert "mobilenetv2_100" in out and "3,504,872" in out and "300,774,272" in out


def test_profile_json(capsys: pytest.CaptureFixture) -> None:
    assert main(["profile", "--variant", "mobilenetv2_100", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params"] == 3_504_872 and data["madds"] == 300_774_272
    assert {"params", "weights_excluding_bn", "madds", "layers"} <= set(data)
    assert data["layers"][0]["name"] == "stem"


def test_profile_table(capsys: pytest.CaptureFixture) -> None:
    assert main(["profile", "--width", "0.35", "--resolution", "96", "--num-classes", "1001"]) == 0
    out = capsys.readouterr().out
    assert "blocks.13.expand" in out and "multiply-adds" in out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["profile", "--width", "-1"], "width"),
        (["profile", "--width", "0"], "width"),
        (["profile", "--resolution", "8"], "resolution 8"),
        (["profile", "--variant", "mobilenetv2_100", "--width", "0.5"], "not both"),
        (["profile", "--output-stride", "4"], "output_stride"),
    ],
)
def test_user_mistakes_are_one_line(args: list[str], needle: str) -> None:
    res = run_cli(*args)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0]


@pytest.mark.parametrize("verb", ["variants", "profile"])
def test_help(verb: str) -> None:
    res = run_cli(verb, "--help")
    assert res.returncode == 0 and "usage" in res.stdout


def test_argparse_errors_have_no_traceback() -> None:
    res = run_cli("profile", "--variant", "nope")
    assert res.returncode == 2 and "Traceback" not in res.stderr and "invalid choice" in res.stderr
