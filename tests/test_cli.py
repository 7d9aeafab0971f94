"""The CLI as a user meets it: good and bad arguments, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mobilenetv2.cli import main

# --- the declarative CLI: one mechanism, shared options, one-line usage errors --------------

# The flags each verb promises (README "Command line"); the declarations must keep them.
PROMISED = {
    "variants": ["--json"],
    "profile": ["--variant", "--width", "--resolution", "--num-classes", "--padding",
                "--output-stride", "--small-input", "--json", "--memory", "--all-sizes",
                "--steps", "--slices", "--batch"],
    "convert": ["-o", "--output", "--out", "--from", "--ema"],
    "pretrained": ["--json"],
    "predict": ["--weights", "--topk", "--batch-size", "--json", "--backend", "--precision",
                "--threads", "--calib"],
    "export": ["--weights", "--format", "-o", "--out", "--input-size", "--dynamic-hw",
               "--opset", "--exporter", "--atol", "--threads"],
    "quantize": ["--weights", "--calib", "--method", "-o", "--out", "--calib-images", "--eval",
                 "--eval-images", "--epochs", "--freeze-bn-after", "--freeze-observers-after",
                 "--lr", "--threads"],
    "bench": ["--weights", "--threads", "--rounds", "--runs", "--batch", "--size", "--cpu-ghz",
              "--quick", "--json", "--markdown"],
    "deploy-demo": ["--weights", "--out", "--data", "--threads"],
    "train": ["--recipe", "--config", "--out", "--resume", "--print-config", "--data",
              "--weights", "--epochs", "--lr", "--batch-size", "--threads", "--width"],
    "eval": ["--weights", "--data", "--out", "--batch-size", "--num-workers", "--device",
             "--json", "--backend", "--precision", "--threads", "--calib", "--output-stride",
             "--multi-scale", "--flip"],
    "segment": ["--weights", "--out", "--json", "--multi-scale", "--flip", "--output-stride"],
    "detect": ["--weights", "--out", "--score-threshold", "--iou-threshold", "--max-detections",
               "--json", "--threads"],
}
# The verbs that compute, each of which takes --threads (0: the library's choice).
THREADED = {"predict", "eval", "train", "quantize", "bench", "deploy-demo", "export",
            "detect"}


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


@pytest.mark.parametrize("verb", sorted(PROMISED))
def test_help(verb: str) -> None:
    res = run_cli(verb, "--help")
    assert res.returncode == 0 and "usage" in res.stdout


def test_argparse_errors_have_no_traceback() -> None:
    res = run_cli("profile", "--variant", "nope")
    assert res.returncode == 2 and "Traceback" not in res.stderr and "invalid choice" in res.stderr


def verb_help(verb: str) -> str:
    from mobilenetv2.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "verb")
    return sub.choices[verb].format_help()


def test_every_verb_is_registered() -> None:
    from mobilenetv2.cli import VERBS

    assert set(VERBS) == set(PROMISED)


@pytest.mark.parametrize("verb", sorted(PROMISED))
def test_declared_options_appear_in_help(verb: str) -> None:
    """Every field of the verb's Args (and of the config dataclasses it takes) is an option
    in its --help, and the flags the README promises are still there."""
    import dataclasses
    import importlib

    from mobilenetv2.cli import VERBS

    args = importlib.import_module(f"mobilenetv2.cli.{VERBS[verb]}").Args
    text = verb_help(verb)
    words = set(text.replace(",", " ").replace("[", " ").replace("]", " ").split())
    for flag in PROMISED[verb]:
        assert flag in words, f"{verb} --help lacks {flag}"
    for f in dataclasses.fields(args):
        decl = f.metadata.get("mobilenetv2.cli")
        group = getattr(decl, "cls", None)
        names = [g.name for g in dataclasses.fields(group) if g.name not in decl.exclude] \
            if group else [f.name]
        for name in names:
            if getattr(decl, "positional", False):
                assert decl.metavar in words, f"{verb} --help lacks {decl.metavar}"
            elif getattr(decl, "flags", ()):
                assert all(flag in words for flag in decl.flags), f"{verb}: {decl.flags}"
            else:
                assert "--" + name.replace("_", "-") in words, f"{verb} --help lacks {name}"


def test_help_does_not_import_torch() -> None:
    code = (
        "import contextlib, io, sys\n"
        "import mobilenetv2, mobilenetv2.cli as c\n"
        "for argv in [['--help'], *[[v, '--help'] for v in c.VERBS]]:\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "        try:\n"
        "            c.main(argv)\n"
        "        except SystemExit as e:\n"
        "            assert e.code == 0, (argv, e.code)\n"
        "    assert 'usage: mobilenetv2' in out.getvalue(), argv\n"
        "heavy = [m for m in ('torch', 'numpy', 'PIL') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize(
    "args, needle",
    [
        (["predict", "x.jpg"], "required: --weights"),
        (["predict", "x.jpg", "--weights", "w", "--threads", "-1"], "--threads: must be an "
         "integer >= 0, got -1"),
        (["predict", "x.jpg", "--weights", "w", "--topk", "0"], "--topk"),
        (["predict", "x.jpg", "--weights", "w", "--backend", "tensorrt"], "invalid choice"),
        (["eval", "--weights", "w", "--batch-size", "0"], "--batch-size: must be an integer"),
        (["eval", "--weights", "w", "--batch-size", "two"], "expected an integer, got 'two'"),
        (["bench", "--rounds", "0"], "--rounds"),
        (["quantize", "--weights", "w"], "required: --calib"),
        (["export", "--weights", "w", "-o", "m.onnx", "--atol", "nan"], "--atol"),
        (["train", "--threads", "-2"], "--threads"),
        (["train", "--batch-size", "0"], "--batch-size"),
        (["train", "--hflip", "maybe"], "true or false"),
        (["convert", "a.pth", "-o", "b.safetensors", "--from", "caffe"], "invalid choice"),
        (["variants", "--bogus"], "unrecognized arguments: --bogus"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_are_one_line(args: list[str], needle: str) -> None:
    res = run_cli(*args)
    assert res.returncode == 2 and res.stdout == ""
    lines = res.stderr.splitlines()
    verb = args[0] if args[0] in PROMISED else None
    prog = f"mobilenetv2 {verb}" if verb else "mobilenetv2"
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"{prog}: error: ") and needle in lines[0]
    assert lines[0].endswith(f"(see `{prog} --help`)")


@pytest.mark.parametrize("verb", sorted(THREADED))
def test_threads_zero_is_the_library_default_everywhere(verb: str) -> None:
    from mobilenetv2.cli import build_parser
    from mobilenetv2.cli.options import args_from_namespace

    required = {"predict": ["x.jpg", "--weights", "w"], "eval": ["--weights", "w"],
                "quantize": ["--weights", "w", "--calib", "digits"],
                "deploy-demo": ["--weights", "w"], "export": ["--weights", "w", "-o", "m.onnx"],
                "detect": ["x.jpg", "--weights", "w"]}
    parser = build_parser()
    for threads in ("0", "3"):
        ns = parser.parse_args([verb, *required.get(verb, []), "--threads", threads])
        args = args_from_namespace(ns._verb.args, ns)
        got = args.train["threads"] if verb == "train" else args.threads
        assert got == int(threads)
    ns = parser.parse_args([verb, *required.get(verb, [])])
    args = args_from_namespace(ns._verb.args, ns)
    assert (args.train.get("threads") if verb == "train" else args.threads) in (0, None)


def test_only_computing_verbs_take_threads() -> None:
    assert {v for v in PROMISED if "--threads" in verb_help(v).split()} == THREADED


def test_threads_zero_runs_predict(tmp_path, capsys) -> None:
    """`--threads 0` used to reach InferenceSession, which refused it; now it means the
    library's default and the prediction runs."""
    import numpy as np
    from PIL import Image

    from mobilenetv2 import create_model, save

    weights = save(create_model("mobilenetv2_035", num_classes=3).eval(),
                   tmp_path / "w.safetensors", labels=["a", "b", "c"])
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "x.png")
    assert main(["predict", str(tmp_path / "x.png"), "--weights", str(weights),
                 "--backend", "torch", "--threads", "0", "--topk", "1"]) == 0
    captured = capsys.readouterr()
    assert "x.png" in captured.out
    assert "running on torch fp32 (threads: default" in captured.err


def test_declared_choices_match_the_library() -> None:
    """Choices spelled out in the CLI (their sources import torch, --help must not) are the
    library's."""
    from typing import get_args

    from mobilenetv2.cli.convert import SourceFormat
    from mobilenetv2.cli.options import SHARED
    from mobilenetv2.cli.profile import VariantName
    from mobilenetv2.registry import VARIANTS
    from mobilenetv2.runtime.backends import BACKENDS, PRECISIONS
    from mobilenetv2.train.recipes import RECIPES
    from mobilenetv2.weights.convert import FORMATS

    assert get_args(VariantName) == tuple(VARIANTS)
    assert get_args(SourceFormat) == FORMATS
    assert SHARED["backend"].choices == ("auto", *BACKENDS)
    assert SHARED["precision"].choices == PRECISIONS
    assert "--recipe {" + ",".join(RECIPES) + "}" in verb_help("train")


def test_package_names_load_lazily() -> None:
    """`import mobilenetv2` is light; every public name resolves, and `profile` stays the
    function even after its submodule is imported."""
    code = (
        "import sys, types, mobilenetv2\n"
        "assert 'torch' not in sys.modules\n"
        "import mobilenetv2.profile\n"
        "from mobilenetv2 import profile\n"
        "assert not isinstance(profile, types.ModuleType), profile\n"
        "assert profile(mobilenetv2.ModelConfig()).params == 3_504_872\n"
        "for name in mobilenetv2.__all__:\n"
        "    getattr(mobilenetv2, name)\n"
        "assert mobilenetv2.__version__\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr


def test_other_libraries_info_logs_stay_quiet(monkeypatch, capfd) -> None:
    """ONNX Runtime's quantizer logs each copied bias at INFO through the root logger (about
    40 lines per `quantize`); the CLI shows other libraries' messages from WARNING up, ours
    from INFO."""
    import logging

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", logging.WARNING)
    mine = logging.getLogger("mobilenetv2")
    monkeypatch.setattr(mine, "level", logging.NOTSET)
    main(["variants"])
    logging.info("Created a copy of bias input 'b' called 'b_copy'")  # what ORT does
    logging.getLogger("mobilenetv2.quant.ptq").info("ours")
    err = capfd.readouterr().err
    assert "Created a copy" not in err and "ours" in err


def test_output_cut_short_by_a_pipe_is_not_an_error() -> None:
    # `mobilenetv2 profile --memory --all-sizes | head -1`: the reader closes the pipe after one
    # line; the CLI must stop quietly (exit 0, no BrokenPipeError traceback on stderr).
    proc = subprocess.Popen([sys.executable, "-m", "mobilenetv2", "profile", "--memory",
                             "--all-sizes"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert first.strip(), "nothing was printed before the pipe closed"
    assert "Traceback" not in err and "BrokenPipe" not in err, err
