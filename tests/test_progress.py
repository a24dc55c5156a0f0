import os
import subprocess
import sys

import tqdm.auto

from hybridrs._progress import progress_bar

PROBE = "from hybridrs._progress import progress_bar; print(progress_bar(range(3), show=True).disable)"


def test_hidden_when_asked():
    assert progress_bar(range(3), show=False).disable


def _disabled_in_fresh_process(env_value):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    if env_value is not None:
        env["TQDM_DISABLE"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_environment_can_silence_a_shown_bar():
    # tqdm reads TQDM_* when it is imported, hence fresh processes; reproduce.py relies on this to
    # keep progress widgets out of the stored notebooks.
    assert _disabled_in_fresh_process("1") == "True"
    assert _disabled_in_fresh_process(None) == "False"


def test_environment_silences_the_notebook_bar(monkeypatch):
    """tqdm's notebook bar turns a missing ``disable`` into False; the helper must still obey the
    environment (a from-scratch reproduce.py run once stored widgets this way)."""
    import tqdm.notebook

    seen = {}

    class Probe:
        def __init__(self, iterable=None, **kwargs):
            seen.update(kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", Probe)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    progress_bar(range(3), show=True)
    assert seen.get("disable") is True
    monkeypatch.delenv("TQDM_DISABLE")
    seen.clear()
    progress_bar(range(3), show=True)
    assert "disable" not in seen
