"""The results file of ``hybridrs certify``: self-describing, locked, append-only, resumable.

Layout (UTF-8, ``\\n`` line ends)::

    #hybridrs-results 2 {"alpha": 0.01, "beta": 0.25, ..., "model_fingerprint": "weights:..."}
    id,label,threat,n,count,p_a,r_0,...,r_D,d_certified,decision,stage_counts,stage_p_a,fingerprint,seconds
    ex0,0,l0,10000,0,0.0,-inf,...

The first line holds every setting that determines the rows (JSON, sorted keys), so a file can
never be resumed with other settings and never lose them; read it with
``pandas.read_csv(path, skiprows=1)`` or :func:`hybridrs.run.report.read_results`.  ``fingerprint``
keys each row on the record's content (token ids, image pixels, label) and the settings
(:func:`row_fingerprint`).

Guarantees: a file that does not start with ``#hybridrs-results`` is never written to (not even
truncated); one writer per file, enforced with a lock on ``<results>.lock`` taken before the file
exists (the lock file is removed when the run ends); a new file appears atomically with its
header; each row is one ``write`` followed by ``fsync``; a write that fails (full disk) is undone
(the file is cut back to its last complete row).  On resume, only a last line without its newline
(a write cut by a crash) is dropped — with a note — and redone; any other unreadable line, a
duplicated id, a row whose record changed, or other settings stop the run with the file untouched.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import shutil
import sys
from pathlib import Path

from hybridrs.run.config import FORMAT, InputError

MAGIC = "#hybridrs-results"
#: Leading columns; r_0..r_D and then TAIL_COLUMNS follow.
COLUMNS = ["id", "label", "threat", "n", "count", "p_a"]
TAIL_COLUMNS = ["d_certified", "decision", "stage_counts", "stage_p_a", "fingerprint", "seconds"]
#: Settings stored for information only: a resume may change them (the model is identified by its
#: fingerprint, not by its import path).
INFORMATIONAL = ("model",)
#: Free space needed in the output's folder before the first input is certified.
MIN_FREE_BYTES = 1 << 20


def columns(d_max: int) -> list[str]:
    """Header of a results file with text budgets 0..d_max."""
    return COLUMNS + [f"r_{d}" for d in range(d_max + 1)] + TAIL_COLUMNS


def settings_digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def row_fingerprint(settings: dict, record_digest: str) -> str:
    """Key of one row: the record's content digest and the settings (model fingerprint included)."""
    return hashlib.sha256(f"{settings_digest(settings)}\0{record_digest}".encode()).hexdigest()[:32]


def _p(path: Path) -> str:
    return repr(str(path))


def check_output_path(path, input_path=None) -> None:
    """Cheap checks before anything is computed: ``path`` must not be a folder, the input itself,
    a device, under a file, or an existing file that is not a hybridrs results file."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise InputError(f"{_p(path)}: the output must be a file name, not a folder")
    if path.is_dir():
        raise InputError(f"{_p(path)}: the output is a folder; give a file name such as results.csv")
    parent = path.parent
    for anc in [parent, *parent.parents]:
        if anc.exists():
            if not anc.is_dir():
                raise InputError(f"{_p(path)}: {_p(anc)} is a file, not a folder")
            break
    if input_path is not None and path.exists():
        try:
            same = os.path.samefile(path, input_path)
        except OSError:
            same = False
        if same:
            raise InputError(f"{_p(path)}: the output is the input file")
    if path.exists() or path.is_symlink():
        if not path.is_file():
            raise InputError(f"{_p(path)}: exists and is not a regular file; refusing to write to it")
        head = _first_line(path)
        if not head.startswith(MAGIC.encode()):
            what = "an empty file" if path.stat().st_size == 0 else "not a hybridrs results file"
            old = b"id,label,threat" in head
            raise InputError(f"{_p(path)}: exists and is {what}"
                             + (" (written by an older hybridrs, format 1)" if old else "")
                             + "; refusing to touch it, give a new output file")


def _first_line(path: Path, limit: int = 1 << 20) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(limit).split(b"\n", 1)[0]
    except OSError as exc:
        raise InputError(f"{_p(path)}: cannot read: {exc.strerror or exc}") from None


def parse(path, *, expect_columns: list[str] | None = None):
    """Read a results file: ``(settings, header, rows, cut)`` where rows are ``(line, dict)`` and
    ``cut`` is the byte offset of a torn last line (None when the file ends with a newline).

    Raises InputError for a file that is not a results file, a damaged complete line or a
    duplicated id (with its line number).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{_p(path)}: cannot read: {exc.strerror or exc}") from None
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    cut = None if tail == b"" else len(data) - len(tail)
    if len(complete) < 2 or not complete[0].startswith(MAGIC.encode() + b" "):
        if data.startswith(MAGIC.encode()) and len(complete) < 2:
            raise InputError(f"{_p(path)}: the results file's header is incomplete; give a new output file")
        raise InputError(f"{_p(path)}: not a hybridrs results file (no '{MAGIC}' first line)")
    try:
        version, blob = complete[0].decode("utf-8")[len(MAGIC) + 1:].split(" ", 1)
        settings = json.loads(blob)
        if int(version) != FORMAT or not isinstance(settings, dict):
            raise ValueError(version)
    except (UnicodeDecodeError, ValueError):
        raise InputError(f"{_p(path)}: line 1: unreadable settings, or a format other than {FORMAT}") from None
    header = _fields(complete[1])
    if header is None or "id" not in header or "fingerprint" not in header:
        raise InputError(f"{_p(path)}: line 2: not a results header")
    if expect_columns is not None and header != expect_columns:
        raise InputError(f"{_p(path)}: has columns {header!r}, expected {expect_columns!r} (other d_max?); "
                         "use another output file")
    rows, seen = [], {}
    for i, raw in enumerate(complete[2:], start=3):
        fields = _fields(raw)
        if fields is None or len(fields) != len(header) or not _row_ok(dict(zip(header, fields))):
            raise InputError(f"{_p(path)}: line {i} is damaged (a complete line, not a torn write); "
                             "fix or move the file")
        row = dict(zip(header, fields))
        if row["id"] in seen:
            raise InputError(f"{_p(path)}: line {i}: duplicate id {row['id']!r} (first on line {seen[row['id']]})")
        seen[row["id"]] = i
        rows.append((i, row))
    return settings, header, rows, cut


def _fields(raw: bytes):
    try:
        out = next(csv.reader([raw.decode("utf-8")], strict=True))
    except (UnicodeDecodeError, StopIteration, csv.Error):
        return None
    return out


def _row_ok(row: dict) -> bool:
    try:
        int(row["n"])
        int(row["count"])
        float(row["p_a"])
        int(row["d_certified"])
        float(row["seconds"])
        for c, val in row.items():
            if c.startswith("r_"):
                float(val)
    except (ValueError, KeyError):
        return False
    return bool(row["id"]) and row.get("label", "") in ("", "0", "1") and len(row["fingerprint"]) == 32


class ResultsFile:
    """Append-only CSV of certificates (module docstring).  Use as::

        results = ResultsFile(path, columns, settings)   # reads nothing, writes nothing
        results.open()    # lock, writability and free-space checks, read the finished rows
        results.done      # {csv-safe id: row}
        results.append(row) ...
        results.close()   # or ``with results:``
    """

    def __init__(self, path, cols: list[str], settings: dict | None = None):
        self.path = Path(path)
        self.columns = list(cols)
        self.settings = None if settings is None else json.loads(json.dumps(settings, sort_keys=True))
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.done: dict[str, dict] = {}
        self.lines: dict[str, int] = {}
        self._cut = None
        self._lock_fd = None
        self._fd = None

    # -- opening --------------------------------------------------------------------------------
    def open(self) -> "ResultsFile":
        check_output_path(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{_p(self.path)}: cannot create its folder: {exc.strerror or exc}") from None
        self._take_lock()
        try:
            if self.path.exists():
                if not os.access(self.path, os.W_OK):
                    raise InputError(f"{_p(self.path)}: the results file is not writable")
                self._load()
            free = shutil.disk_usage(self.path.parent).free
            if free < MIN_FREE_BYTES:
                raise InputError(f"{_p(self.path)}: only {free} bytes free on its disk")
        except BaseException:
            self.close()
            raise
        return self

    def _take_lock(self) -> None:
        """One writer per results file, also before the file exists (lock file, see module doc)."""
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise InputError(f"{_p(self.path)}: cannot write in its folder ({exc.strerror or exc})") from None
            try:
                import fcntl
            except ImportError:  # not POSIX: no guard
                self._lock_fd = fd
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise InputError(f"{_p(self.path)}: being written by another run (lock {_p(self.lock_path)}); "
                                 "wait for it or use another output file") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._lock_fd = fd
                return
            os.close(fd)  # the previous holder removed it meanwhile: lock the new one

    def _load(self) -> None:
        settings, header, rows, cut = parse(self.path, expect_columns=None)
        keys = [] if self.settings is None else sorted(
            k for k in set(settings) | set(self.settings)
            if settings.get(k) != self.settings.get(k) and k not in INFORMATIONAL)
        if keys:
            detail = ", ".join(f"{k}: {settings.get(k)!r} -> {self.settings.get(k)!r}" for k in keys)
            who = "--model: the model computes something else than" if keys == ["model_fingerprint"] else \
                f"{_p(self.path)}: other settings than those of"
            raise InputError(f"{who} the existing results ({detail}); use another output file or the original "
                             "settings and model")
        if header != self.columns:
            raise InputError(f"{_p(self.path)}: has columns {header!r}, expected {self.columns!r}; "
                             "use another output file")
        for line, row in rows:
            self.done[row["id"]] = row
            self.lines[row["id"]] = line
        self._cut = cut

    # -- writing --------------------------------------------------------------------------------
    def _start(self) -> None:
        """First append: cut a torn last line, or create the file atomically with its header."""
        if self.path.exists():
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            if self._cut is not None:
                size = os.fstat(fd).st_size
                os.ftruncate(fd, self._cut)
                os.fsync(fd)
                print(f"hybridrs certify: note: {_p(self.path)}: dropped a torn last line ({size - self._cut} "
                      "bytes, a write cut by a crash); its input is redone", file=sys.stderr)
                self._cut = None
            self._fd = fd
            return
        head = (f"{MAGIC} {FORMAT} {json.dumps(self.settings or {}, sort_keys=True)}\n"
                + _csv_line(self.columns)).encode("utf-8")
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(head)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, self.path)  # atomic, and never replaces an existing file
        except FileExistsError:
            raise InputError(f"{_p(self.path)}: appeared during the run (written by something else); "
                             "refusing to touch it") from None
        except OSError as exc:
            raise InputError(f"{_p(self.path)}: cannot create the results file: {exc.strerror or exc}") from None
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    def append(self, row: dict) -> None:
        """Write one finished row and flush it to disk (undone if the write fails)."""
        if self._fd is None:
            self._start()
        data = _csv_line([row[c] for c in self.columns]).encode("utf-8")
        size = os.fstat(self._fd).st_size
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, "short write")
            os.fsync(self._fd)
        except OSError as exc:
            try:
                os.ftruncate(self._fd, size)
            except OSError:
                pass
            raise InputError(f"{_p(self.path)}: cannot write a row ({exc.strerror or exc}); the rows written "
                             "so far are kept, rerun to resume") from None
        self.done[row["id"]] = row

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            try:
                os.unlink(self.lock_path)  # while still holding the lock (see _take_lock)
            except OSError:
                pass
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _csv_line(fields) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(fields)
    return buf.getvalue()
