"""`hybridrs certify` / `report` against bad and hostile inputs (issue 10).

The table-driven test builds each bad input in tmp_path and asserts: exit status 2, one line on
stderr that names the record, option or path (no traceback), and the SHA-256 of every file under
tmp_path unchanged (no file created, truncated or removed).  The cases that must write something
(a model failing after some rows, a full disk mid-run, a torn last line) have their own tests.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hybridrs.run import results as results_mod
from hybridrs.run.cli import main
from hybridrs.run.config import InputError
from hybridrs.run.plugins import load_model

ROOT = Path(__file__).resolve().parents[1]
MODEL = "examples.toy_model:make_model"
FAST = ["--sigma", "0.25", "-n", "200", "--tau", "4.6e-5", "--d-max", "2", "--batch-size", "100", "--quiet"]

HOSTILE = '''
import sys
import torch
from examples.toy_model import ToyModel


class Late(ToyModel):
    """Fails on its `after`-th call (1 probe call, then 2 calls of 100 per record with FAST)."""
    def __init__(self, after, how):
        super().__init__()
        self.calls, self.after, self.how = 0, after, how

    def __call__(self, tokens, images):
        self.calls += 1
        if self.calls >= self.after:
            if self.how == "exit":
                sys.exit(0)
            if self.how == "interrupt":
                raise KeyboardInterrupt
            if self.how == "sigterm":
                import os, signal
                os.kill(os.getpid(), signal.SIGTERM)
            raise KeyError("no such feature")
        return super().__call__(tokens, images)


def exits(device="cpu"):
    sys.exit(0)


def raises(device="cpu"):
    raise KeyError("weights")


def keyerror_now(device="cpu"):
    return Late(1, "keyerror")


def exit_now(device="cpu"):
    return Late(1, "exit")


def keyerror_later(device="cpu"):
    return Late(6, "keyerror")   # probe + record 1 (2 calls) + record 2 (2 calls): fails in record 3


def exit_later(device="cpu"):
    return Late(6, "exit")


class BadAttribute(ToyModel):
    @property
    def vocab_size(self):
        raise KeyError("vocab")


def bad_attribute(device="cpu"):
    return BadAttribute()


class MetaModule(torch.nn.Module):
    vocab_size = 512

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.empty(3, device="meta"))

    def forward(self, tokens, images):
        return torch.zeros(len(tokens), dtype=torch.long)


def meta_module(device="cpu"):
    return MetaModule()


def interrupt_later(device="cpu"):
    import os
    return Late(int(os.environ.get("HOSTILE_AFTER", 6)), "interrupt")


def sigterm_later(device="cpu"):
    import os
    return Late(int(os.environ.get("HOSTILE_AFTER", 6)), "sigterm")


def no_device():
    return ToyModel()


class BadEncoder(ToyModel):
    def encode(self, text):
        return [10 ** 6] if "zzz" in text else super().encode(text)


def bad_encoder(device="cpu"):
    return BadEncoder()


class Fingerprinted(ToyModel):
    fingerprint = "checkpoint-A"


class Fingerprinted2(ToyModel):
    fingerprint = "checkpoint-B"


def fp_a(device="cpu"):
    return Fingerprinted()


def fp_b(device="cpu"):
    return Fingerprinted2()
'''


@pytest.fixture(autouse=True)
def _cwd(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)


@pytest.fixture()
def ws(tmp_path):
    """A workspace: in/ (the example inputs and images), hostile.py (misbehaving models)."""
    d = tmp_path / "in"
    shutil.copytree(ROOT / "examples" / "images", d / "images")
    shutil.copy(ROOT / "examples" / "inputs.jsonl", d / "inputs.jsonl")
    (tmp_path / "hostile.py").write_text(HOSTILE)
    return tmp_path


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink()
                                       else "link:" + os.readlink(p) if p.is_symlink() else "dir")
            for p in sorted(root.rglob("*")) if "__pycache__" not in p.parts}


def _certify(ws, *args, inputs=None, out=None, model=MODEL):
    return ["certify", str(inputs or ws / "in" / "inputs.jsonl"), str(out or ws / "res.csv"), "--model", model,
            *FAST, *args]


def _jsonl(ws, *objs, raw: bytes | None = None, name="bad.jsonl") -> Path:
    p = ws / "in" / name
    p.write_bytes(raw if raw is not None else "".join(json.dumps(o) + "\n" for o in objs).encode())
    return p


def _done(ws, **kw):
    """A finished results file (for the resume cases)."""
    assert main(_certify(ws, **kw)) == 0
    return ws / "res.csv"


def _model(ws, name):
    return f"{ws / 'hostile.py'}:{name}"


def _dup_row(ws):
    out = _done(ws)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines + [lines[2]]))
    return _certify(ws)


def _unreadable_last_line(ws):
    out = _done(ws)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:-1] + ["ex7,1,l0,200,not-a-row\n"]))
    return _certify(ws)


def _record_changed(ws):
    _done(ws)
    p = ws / "in" / "inputs.jsonl"
    p.write_text(p.read_text().replace("build a bomb", "build a boat"))
    return _certify(ws)


def _image_changed(ws):
    _done(ws)
    np.save(ws / "in" / "images" / "img3.npy", np.zeros((3, 8, 8), dtype=np.float32))
    return _certify(ws)


def _settings_line_removed(ws):
    out = _done(ws)
    out.write_text("".join(out.read_text().splitlines(keepends=True)[1:]))
    return _certify(ws, "-n", "300")


def _other_model(ws):
    _done(ws, model=_model(ws, "fp_a"))
    return _certify(ws, model=_model(ws, "fp_b"))


def _symlink_out(ws):
    os.symlink(ws / "in", ws / "link")
    return _certify(ws, out=ws / "link" / "inputs.jsonl")


def _outside_image(ws, path):
    return _certify(ws, "--sigma", "0.25", inputs=_jsonl(ws, {"id": "a", "text": "x", "image": path}))


def _symlinked_image(ws):
    secret = ws / "secret"
    secret.mkdir()
    np.save(secret / "s.npy", np.ones((1, 2, 2), dtype=np.float32))
    os.symlink(secret / "s.npy", ws / "in" / "images" / "s.npy")
    return _outside_image(ws, "images/s.npy")


def _symlinked_folder(ws):
    secret = ws / "secret"
    secret.mkdir()
    np.save(secret / "s.npy", np.ones((1, 2, 2), dtype=np.float32))
    os.symlink(secret, ws / "in" / "sub")
    return _outside_image(ws, "sub/s.npy")


def _nested(ws):
    return _certify(ws, inputs=_jsonl(ws, raw=b'{"id": "a", "text": "x", "image": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"))


def _image_root_is_file(ws):
    return _certify(ws, "--image-root", str(ws / "hostile.py"))


def _report_out_is_file(ws):
    _done(ws)
    return ["report", str(ws / "res.csv"), "--out", str(ws / "hostile.py")]


def _report_dup(ws):
    out = _done(ws)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines + [lines[3]]))
    return ["report", str(out), "--out", str(ws / "rep")]


def _report_not_ours(ws):
    return ["report", str(ws / "in" / "inputs.jsonl"), "--out", str(ws / "rep")]


CASES = [
    # --- data loss or mixed experiments ------------------------------------------------------------
    ("output: existing file without trailing newline",
     lambda ws: (ws.joinpath("config.json").write_text('{"a": 1}'), _certify(ws, out=ws / "config.json"))[1],
     "not a hybridrs results file"),
    ("output: the input itself", lambda ws: _certify(ws, out=ws / "in" / "inputs.jsonl"), "the output is the input file"),
    ("output: the input through a symlinked folder", _symlink_out, "the output is the input file"),
    ("output: an empty file", lambda ws: (ws.joinpath("e.csv").write_text(""), _certify(ws, out=ws / "e.csv"))[1],
     "empty file"),
    ("output: settings line removed, rerun with other -n", _settings_line_removed, "not a hybridrs results file"),
    ("resume: other -n", lambda ws: (_done(ws), _certify(ws, "-n", "300"))[1], "n: 200 -> 300"),
    ("resume: other model (fingerprint)", _other_model, "--model: the model computes something else"),
    ("resume: duplicated row", _dup_row, "duplicate id 'ex0'"),
    ("resume: complete but unreadable last line", _unreadable_last_line, "line 10 is damaged"),
    ("resume: record text changed", _record_changed, "record 4 (id 'ex3'): its content"),
    ("resume: image file changed", _image_changed, "record 4 (id 'ex3'): its content"),
    # --- tracebacks and wrong answers ----------------------------------------------------------------
    ("input: non-UTF-8 line", lambda ws: _certify(ws, inputs=_jsonl(
        ws, raw=b'{"id": "a", "text": "x", "image": [[0.1]]}\n{"id": "b", "text": "\xff\xfe"}\n')),
     "record 2: not UTF-8"),
    ("input: deeply nested JSON", _nested, "record 1: JSON nested too deeply"),
    ("input: NaN label", lambda ws: _certify(ws, inputs=_jsonl(ws, raw=b'{"id": "a", "text": "x", "image": [[0.1]], "label": NaN}\n')),
     "record 1: NaN is not a JSON number"),
    ("input: label 2", lambda ws: _certify(ws, inputs=_jsonl(ws, {"id": "a", "text": "x", "image": [[0.1]], "label": 2})),
     "record 1 (id 'a'): 'label' must be the number 0 or 1"),
    ("input: label '1' (a string)", lambda ws: _certify(ws, inputs=_jsonl(ws, {"id": "a", "text": "x", "image": [[0.1]], "label": "1"})),
     "'label' must be the number 0 or 1"),
    ("input: label true", lambda ws: _certify(ws, inputs=_jsonl(ws, {"id": "a", "text": "x", "image": [[0.1]], "label": True})),
     "'label' must be the number 0 or 1"),
    ("input: id with a tab", lambda ws: _certify(ws, inputs=_jsonl(ws, {"id": "a\tb", "text": "x", "image": [[0.1]]})),
     "record 1: 'id' must not contain control characters"),
    ("input: float token id", lambda ws: _certify(ws, inputs=_jsonl(ws, {"id": "a", "tokens": [1.5], "image": [[0.1]]})),
     "record 1 (id 'a'): 'tokens'"),
    ("input: huge token id", lambda ws: _certify(ws, inputs=_jsonl(ws, {"id": "a", "tokens": [10 ** 30], "image": [[0.1]]})),
     "record 1 (id 'a'): 'tokens' holds token id"),
    ("input: bad token id from the encoder (record 3)", lambda ws: _certify(ws, model=_model(ws, "bad_encoder"), inputs=_jsonl(
        ws, *[{"id": f"r{i}", "text": t, "image": [[0.1]]} for i, t in enumerate(["a", "b", "zzz", "c"])])),
     "record 3 (id 'r2'): the model's encode(text) holds token id 1000000"),
    ("output: a folder", lambda ws: _certify(ws, out=ws / "in"), "the output is a folder"),
    ("output: under a file", lambda ws: _certify(ws, out=ws / "hostile.py" / "res.csv"), "is a file, not a folder"),
    ("output: a device", lambda ws: _certify(ws, out=Path("/dev/null")), "is not a regular file"),
    ("model: factory raises KeyError", lambda ws: _certify(ws, model=_model(ws, "raises")), "--model: "),
    ("model: factory calls sys.exit(0)", lambda ws: _certify(ws, model=_model(ws, "exits")), "called sys.exit(0)"),
    ("model: raises KeyError on its first call", lambda ws: _certify(ws, model=_model(ws, "keyerror_now")),
     "record 1 (id 'ex0'): the model raised KeyError"),
    ("model: calls sys.exit(0) on its first call", lambda ws: _certify(ws, model=_model(ws, "exit_now")),
     "record 1 (id 'ex0'): the model called sys.exit(0)"),
    ("model: an attribute that raises", lambda ws: _certify(ws, model=_model(ws, "bad_attribute")),
     "--model: reading the model's vocab_size raised KeyError"),
    ("model: weights that cannot be read (meta tensors)", lambda ws: _certify(ws, model=_model(ws, "meta_module")),
     "--model: fingerprinting the model raised"),
    ("model: no such module", lambda ws: _certify(ws, model="no_such_pkg.mod:make"), "--model: importing 'no_such_pkg.mod'"),
    ("--device tpu", lambda ws: _certify(ws, "--device", "tpu"), "--device: "),
    ("--device cuda:99", lambda ws: _certify(ws, "--device", "cuda:99"), "--device: "),
    ("--device mps", lambda ws: _certify(ws, "--device", "mps"), "--device: "),
    ("--filler outside the alphabet", lambda ws: _certify(ws, "--threat", "shared-suffix", "--suffix-len", "2",
                                                          "--d-max", "2", "--filler", "9999"), "--filler: token id 9999"),
    ("-n 10**12", lambda ws: _certify(ws, "-n", str(10 ** 12)), "--n: "),
    ("-n 2**64", lambda ws: _certify(ws, "-n", str(2 ** 64)), "--n: "),
    ("--d-max 100000", lambda ws: _certify(ws, "--d-max", "100000"), "--d-max: "),
    ("--max-n 10**12", lambda ws: _certify(ws, "--sequential", "--max-n", str(10 ** 12)), "--max-n: "),
    ("--seed 2**63", lambda ws: _certify(ws, "--seed", str(2 ** 63)), "--seed: "),
    ("--batch-size 10**9", lambda ws: _certify(ws, "--batch-size", str(10 ** 9)), "--batch-size: "),
    ("--image-root is a file", _image_root_is_file, "--image-root: "),
    ("report --out onto an existing file", _report_out_is_file, "--out: "),
    ("report: duplicated row", _report_dup, "duplicate id 'ex1'"),
    ("report: not a results file", _report_not_ours, "not a hybridrs results file"),
    ("report --radii nan", lambda ws: (_done(ws), ["report", str(ws / "res.csv"), "--radii", "nan"])[1], "--radii: "),
    # --- security ------------------------------------------------------------------------------------
    ("image: ../ path", lambda ws: (np.save(ws / "s.npy", np.ones((1, 2, 2), np.float32)), _outside_image(ws, "../s.npy"))[1],
     "record 1 (id 'a'): image path"),
    ("image: absolute path", lambda ws: _outside_image(ws, str(ROOT / "examples" / "images" / "img1.npy")), "leads outside the image root"),
    ("image: symlink to a file outside", _symlinked_image, "leads outside the image root"),
    ("image: path through a symlinked folder", _symlinked_folder, "leads outside the image root"),
]


@pytest.mark.parametrize("name,setup,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exit_2_one_message_files_untouched(ws, capsys, name, setup, needle):
    argv = setup(ws)
    capsys.readouterr()
    before = _snapshot(ws)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err, err
    assert err.startswith(f"hybridrs {argv[0]}: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert _snapshot(ws) == before


def test_outside_paths_reveal_nothing(ws, capsys):
    """The message for an image outside the root is the same whether the file exists or not."""
    np.save(ws / "exists.npy", np.ones((1, 2, 2), np.float32))
    msgs = []
    for name in ("exists.npy", "missing.npy"):
        assert main(_outside_image(ws, f"../{name}")) == 2
        msgs.append(capsys.readouterr().err.replace(name, "X"))
    assert msgs[0] == msgs[1]


def test_image_root_option_widens_and_confines(ws, capsys):
    np.save(ws / "outside.npy", np.full((1, 2, 2), 0.5, np.float32))
    argv = _outside_image(ws, "../outside.npy")
    assert main(argv) == 2
    assert main([*argv, "--image-root", str(ws)]) == 0  # an explicit, wider root allows it


def test_two_runs_on_a_new_output_file(ws, capsys):
    """The lock is taken before the results file exists: a second run is refused."""
    out = ws / "res.csv"
    holder = results_mod.ResultsFile(out, results_mod.columns(2), {}).open()
    try:
        assert not out.exists()
        before = _snapshot(ws)
        assert main(_certify(ws)) == 2
        assert "being written by another run" in capsys.readouterr().err
        assert _snapshot(ws) == before and not out.exists()
    finally:
        holder.close()
    assert main(_certify(ws)) == 0  # free again


def test_unwritable_output_found_before_certifying(ws, capsys, monkeypatch):
    """Read-only results file / folder (simulated: the tests may run as root) and a full disk are
    found before the first input is certified."""
    out = _done(ws)
    calls = []
    from hybridrs.run import runner

    real = runner.Certifier.__call__
    monkeypatch.setattr(runner.Certifier, "__call__", lambda self, *a: calls.append(1) or real(self, *a))
    monkeypatch.setattr(results_mod.os, "access", lambda p, mode: False)
    p = ws / "in" / "inputs.jsonl"
    p.write_text(p.read_text() + '{"id": "new", "text": "x", "image": "images/img0.png"}\n')
    before = _snapshot(ws)
    assert main(_certify(ws)) == 2
    assert "res.csv': the results file is not writable" in capsys.readouterr().err
    monkeypatch.undo()
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(runner.Certifier, "__call__", lambda self, *a: calls.append(1) or real(self, *a))
    real_open = os.open
    monkeypatch.setattr(results_mod.os, "open", lambda path, *a: (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
                        if str(path).endswith(".lock") else real_open(path, *a))
    assert main(_certify(ws, out=ws / "new.csv")) == 2
    assert "new.csv': cannot write in its folder (Permission denied)" in capsys.readouterr().err
    monkeypatch.setattr(results_mod.os, "open", real_open)
    monkeypatch.setattr(results_mod.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 ** 9, 10 ** 9, 0))
    assert main(_certify(ws)) == 2
    assert "only 0 bytes free" in capsys.readouterr().err
    assert calls == [] and _snapshot(ws) == before
    assert out.exists()


def test_full_disk_mid_run_keeps_complete_rows(ws, capsys, monkeypatch):
    real_write = os.write
    n = {"rows": 0}

    def write(fd, data):
        if data.count(b"\n") == 1 and not data.startswith(b"#"):
            n["rows"] += 1
            if n["rows"] == 3:
                real_write(fd, data[:10])  # a partial write, then the disk is full
                raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(results_mod.os, "write", write)
    assert main(_certify(ws)) == 2
    err = capsys.readouterr().err
    assert "res.csv': cannot write a row (No space left on device)" in err and err.count("\n") == 1
    text = (ws / "res.csv").read_text()
    assert text.endswith("\n") and len(text.splitlines()) == 2 + 2  # settings, header, two complete rows
    monkeypatch.undo()
    monkeypatch.chdir(ROOT)
    assert main(_certify(ws)) == 0  # resumes
    assert len((ws / "res.csv").read_text().splitlines()) == 2 + 8


@pytest.mark.parametrize("factory,needle", [("keyerror_later", "raised KeyError: 'no such feature'"),
                                            ("exit_later", "called sys.exit(0)")])
def test_model_failing_after_some_rows(ws, capsys, factory, needle):
    out = ws / "res.csv"
    assert main(_certify(ws, model=_model(ws, factory))) == 2
    err = capsys.readouterr().err
    assert "record 3 (id 'ex2'): certifying it" in err and needle in err and err.count("\n") == 1
    lines = out.read_text().splitlines()
    assert len(lines) == 2 + 2 and out.read_text().endswith("\n")  # rows of records 1 and 2, complete
    assert not out.with_name("res.csv.lock").exists()


@pytest.mark.parametrize("factory,code,word", [("interrupt_later", 130, "interrupted"),
                                                ("sigterm_later", 143, "terminated")])
def test_interrupted_run_keeps_complete_rows_and_resumes(ws, capsys, monkeypatch, factory, code, word):
    out = ws / "res.csv"
    assert main(_certify(ws, model=_model(ws, factory))) == code
    err = capsys.readouterr().err
    assert f"hybridrs certify: {word}; the rows written so far are complete" in err and err.count("\n") == 1
    assert len(out.read_text().splitlines()) == 2 + 2 and out.read_text().endswith("\n")
    assert not out.with_name("res.csv.lock").exists()
    monkeypatch.setenv("HOSTILE_AFTER", str(10 ** 9))  # the same model (same source), no longer stopped
    full = ws / "full.csv"
    assert main(_certify(ws, out=full, model=_model(ws, factory))) == 0
    assert main(_certify(ws, model=_model(ws, factory))) == 0  # the resumed file equals an uninterrupted run (but for seconds)
    def strip(p):
        return [line.rsplit(",", 1)[0] for line in p.read_text().splitlines()]
    assert strip(out) == strip(full)


def test_torn_last_line_dropped_with_a_note(ws, capsys):
    out = _done(ws)
    full = out.read_text()
    out.write_text(full[:-20])
    assert main(_certify(ws)) == 0
    assert "dropped a torn last line" in capsys.readouterr().err
    assert out.read_text().splitlines()[:-1] == full.splitlines()[:-1]
    assert out.read_text().splitlines()[-1].split(",")[:-1] == full.splitlines()[-1].split(",")[:-1]


def test_labels_any_numeric_spelling_and_report_dtypes(ws, capsys):
    from hybridrs.run.report import read_results

    inputs = _jsonl(ws, *[{"id": f"r{i}", "text": "steal the bomb", "image": "images/img1.npy", "label": lab}
                          for i, lab in enumerate([1, 1.0, 1e0, 0.0, 0])], name="labels.jsonl")
    assert main(_certify(ws, inputs=inputs)) == 0
    df, settings = read_results(ws / "res.csv")
    assert list(df["label"]) == [1, 1, 1, 0, 0] and str(df["label"].dtype) == "Int8"
    assert df["n"].dtype == np.int64 and df["r_0"].dtype == np.float64 and df["count"].dtype == np.int64
    assert settings["n"] == 200 and settings["sigma"] == 0.25
    assert main(["report", str(ws / "res.csv"), "--out", str(ws / "rep"), "--radii", "0"]) == 0
    table = list(csv.DictReader(open(ws / "rep" / "certified_accuracy.csv")))
    assert float(table[0]["0"]) == 3 / 5  # the three label-1 rows, all certified at d = 0


def test_formula_ids_are_quoted_and_resume(ws, capsys):
    ids = ["=cmd|' /C calc'!A0", "+1", "-2", "@SUM(1)", "'=x", "plain", 7]
    inputs = _jsonl(ws, *[{"id": i, "tokens": [10, 11], "image": [[[0.1]]]} for i in ids], name="ids.jsonl")
    assert main(_certify(ws, inputs=inputs)) == 0
    with open(ws / "res.csv", newline="") as f:
        f.readline()
        written = [r["id"] for r in csv.DictReader(f)]
    assert written == ["'=cmd|' /C calc'!A0", "'+1", "'-2", "'@SUM(1)", "''=x", "plain", "7"]
    before = (ws / "res.csv").read_bytes()
    assert main(_certify(ws, inputs=inputs)) == 0  # resume recognises the quoted ids
    assert (ws / "res.csv").read_bytes() == before


def test_device_without_factory_parameter(tmp_path, monkeypatch):
    """A factory without a device parameter whose model cannot be moved: a --device error (not --model)."""
    (tmp_path / "nodevice_model.py").write_text("from examples.toy_model import ToyModel\n\ndef make():\n    return ToyModel()\n")
    with pytest.raises(InputError, match="^--device: 'cuda' asked, but the factory"):
        load_model(f"{tmp_path / 'nodevice_model.py'}:make", "cuda")


def test_working_folder_does_not_shadow_installed_packages(tmp_path):
    """A PIL/ folder in the working directory is not imported (neither by `python -m hybridrs` nor
    by the console script's code path), while a model module there still is."""
    work = tmp_path / "work"
    (work / "PIL").mkdir(parents=True)
    (work / "PIL" / "__init__.py").write_text(f"open({str(work / 'PWNED')!r}, 'w').write('x')\n")
    (work / "mymodel.py").write_text("from examples.toy_model import make_model\n")
    shutil.copytree(ROOT / "examples" / "images", work / "images")
    shutil.copy(ROOT / "examples" / "inputs.jsonl", work / "inputs.jsonl")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    script = tmp_path / "bin" / "hybridrs"  # what the console script does (its folder is sys.path[0])
    script.parent.mkdir()
    script.write_text("import sys\nfrom hybridrs.run.cli import main\nsys.exit(main())\n")
    for launcher in ([sys.executable, "-m", "hybridrs"], [sys.executable, str(script)]):
        out = work / "res.csv"
        proc = subprocess.run([*launcher, "certify", "inputs.jsonl", str(out), "--model", "mymodel:make_model", *FAST],
                              cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert not (work / "PWNED").exists()
        out.unlink()


def test_report_title_names_every_parameter(ws):
    from hybridrs.run.report import _title, read_results

    out = _done(ws)
    df, settings = read_results(out)
    title = _title(out, len(df), settings)
    for part in ("σ = 0.25", "β = 0.25", "τ = 4.6e-05", "α = 0.01", "n = 200", "l0 threat", "uniform kernel", "8 inputs"):
        assert part in title, title
