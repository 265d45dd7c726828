"""The small commands: `blip-jax --help`, `convert` (Salesforce .pth -> HF folder transformers loads)
and `caption` (image files -> captions)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from blip_jax.cli import main as cli_main

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tests.hf_fixtures import build_hf  # noqa: E402
from tests.test_salesforce import as_salesforce  # noqa: E402


def test_help_lists_every_command(capsys):
    assert cli_main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("train", "eval", "data", "caption", "convert", "capfilt"):
        assert f"  {command} " in out


def test_convert_salesforce_pth_to_hf_folder(tmp_path, capsys):
    ref, folder = build_hf("BlipForConditionalGeneration", tmp_path, seed=2)
    pth = tmp_path / "model_base_caption.pth"
    torch.save({"model": as_salesforce(ref.state_dict())}, pth)
    out = tmp_path / "converted"
    assert cli_main(["convert", "--from", str(pth), "--class", "BlipForConditionalGeneration", "--out", str(out),
                     "--config", str(folder / "config.json")]) == 0
    assert "0 weights were not in the source" in capsys.readouterr().out
    back = transformers.BlipForConditionalGeneration.from_pretrained(out)
    for name, p in ref.state_dict().items():
        assert torch.equal(p, back.state_dict()[name]), name


@pytest.mark.parametrize("source", ["folder", "hub_id"])
def test_caption_command(tmp_path, capsys, monkeypatch, source):
    """From a local folder plus a vocab.txt, or from a hub id whose snapshot holds both (the
    tokenizer then comes from the checkpoint's own files)."""
    from PIL import Image

    from blip_jax.processing.tokenization import WordPieceTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(c) for c in range(97, 123)] + ["a", "picture", "of"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = WordPieceTokenizer.from_vocab_file(str(tmp_path / "vocab.txt"))
    text = dict(vocab_size=tok.vocab_size, bos_token_id=tok.bos_token_id, sep_token_id=tok.sep_token_id,
                eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)
    _, folder = build_hf("BlipForConditionalGeneration", tmp_path, seed=3, text_overrides=text)
    paths = []
    for i in range(2):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    if source == "folder":
        where = ["--checkpoint", str(folder), "--tokenizer", str(tmp_path / "vocab.txt")]
    else:
        import huggingface_hub

        tok.save_pretrained(folder)
        fetched = []
        monkeypatch.setattr(huggingface_hub, "snapshot_download",
                            lambda repo_id, **kw: fetched.append(repo_id) or str(folder))
        where = ["--checkpoint", "someorg/blip-captioner"]
    assert cli_main(["caption", *where, "--max-length", "8", "--min-length", "2", *paths]) == 0
    if source == "hub_id":
        assert fetched == ["someorg/blip-captioner"] * 2  # the weights, then the tokenizer's files
    lines = [line for line in capsys.readouterr().out.splitlines() if "\t" in line]
    assert [line.split("\t")[0] for line in lines] == paths


@pytest.mark.parametrize("command,config", [("train", "configs/pretrain_tiny.py:smok"),
                                            ("eval", "configs/eval_tiny.py:smoke,x"),
                                            ("capfilt", "configs/capfilt.py:/data/pretrain/web,huge")])
def test_a_mistyped_config_argument_stops_the_job(tmp_path, capsys, command, config):
    """A typo after the colon must not silently run the full-size default config."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    extra = ["--checkpoint", str(tmp_path)] if command == "eval" else []
    with pytest.raises(SystemExit) as e:
        cli_main([command, "--config", os.path.join(root, config), "--workdir", str(tmp_path / "run"), *extra])
    assert e.value.code == 2
    assert "unknown argument" in capsys.readouterr().err and not os.path.exists(tmp_path / "run")


def test_capfilt_stopped_by_sigterm_exits_75(tmp_path, monkeypatch, capsys):
    """SIGTERM during the chunks: the report is not written and the exit code says "stopped early"
    (75, as `blip-jax train`), so `blip-jax pipeline` and SLURM's requeue treat it as not done."""
    import signal

    from blip_jax.capfilt import bootstrap
    from blip_jax.train.preemption import EXIT_PREEMPTED

    config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "capfilt_tiny.py")

    def fake_run_capfilt(run, workdir, cfg_json=None, max_chunks=None, stop=None):
        signal.raise_signal(signal.SIGTERM)  # heard by the command's handler
        assert stop.stop_requested
        return None

    monkeypatch.setattr(bootstrap, "build_run", lambda cfg, workdir: object())
    monkeypatch.setattr(bootstrap, "run_capfilt", fake_run_capfilt)
    assert cli_main(["capfilt", "--config", config, "--workdir", str(tmp_path)]) == EXIT_PREEMPTED
    assert "stopped early (received SIGTERM)" in capsys.readouterr().err
    monkeypatch.setattr(bootstrap, "run_capfilt", lambda *a, **k: None)  # another process's share: not signalled
    assert cli_main(["capfilt", "--config", config, "--workdir", str(tmp_path)]) == 0
