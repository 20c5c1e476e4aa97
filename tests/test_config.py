from pathlib import Path

import pytest

from sparsetrt.errors import SparsetrtError
from sparsetrt.pipeline.config import PipelineConfig, load_config

REPO = Path(__file__).resolve().parent.parent


def test_demo_config_parses():
    config = load_config(REPO / "configs" / "demo.toml")
    assert config.model.source == "smollm2-135m"
    assert config.prune.method == "sparsegpt" and config.prune.pattern == "2:4"
    assert config.calibration.samples == 32 and config.calibration.seq_len == 512
    assert config.prune.sparsegpt.mask_selection == "joint"
    assert config.export.precisions == ["fp32", "fp16"]


def test_yaml_and_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("prune:\n  method: wanda\n  sparsegpt:\n    damping: 0.1\nparity:\n  windows: 2\n")
    config = load_config(path)
    assert config.prune.method == "wanda" and config.prune.sparsegpt.damping == 0.1
    assert config.parity.windows == 2 and config.out == PipelineConfig().out


@pytest.mark.parametrize("text,message", [
    ("[prune]\nmethd = 'wanda'\n", "unknown key.*methd"),
    ("[calibration]\nsamples = 'many'\n", "samples must be an integer"),
    ("[export]\nprecisions = 'fp16'\n", "precisions must be a list"),
    ("[model]\ntrust_remote_code = 1\n", "true or false"),
    ("prune = 3\n", r"\[prune\] must be a table"),
    ("[parity]\nwindows = 0\n", r"\[parity\] windows must be >= 1, not 0"),
    ("[prune.sparsegpt]\ndamping = nan\n", r"\[prune.sparsegpt\] damping must be a finite number"),
    ("[export]\nopset = 7\n", r"\[export\] opset 7 cannot be written"),
    ("[prune\n", "does not parse"),
])
def test_bad_configs_are_refused_with_the_key(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(SparsetrtError, match=message):
        load_config(path)


def test_missing_and_unknown_format(tmp_path):
    with pytest.raises(SparsetrtError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "c.ini").write_text("[x]")
    with pytest.raises(SparsetrtError, match=".toml, .yaml"):
        load_config(tmp_path / "c.ini")


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantized_demo_configs_extend_the_float_one(precision):
    base = load_config(REPO / "configs" / "demo.toml")
    config = load_config(REPO / "configs" / f"demo-{precision}.toml")
    assert config.quantize.precision == precision and config.quantize.tp == [1]
    assert config.prune == base.prune and config.export == base.export and config.out == base.out
    assert base.quantize.precision == "none"


def test_extends_overrides_key_by_key_and_checks_types(tmp_path):
    (tmp_path / "base.toml").write_text("[calibration]\nsamples = 8\nseq_len = 64\n")
    (tmp_path / "child.toml").write_text("extends = 'base.toml'\n[calibration]\nsamples = 4\n[quantize]\ntp = [1, 2]\n")
    config = load_config(tmp_path / "child.toml")
    assert (config.calibration.samples, config.calibration.seq_len, config.quantize.tp) == (4, 64, [1, 2])
    (tmp_path / "bad.toml").write_text("[quantize]\ntp = ['1']\n")
    with pytest.raises(SparsetrtError, match=r"\[quantize\] tp must be an integer, not '1'"):
        load_config(tmp_path / "bad.toml")
    (tmp_path / "loop.toml").write_text("extends = 'loop.toml'\n")
    with pytest.raises(SparsetrtError, match="chains stop at 5"):
        load_config(tmp_path / "loop.toml")


def test_the_build_section_is_also_read_under_its_earlier_name(tmp_path):
    """[engine] (what configs already say) is [build]; both at once is refused; the fingerprint keeps the earlier
    name, so runs made before the rename are still recognised as the same run."""
    from sparsetrt.artifacts import fingerprint

    (tmp_path / "old.toml").write_text('[engine]\nprecisions = ["fp16"]\n')
    (tmp_path / "new.toml").write_text('[build]\nprecisions = ["fp16"]\n')
    old, new = load_config(tmp_path / "old.toml"), load_config(tmp_path / "new.toml")
    assert old.build.precisions == new.build.precisions == ["fp16"]
    assert fingerprint(old.to_dict()) == fingerprint(new.to_dict()) and "engine" in new.to_dict()
    (tmp_path / "both.toml").write_text('[engine]\nprecisions = ["fp16"]\n[build]\nprecisions = ["fp32"]\n')
    with pytest.raises(SparsetrtError, match=r"\[engine\] and \[build\] are one section"):
        load_config(tmp_path / "both.toml")
