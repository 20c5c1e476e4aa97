"""Every setting checked once, before any work: the settings models, the CLI and config built from them, --check,
the reference page, and each kind of bad input a new user tried, by the item it was found as.

  property tests      random values for every option of every command and random config files, through --check
  windows / batch     0 and negative counts refused by the option's name (--windows, [parity] windows, --batch-size)
  seeds               one rule for seeds on every command and the server
  text                non-UTF-8 prompts and config text, NUL, lone surrogates in every server field
  devices             a device this machine lacks, for PyTorch and ONNX Runtime
  vocabulary, NaN     checkpoints whose tokenizer passes the vocabulary, or whose weights are not finite
  serve address       a busy port or bad host refused before the model loads
  run plan            config refusals before the first stage; a refused run leaves no directory
  umask               outputs readable by others under umask 022
  wording             the messages the new user found misleading
  stage signatures    stages take settings objects
"""

from __future__ import annotations

import inspect
import json
import math
import os
import socket
import time
from pathlib import Path

import pytest
import yaml
from conftest import make_tiny_llama
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsetrt.cli import main, runnable_commands
from sparsetrt.cli.reference import markdown
from sparsetrt.pipeline.config import PipelineConfig
from sparsetrt.settings import base_type, choices_of, cli_extra, flag_of, style_of, walk

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()  # what came before (a fixture's progress bars) is not this command's
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def refused(code: int, err: str, *expected: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("sparsetrt: error: "), err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# -- property tests ----------------------------------------------------------------------------------------------

BAD_TEXT = ["", " ", "nan", "NaN", "inf", "-inf", "1e309", "-1", "0", "-0", "1.5", "9" * 30, "abc", "0x10",
            "\udcff\udcfe", "unstructured:1.5", "2:4", "cuda:99", "tpu", ".", "a/b", "-x", "[]", "true"]


def value_strategy(info, tiny: str) -> st.SearchStrategy:
    """Text for one option: often what its type takes (in and out of range), often not."""
    kind, choices = base_type(info.annotation), choices_of(info.annotation)
    if choices:
        good = st.sampled_from([str(c) for c in choices])
    elif kind is int:
        good = st.one_of(st.integers(-3, 70_000), st.sampled_from([2**31, 2**63, -(2**63)])).map(str)
    elif kind is float:
        good = st.floats(allow_nan=True, allow_infinity=True, width=64).map(repr)
    else:
        # no absolute paths: a random one may name a real folder ("/"), whose text files a corpus option would read
        good = st.one_of(st.text(max_size=8).filter(lambda t: "\x00" not in t and not t.startswith(("/", "~"))),
                         st.just(tiny))
    return st.one_of(good, st.sampled_from(BAD_TEXT))


def argv_strategy(words: str, model, tiny: str) -> st.SearchStrategy:
    """A command line: some of the command's options with drawn values, the required ones always."""
    fields = [(path, info) for path, info in walk(model) if cli_extra(info).get("cli") is not False]

    @st.composite
    def draw(draw_):
        argv = words.split()
        for path, info in fields:
            if not info.is_required() and not draw_(st.booleans()):
                continue
            style = style_of(info)
            if style in ("flag", "negate"):
                argv.append(flag_of(path, info))
                continue
            values = draw_(st.lists(value_strategy(info, tiny), min_size=1, max_size=3))
            if style == "positional":
                argv.insert(len(words.split()), values[0])
            elif style == "nargs":
                argv += [flag_of(path, info), *values]
            elif style == "repeat":
                for v in values:
                    argv += [flag_of(path, info), v]
            elif style == "comma":
                argv += [flag_of(path, info), ",".join(values)]
            else:
                argv += [flag_of(path, info), values[0]]
        return argv + ["--check"]
    return draw()


COMMAND_NAMES = [words for words, _ in runnable_commands()]


@pytest.mark.parametrize("words", COMMAND_NAMES)
def test_every_option_of_every_command_is_checked_without_a_traceback(words, capsys, tmp_path, tiny_checkpoint,
                                                                      monkeypatch):
    """Random values for every option (wrong types, out of range, zero, negative, NaN, huge, non-UTF-8): --check
    exits 0, or 2 with exactly one `sparsetrt: error:` line; never a traceback; nothing created."""
    command = dict(runnable_commands())[words]
    monkeypatch.chdir(tmp_path)

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(argv_strategy(words, command.settings, str(tiny_checkpoint)))
    def check(argv):
        before = listing(tmp_path)
        code, out, err = run(capsys, *argv)
        assert "Traceback" not in err
        if code == 0:
            assert "every setting checked; nothing was written" in out
        else:
            refused(code, err)
        assert listing(tmp_path) == before, argv

    check()


CONFIG_VALUES = st.one_of(st.integers(-5, 2**64), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                          st.text(max_size=6).filter(lambda t: "\x00" not in t and not t.startswith(("/", "~"))),
                          st.lists(st.one_of(st.integers(-2, 8), st.text(max_size=4)), max_size=3),
                          st.dictionaries(st.text(max_size=4), st.integers(), max_size=2), st.none())


def config_strategy(tiny: str) -> st.SearchStrategy:
    """A config file's table: real sections and keys with drawn values, unknown keys, wrong nesting."""
    sections = {name: [n for n in info.annotation.model_fields] for name, info in PipelineConfig.model_fields.items()
                if hasattr(info.annotation, "model_fields")}
    key = st.sampled_from(sorted(sections)).flatmap(
        lambda s: st.tuples(st.just(s), st.one_of(st.sampled_from(sections[s]), st.text(min_size=1, max_size=5))))
    good = {"model": {"source": tiny}, "calibration": {"samples": 2, "seq_len": 16}}

    @st.composite
    def draw(draw_):
        data = json.loads(json.dumps(good))
        for section, name in draw_(st.lists(key, max_size=4)):
            value = draw_(CONFIG_VALUES)
            if draw_(st.integers(0, 9)) == 0:
                data[section] = value  # wrong nesting: a value where a table belongs
            elif isinstance(data.get(section), dict):
                data[section][name] = value
        if draw_(st.booleans()):
            data[draw_(st.text(min_size=1, max_size=5))] = draw_(CONFIG_VALUES)  # an unknown top-level key
        return data
    return draw()


def test_random_config_files_are_checked_without_a_traceback(capsys, tmp_path, tiny_checkpoint, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(config_strategy(str(tiny_checkpoint)))
    def check(data):
        path = tmp_path / "config.yaml"
        try:
            write_config(path, data)
        except yaml.YAMLError:
            return
        code, out, err = run(capsys, "run", "--config", path, "--check")
        assert "Traceback" not in err
        if code == 0:
            assert "every setting checked" in out
        else:
            refused(code, err)
        assert listing(work) == set()

    check()


def test_the_reference_page_is_current():
    page = ROOT / "docs" / "settings.md"
    assert page.read_text() == markdown(), "docs/settings.md is stale: run `make docs`"


def test_every_option_has_help_and_one_spelling():
    for words, command in runnable_commands():
        flags = [flag_of(path, info) for path, info in walk(command.settings)
                 if cli_extra(info).get("cli") is not False and style_of(info) != "positional"]
        assert len(flags) == len(set(flags)), (words, flags)
        for path, info in walk(command.settings):
            assert info.description, (words, path)


# -- the items found by trying bad input -------------------------------------------------------------------------

def test_zero_windows_and_batches_are_refused_by_name(capsys, tmp_path, tiny_checkpoint):
    refused(*run(capsys, "parity", "--model", tiny_checkpoint, "--onnx-dir", tmp_path, "--windows", 0, "--out",
                 tmp_path / "p", "--check")[::2], "--windows must be >= 1, not 0")
    refused(*run(capsys, "quantize", "--model", tiny_checkpoint, "--onnx-dir", tmp_path, "--precision", "int8",
                 "--windows", 0, "--out", tmp_path / "q")[::2], "--windows must be >= 1")
    refused(*run(capsys, "prune", "--model", tiny_checkpoint, "--batch-size", 0, "--out", tmp_path / "x")[::2],
            "--batch-size must be >= 1")
    refused(*run(capsys, "prune", "--model", tiny_checkpoint, "--block-size", 0, "--out", tmp_path / "x")[::2],
            "--block-size must be >= 1")
    config = write_config(tmp_path / "c.yaml", {"model": {"source": str(tiny_checkpoint)}, "parity": {"windows": 0}})
    refused(*run(capsys, "run", "--config", config)[::2], "[parity] windows must be >= 1")


def test_one_rule_for_seeds(capsys, tmp_path, tiny_checkpoint):
    for argv in (["prune", "--model", tiny_checkpoint, "--out", tmp_path / "x"],
                 ["generate", "--model", tiny_checkpoint, "--prompt", "hi", "--temperature", 1],
                 ["distill", "--teacher", tiny_checkpoint, "--student", tmp_path, "--out", tmp_path / "d"]):
        refused(*run(capsys, *argv, "--seed", -1)[::2], "--seed must be >= 0, not -1")
    from sparsetrt.runtime.serve.app import CompletionRequest
    from sparsetrt.runtime.settings import SamplingSettings
    from sparsetrt.settings import SEED_MAX

    assert CompletionRequest.model_fields["seed"].metadata[-1].le == SEED_MAX
    assert SamplingSettings.model_fields["seed"].metadata[-1].le == SEED_MAX


def test_text_that_is_not_utf8_is_refused_everywhere(capsys, tmp_path, tiny_checkpoint):
    bad = b"\x80x".decode("utf-8", "surrogateescape")  # what Python makes of such bytes in argv
    refused(*run(capsys, "generate", "--model", tiny_checkpoint, "--prompt", bad)[::2],
            "--prompt must be valid UTF-8 text")
    corpus = tmp_path / "latin1.txt"
    corpus.write_bytes("caf\xe9 ".encode("latin-1") * 50)
    refused(*run(capsys, "prune", "--model", tiny_checkpoint, "--calib", corpus, "--out", tmp_path / "x",
                 "--check")[::2], "not UTF-8 text")
    config = tmp_path / "c.toml"
    config.write_bytes(b'[prune]\nmethod = "\xff"\n')
    refused(*run(capsys, "run", "--config", config)[::2], "not UTF-8")
    from sparsetrt.prune.settings import PruneSettings
    from sparsetrt.settings import SettingsError, checked

    with pytest.raises(SettingsError, match="NUL"):
        checked(PruneSettings, {"targets": ["a\x00b"]}, lambda path: "[prune] " + path[-1])


def test_a_surrogate_in_any_server_field_is_a_json_400(tiny_checkpoint):
    from serve_support import LiveServer

    from sparsetrt.runtime.serve.served_model import resolve_served_model

    with LiveServer(resolve_served_model(str(tiny_checkpoint), "pytorch")) as server:
        for field, value in (("model", "\udfff"), ("user", "\ud800"), ("stop", ["\udc00"]), ("prompt", "\ud800")):
            body = json.dumps({"prompt": "hi", "max_tokens": 2, field: value})  # ASCII: the escapes stay escapes
            response = server.client.post("/v1/completions", content=body,
                                          headers={"content-type": "application/json"})
            assert response.status_code == 400, response.text
            assert response.json()["error"]["param"] == field and response.json()["error"]["code"] == "invalid_text"
        assert server.client.get("/health").status_code == 200


def test_devices_this_machine_lacks_are_refused(capsys, tiny_checkpoint, tmp_path):
    import torch

    refused(*run(capsys, "generate", "--model", tiny_checkpoint, "--prompt", "hi", "--device", "tpu")[::2],
            "--device must be cpu, cuda, cuda:N or auto")
    if not torch.cuda.is_available():
        refused(*run(capsys, "generate", "--model", tiny_checkpoint, "--prompt", "hi", "--device", "cuda")[::2],
                "--device cuda: this machine has no CUDA GPU")
        refused(*run(capsys, "prune", "--model", tiny_checkpoint, "--device", "cuda:1", "--out", tmp_path / "x",
                     "--check")[::2], "no CUDA GPU")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        refused(*run(capsys, "generate", "--backend", "onnxruntime", "--model", tmp_path / "m.onnx", "--tokenizer",
                     tiny_checkpoint, "--prompt", "hi", "--device", "cuda")[::2], "has no CUDA provider")


def test_checkpoints_past_their_vocabulary_or_not_finite_are_refused(capsys, tmp_path, calib_file):
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, LlamaForCausalLM

    short = make_tiny_llama(tmp_path / "short")
    config = AutoConfig.from_pretrained(short)
    config.vocab_size -= 10  # weights for fewer ids than the tokenizer yields
    LlamaForCausalLM(config).save_pretrained(short)
    refused(*run(capsys, "prune", "--model", short, "--calib", calib_file, "--calib-samples", 2, "--calib-seq-len",
                 16, "--out", tmp_path / "x", "--no-progress")[::2], "do not belong together")

    broken = make_tiny_llama(tmp_path / "nan")
    weights = load_file(broken / "model.safetensors")
    name = next(n for n in weights if n.endswith("q_proj.weight"))
    weights[name][0, 0] = math.nan
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    line = refused(*run(capsys, "export", "--model", broken, "--out", tmp_path / "o")[::2], "NaN or infinite")
    assert name in line and not (tmp_path / "o").exists()
    refused(*run(capsys, "prune", "--model", broken, "--damping", "nan", "--out", tmp_path / "x")[::2],
            "--damping must be a finite number")
    refused(*run(capsys, "generate", "--model", broken, "--prompt", "hi", "--temperature", "nan")[::2],
            "--temperature must be a finite number")
    assert torch.isnan(weights[name]).any()


def test_serve_refuses_a_busy_port_or_bad_host_before_loading(capsys, tiny_checkpoint):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        start = time.perf_counter()
        refused(*run(capsys, "serve", "--model", tiny_checkpoint, "--backend", "pytorch", "--port", port)[::2],
                f"--port {port}: the address is in use")
        assert time.perf_counter() - start < 2.0  # before the model loads
    finally:
        holder.close()
    refused(*run(capsys, "serve", "--model", tiny_checkpoint, "--host", "999.1.1.1")[::2],
            "--host '999.1.1.1' is not an address")


def test_a_run_is_refused_before_its_first_stage_and_leaves_nothing(capsys, tmp_path, tiny_checkpoint, calib_file):
    base = {"model": {"source": str(tiny_checkpoint)}, "calibration": {"corpus": str(calib_file), "samples": 2,
                                                                       "seq_len": 16}}
    cases = [({"export": {"precisions": ["fp64"]}}, "[export] precisions must be one of"),
             ({"export": {"opset": 7}}, "[export] opset 7 cannot be written"),
             ({"parity": {"tolerances": ["fp16.max_abs_error"]}}, "[parity] tolerances"),
             ({"quantize": {"precision": "int8", "tp": [3]}}, "[quantize] tp"),
             ({"quantize": {"precision": "int8", "tp": [8]}}, "[quantize] tp"),
             ({"prune": {"method": "sparsgpt"}}, "[prune] method must be one of"),
             ({"prune": {"pattern": "3:2"}}, "[prune] pattern"),
             ({"calibration": {"samples": 0}}, "[calibration] samples must be >= 1"),
             ({"calibration": {"seq_len": 4096}}, "[calibration] seq_len"),
             ({"calibration": {"corpus": str(tmp_path / "missing.txt")}}, "[calibration] corpus"),
             ({"quantize": {"precision": "int4"}, "export": {"precisions": ["fp32"]}}, "fp16 to [export] precisions"),
             ({"build": {"precisions": ["int8"]}}, "[build] precisions int8 needs [quantize] precision")]
    for extra, expected in cases:
        out = tmp_path / "never"
        config = write_config(tmp_path / "c.yaml", {**base, **extra, "out": str(out)})
        for check in ([], ["--check"]):
            refused(*run(capsys, "run", "--config", config, *check)[::2], expected)
            assert not out.exists(), extra


def test_run_check_prints_the_plan_and_writes_nothing(capsys, tmp_path, tiny_checkpoint, calib_file):
    out = tmp_path / "artifacts"
    config = write_config(tmp_path / "c.yaml", {"model": {"source": str(tiny_checkpoint)}, "out": str(out),
                                                 "calibration": {"corpus": str(calib_file)},
                                                 "quantize": {"precision": "int8"}, "build": {"precisions": ["fp16"]}})
    code, stdout, _ = run(capsys, "run", "--config", config, "--check")
    assert code == 0 and not out.exists()
    for text in ("prune        sparsegpt 2:4", "export       fp32, fp16", "parity", "quantize     int8", "engine       fp16",
                 "GiB of weights"):
        assert text in stdout, stdout


def test_outputs_follow_the_umask(capsys, pruned_tiny, tmp_path):
    previous = os.umask(0o022)
    try:
        code, _, err = run(capsys, "export", "--model", pruned_tiny, "--precision", "fp32", "--out", tmp_path / "o")
    finally:
        os.umask(previous)
    assert code == 0, err
    for path in [tmp_path / "o", *(tmp_path / "o").rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


def test_the_misleading_messages_say_what_to_do(capsys, tmp_path, exported_tiny, pruned_tiny):
    onnx_dir, _ = exported_tiny
    refused(*run(capsys, "lint", onnx_dir)[::2], "is a directory; pass an .onnx file in it")
    refused(*run(capsys, "build", onnx_dir)[::2], "is an export directory: pass one of its files")
    refused(*run(capsys, "parity", "--model", pruned_tiny, "--onnx-dir", onnx_dir, "--generate-tokens", -1,
                 "--out", tmp_path / "p")[::2], "--generate-tokens must be >= 0")
    refused(*run(capsys, "prune", "--model", pruned_tiny, "--pattern", "unstructured:1.5", "--out", tmp_path / "x")
            [::2], "the unstructured ratio must lie strictly between 0 and 1")
    long = " ".join(["word"] * 600)
    line = refused(*run(capsys, "generate", "--model", pruned_tiny, "--prompt", long, "--max-new-tokens", 4)[::2],
                   "shorten")
    assert "to 0" not in line


def test_stages_take_settings_objects():
    from sparsetrt.export.quant_stage import quantize_checkpoint
    from sparsetrt.export.stage import export_checkpoint
    from sparsetrt.prune.shrink_stage import shrink_checkpoint
    from sparsetrt.prune.stage import prune_checkpoint
    from sparsetrt.runtime.parity.compare import run_parity

    for stage in (prune_checkpoint, shrink_checkpoint, export_checkpoint, quantize_checkpoint, run_parity):
        assert len(inspect.signature(stage).parameters) <= 11, stage.__name__
    calib = [line for path in (ROOT / "prune").glob("*.py") for line in path.read_text().splitlines()
             if "calib_seq_len" in line and "def " in line]
    assert not calib  # no stage function takes the calibration as loose keywords
