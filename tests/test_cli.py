"""`hybridrs certify` / `hybridrs report`: results against the library called directly, order
independence, resume after a torn write, and clear errors (exit 2) on bad input."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hybridrs.certify import frontier
from hybridrs.run.cli import main
from hybridrs.run.config import CertifyConfig
from hybridrs.run.plugins import load_model
from hybridrs.run.records import read_image, read_records
from hybridrs.run.runner import run_certify
from hybridrs.seeds import input_seed
from hybridrs.kernels import UniformKernel
from hybridrs.smoothing import HybridSmooth
from hybridrs.stats import clopper_pearson_lower

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
MODEL = "examples.toy_model:make_model"
BASE = ["--model", MODEL, "--sigma", "0.25", "-n", "300", "--tau", "4.6e-5", "--d-max", "2",
        "--batch-size", "128", "--quiet"]


@pytest.fixture(autouse=True)
def _cwd(monkeypatch):
    monkeypatch.chdir(ROOT)  # the model path is relative to the repository, as in the docs


@pytest.fixture()
def inputs(tmp_path):
    d = tmp_path / "in"
    shutil.copytree(EXAMPLES / "images", d / "images")
    shutil.copy(EXAMPLES / "inputs.jsonl", d / "inputs.jsonl")
    return d / "inputs.jsonl"


def _rows(path):
    with open(path, newline="") as f:
        assert f.readline().startswith("#hybridrs-results 2 {")  # the settings line
        return list(csv.DictReader(f))


def _strip(rows):
    return {r["id"]: {k: v for k, v in r.items() if k != "seconds"} for r in rows}


def test_rows_match_the_library(inputs, tmp_path):
    out = tmp_path / "res.csv"
    assert main(["certify", str(inputs), str(out), *BASE]) == 0
    rows = _rows(out)
    recs = read_records(inputs, load_model(MODEL))
    assert [r["id"] for r in rows] == [r.id for r in recs]
    model = load_model(MODEL)
    kernel = UniformKernel(0.25, model.vocab_size)
    sm = HybridSmooth(model.classify, sigma=0.25, kernel=kernel, batch_size=128, progress=False)
    for rec, row in zip(recs, rows):
        count = sm.count(torch.tensor(rec.tokens), rec.load_image(), 300, seed=input_seed(0, rec.id))
        assert int(row["count"]) == count and int(row["n"]) == 300
        p_a = clopper_pearson_lower(count, 300, 0.01)
        assert float(row["p_a"]) == p_a
        radii = frontier(p_a, kernel, 2, 0.25, 4.6e-5)
        assert [float(row[f"r_{d}"]) for d in range(3)] == list(radii)  # exact: repr round-trips
        ok = radii >= 0
        assert int(row["d_certified"]) == (2 if ok.all() else int(np.argmin(ok)) - 1)
    counts = [int(r["count"]) for r in rows]
    assert min(counts) == 0 and max(counts) > 250  # the example spans both ends


def test_order_independent_and_reproducible(inputs, tmp_path):
    out1, out2 = tmp_path / "a.csv", tmp_path / "b.csv"
    assert main(["certify", str(inputs), str(out1), *BASE]) == 0
    lines = inputs.read_text().splitlines()
    shuffled = inputs.with_name("shuffled.jsonl")
    shuffled.write_text("\n".join(lines[::-1]) + "\n")
    assert main(["certify", str(shuffled), str(out2), *BASE]) == 0
    assert _strip(_rows(out1)) == _strip(_rows(out2))
    out3 = tmp_path / "c.csv"
    assert main(["certify", str(inputs), str(out3), *BASE, "--seed", "1"]) == 0
    assert _strip(_rows(out1)) != _strip(_rows(out3))  # the seed matters


def test_resume_skips_done_and_redoes_torn_line(inputs, tmp_path, capsys):
    out = tmp_path / "res.csv"
    assert main(["certify", str(inputs), str(out), *BASE]) == 0
    full = _rows(out)
    text = out.read_text()
    lines = text.splitlines(keepends=True)
    # mark row 1 so that a recomputation would show, and tear the last line mid-write
    marked = lines[2].rsplit(",", 1)[0] + ",999.000\n"
    torn = "".join([*lines[:2], marked, *lines[3:-1]]) + lines[-1][: len(lines[-1]) // 2]
    out.write_text(torn)
    assert main(["certify", str(inputs), str(out), *BASE]) == 0
    assert "dropped a torn last line" in capsys.readouterr().err
    again = _rows(out)
    assert len(again) == len(full)  # no duplicate, nothing lost
    assert again[0]["seconds"] == "999.000"  # finished rows are not redone
    assert _strip(again) == _strip(full)  # the torn row was redone, identically
    assert out.read_text().endswith("\n")
    # a damaged line that is not the last one is an error, not silently dropped
    bad = out.read_text().splitlines(keepends=True)
    bad[3] = "garbage\n"
    out.write_text("".join(bad))
    before = out.read_bytes()
    assert main(["certify", str(inputs), str(out), *BASE]) == 2
    assert "line 4 is damaged" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_other_settings_refused(inputs, tmp_path, capsys):
    out = tmp_path / "res.csv"
    assert main(["certify", str(inputs), str(out), *BASE]) == 0
    before = out.read_bytes()
    assert main(["certify", str(inputs), str(out), *BASE, "--beta", "0.3"]) == 2
    assert "beta" in capsys.readouterr().err
    assert out.read_bytes() == before


@pytest.mark.parametrize("mutate,args,needle", [
    (lambda d: (d / "images" / "img0.png").write_bytes(b"not a png"), [], "record 1 (id 'ex0')"),
    (lambda d: (d / "images" / "img1.npy").unlink(), [], "img1.npy"),
    (lambda d: d.joinpath("inputs.jsonl").write_text('{"id": "a", "image": "images/img0.png"}\n'), [], "no text"),
    (lambda d: d.joinpath("inputs.jsonl").write_text('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n'),
     ["--sigma", "0"], "duplicate id"),
    (lambda d: d.joinpath("inputs.jsonl").write_text('{"id": "a", "text": "x", "image": [[0.1]]}\n{oops\n'),
     [], "record 2: not valid JSON"),
    (lambda d: d.joinpath("inputs.jsonl").write_text('{"id": "a", "tokens": [1, 9999], "image": [[0.1]]}\n'),
     [], "9999"),
    (lambda d: None, ["--model", "no_such_pkg.mod:make"], "--model"),
    (lambda d: None, ["--model", "examples.toy_model:nothing"], "--model"),
    (lambda d: None, ["--beta", "1.5"], "--beta"),
    (lambda d: None, ["--alpha", "0"], "--alpha"),
    (lambda d: None, ["--threat", "suffix", "--d-max", "3", "--suffix-len", "4"], "--d-max"),
    (lambda d: None, ["--sequential", "--target-d", "5"], "--target-d"),
    (lambda d: None, ["--kernel", "absorbing", "--mask-id", "-1"], "--mask-id"),
])
def test_bad_input_exit_2_and_no_rows(inputs, tmp_path, capsys, mutate, args, needle):
    mutate(inputs.parent)
    out = tmp_path / "res.csv"
    assert main(["certify", str(inputs), str(out), *BASE, *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and "error" in err
    assert not out.exists()


def test_missing_input_file_and_report_errors(tmp_path, capsys):
    assert main(["certify", str(tmp_path / "none.jsonl"), str(tmp_path / "o.csv"), *BASE]) == 2
    assert "none.jsonl" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "none.csv")]) == 2


def test_model_that_breaks_names_the_record(tmp_path, capsys):
    model = tmp_path / "broken.py"
    model.write_text("import torch\n"
                     "class M:\n    vocab_size = 10\n    def __call__(self, t, v):\n"
                     "        return torch.zeros(3)\n"  # wrong batch size
                     "def make():\n    return M()\n")
    data = tmp_path / "in.jsonl"
    data.write_text('{"id": "r1", "tokens": [1, 2]}\n')
    out = tmp_path / "o.csv"
    assert main(["certify", str(data), str(out), "--model", f"{model}:make", "--sigma", "0", "-n", "10",
                 "--quiet"]) == 2
    assert "record 1 (id 'r1')" in capsys.readouterr().err
    assert not out.exists()  # nothing written: no header-only or partial file


def test_threats_and_sequential_columns(inputs, tmp_path):
    out = tmp_path / "suffix.csv"
    assert main(["certify", str(inputs), str(out), *[a for a in BASE if a not in ("--d-max", "2")],
                 "--threat", "suffix", "--suffix-len", "2"]) == 0
    rows = _rows(out)
    # per-d: one estimate per d, stopping at the first d that fails
    assert all(1 <= len(r["stage_counts"].split(";")) <= 2 and "r_2" in r for r in rows)
    assert all(int(r["count"]) == sum(int(c) for c in r["stage_counts"].split(";")) for r in rows)
    out = tmp_path / "shared.csv"
    assert main(["certify", str(inputs), str(out), *[a for a in BASE if a not in ("--d-max", "2")],
                 "--threat", "shared-suffix", "--suffix-len", "2", "--sequential", "--target-eps", "0.1"]) == 0
    rows = _rows(out)
    assert {r["decision"] for r in rows} <= {"certified", "refuted", "undecided"}
    assert all(int(r["n"]) <= 100_000 for r in rows)
    assert any(r["decision"] == "refuted" for r in rows) and any(r["decision"] == "certified" for r in rows)


def test_report_table_and_plot(inputs, tmp_path, capsys):
    out = tmp_path / "res.csv"
    assert main(["certify", str(inputs), str(out), *BASE]) == 0
    assert main(["report", str(out), "--out", str(tmp_path / "rep"), "--radii", "0,0.1,0.3"]) == 0
    assert "certified accuracy" in capsys.readouterr().out
    table = list(csv.DictReader(open(tmp_path / "rep" / "certified_accuracy.csv")))
    rows = _rows(out)
    for t in table:
        d = int(t["d"])
        for eps in ("0", "0.1", "0.3"):
            want = np.mean([r["label"] in ("", "1") and float(r[f"r_{d}"]) >= float(eps) for r in rows])
            assert float(t[eps]) == pytest.approx(want)
    png = (tmp_path / "rep" / "frontier.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_images_png_and_npy(tmp_path):
    from PIL import Image

    arr = (np.arange(12, dtype=np.uint8) * 20).reshape(3, 4)
    Image.fromarray(arr, mode="L").save(tmp_path / "g.png")
    got = read_image(tmp_path / "g.png")
    assert got.shape == (1, 3, 4) and np.allclose(got[0], arr / 255.0)
    rgb = np.stack([arr, arr // 2, arr // 3], axis=-1)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "c.png")
    assert np.allclose(read_image(tmp_path / "c.png"), rgb.transpose(2, 0, 1) / 255.0)
    np.save(tmp_path / "i.npy", np.arange(4))
    with pytest.raises(ValueError, match="floating"):
        read_image(tmp_path / "i.npy")


def test_run_certify_api_and_config_validation(inputs, tmp_path):
    cfg = CertifyConfig(model=MODEL, sigma=0.25, n=200, tau=4.6e-5, d_max=1, batch_size=200)
    summary = run_certify(cfg, inputs, tmp_path / "r.csv", progress=False)
    rows = _rows(tmp_path / "r.csv")
    assert summary["inputs"] == len(rows) == 8
    assert summary["certified_fraction"] == np.mean([int(r["d_certified"]) >= 1 for r in rows])
    with pytest.raises(ValueError, match="--n"):
        CertifyConfig(model=MODEL, n=0).validate()


def test_python_m_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "hybridrs", "report", str(tmp_path / "missing.csv")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "missing.csv" in proc.stderr


def test_absorbing_kernel_and_text_only(inputs, tmp_path):
    from hybridrs.kernels import AbsorbingKernel

    out = tmp_path / "abs.csv"
    assert main(["certify", str(inputs), str(out), *BASE, "--kernel", "absorbing", "--beta", "0.1"]) == 0
    for row in _rows(out):
        radii = frontier(float(row["p_a"]), AbsorbingKernel(0.1, 0), 2, 0.25, 4.6e-5)
        assert [float(row[f"r_{d}"]) for d in range(3)] == list(radii)
    out = tmp_path / "text.csv"
    assert main(["certify", str(inputs), str(out), *BASE, "--sigma", "0"]) == 0
    rows = _rows(out)
    assert all(float(r[f"r_{d}"]) in (0.0, float("-inf")) for r in rows for d in range(3))


def test_second_writer_is_refused(inputs, tmp_path):
    from hybridrs.run.config import InputError
    from hybridrs.run.results import ResultsFile, columns

    out = tmp_path / "res.csv"
    assert main(["certify", str(inputs), str(out), *BASE]) == 0
    first = ResultsFile(out, columns(2)).open()
    with pytest.raises(InputError, match="another run"):
        ResultsFile(out, columns(2)).open()
    first.close()
    ResultsFile(out, columns(2)).open().close()  # free again once the first writer is done
    assert not out.with_name("res.csv.lock").exists()  # the lock file goes with its holder


def test_model_fingerprint_follows_what_the_model_computes():
    import types

    from hybridrs.run.plugins import model_fingerprint

    mod = types.ModuleType("m")  # no source file: only the weights tell models apart
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    fa = model_fingerprint(a, a, mod)
    assert fa.startswith("weights:") and fa == model_fingerprint(a, a, mod)
    assert fa != model_fingerprint(b, b, mod)
    b.load_state_dict(a.state_dict())
    assert fa == model_fingerprint(b, b, mod)  # same weights, same model
    assert model_fingerprint(a, a, mod, "ckpt-1") == model_fingerprint(b, b, mod, lambda: "ckpt-1")
    assert model_fingerprint(a, a, mod, "ckpt-1") != model_fingerprint(a, a, mod, "ckpt-2")
    src = model_fingerprint(object(), object(), __import__("examples.toy_model", fromlist=["x"]))
    assert src.startswith("source:")
