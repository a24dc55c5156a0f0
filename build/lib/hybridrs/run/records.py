"""Input records of ``hybridrs certify``: parsing and checking a JSONL file, reading images under a
confining root, and the content digest that keys a record's row in the results file.

A record is named in messages as ``record N (id 'x')``, N being its line in the input file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hybridrs.run.config import InputError
from hybridrs.run.plugins import Model, call_user

#: Characters a spreadsheet reads as the start of a formula (and the quote that escapes them).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")
MAX_ID_LENGTH = 1000


def csv_safe(text: str) -> str:
    """The id as written to the results file: prefixed with ``'`` when it starts with a character a
    spreadsheet would read as a formula (``= + - @``, tab, CR) or with ``'`` itself — so the mapping
    is one-to-one and ``=cmd|...`` is shown as text, never run."""
    return "'" + text if text.startswith(_FORMULA_START) else text


@dataclass
class Record:
    """One input: its id, token ids, image (a confined path or an inline array), optional label."""

    id: str
    tokens: list[int]
    image: Any = None  # Path, np.ndarray or None
    label: int | None = None
    line: int = 0
    image_root: Path | None = None
    digest: str = ""  # SHA-256 of tokens, image pixels and label (:func:`content_digest`)

    @property
    def where(self) -> str:
        return f"record {self.line} (id {self.id!r})"

    @property
    def key(self) -> str:
        """The id as written in the results file (:func:`csv_safe`)."""
        return csv_safe(self.id)

    def image_array(self) -> np.ndarray | None:
        if self.image is None:
            return None
        if isinstance(self.image, np.ndarray):
            return self.image
        return read_image(self.image, self.where, root=self.image_root)

    def load_image(self):
        """The image as a float tensor (None when the record has none), re-checked against the
        digest taken when the record was validated (an image file changed during the run is an error)."""
        import torch

        arr = self.image_array()
        if arr is None:
            return None
        if self.digest and content_digest(self.tokens, arr, self.label) != self.digest:
            raise InputError(f"{self.where}: image {str(self.image)!r} changed since the inputs were checked")
        return torch.from_numpy(arr)


def confine(path: Path, root: Path, where: str) -> Path:
    """``path`` resolved (symlinks followed); refused when the result is outside ``root``.

    The answer does not depend on whether the file exists, so it reveals nothing about files
    outside the root."""
    real = Path(os.path.realpath(path))
    root_real = Path(os.path.realpath(root))
    try:
        inside = os.path.commonpath([str(real), str(root_real)]) == str(root_real)
    except ValueError:  # different drives
        inside = False
    if not inside:
        raise InputError(f"{where}: image path {str(path)!r} leads outside the image root {str(root_real)!r} "
                         "(--image-root)")
    return real


def read_image(path: Path, where: str = "image", *, root: Path | None = None) -> np.ndarray:
    """Read a .png (Pillow; [0, 1], (C, H, W)) or .npy (floating array as is) image, confined to
    ``root`` when given."""
    path = Path(path)
    real = confine(path, root, where) if root is not None else path
    suffix = path.suffix.lower()
    if suffix not in (".png", ".npy"):
        raise InputError(f"{where}: unsupported image type {suffix!r} ({str(path)!r}); use .png or .npy")
    if not real.is_file():
        raise InputError(f"{where}: image file {str(path)!r} does not exist or is not a file")
    try:
        if suffix == ".npy":
            arr = np.load(real, allow_pickle=False)
            if not np.issubdtype(arr.dtype, np.floating):
                raise InputError(f"{where}: {str(path)!r} holds {arr.dtype} values; .npy images must be "
                                 "floating point in the units of sigma (scale integer pixels yourself)")
            arr = np.ascontiguousarray(arr, dtype=np.float32)
        else:
            from PIL import Image

            with Image.open(real) as im:
                im.load()
                if im.mode in ("1", "L", "I;16", "I"):
                    raw = np.asarray(im)
                    scale = 65535.0 if im.mode in ("I;16", "I") else (1.0 if im.mode == "1" else 255.0)
                    arr = (raw.astype(np.float32) / scale)[None]
                else:
                    arr = np.asarray(im.convert("RGB")).astype(np.float32).transpose(2, 0, 1) / 255.0
            arr = np.ascontiguousarray(arr)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the file's fault
        raise InputError(f"{where}: cannot read image {str(path)!r}: {type(exc).__name__}: {exc}") from None
    if arr.size == 0 or not np.isfinite(arr).all():
        raise InputError(f"{where}: image {str(path)!r} is empty or contains NaN/inf")
    return arr


def content_digest(tokens, image: np.ndarray | None, label) -> str:
    """SHA-256 of what a record's certificate depends on: token ids, image pixels (dtype, shape,
    bytes) and label."""
    h = hashlib.sha256()
    h.update(json.dumps([int(t) for t in tokens]).encode())
    if image is None:
        h.update(b"\0no-image")
    else:
        arr = np.ascontiguousarray(image)
        h.update(f"\0{arr.dtype.str}\0{arr.shape}\0".encode())
        h.update(arr.tobytes())
    h.update(f"\0label={label}".encode())
    return h.hexdigest()


def read_records(path: str | os.PathLike, model: Model | None = None, *, image_root=None,
                 vocab_size: int | None = None) -> list[Record]:
    """Parse and check a JSONL file of inputs (see :mod:`hybridrs.run.cli`); raise InputError on the
    first bad one.

    Texts are encoded with ``model.encode`` and every token id is checked (an integer, ≥ 0, below
    ``vocab_size`` when known).  Image paths are resolved relative to the JSONL file, must stay
    inside ``image_root`` (default: the JSONL file's folder; symlinks are resolved first), and are
    read once, so that a bad image stops the run before anything is written.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{str(path)!r}: input file does not exist or is not a file")
    root = Path(image_root) if image_root is not None else path.parent
    if not root.is_dir():
        raise InputError(f"--image-root: {str(root)!r} is not a folder")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{str(path)!r}: cannot read the input file: {exc.strerror or exc}") from None
    records, seen, seen_keys = [], {}, {}
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte-order mark
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"record {lineno}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})") from None
        if not line.strip():
            continue
        where = f"record {lineno}"
        try:
            obj = json.loads(line, parse_constant=_no_constant)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not valid JSON ({exc.msg}, column {exc.colno})") from None
        except RecursionError:
            raise InputError(f"{where}: JSON nested too deeply") from None
        except ValueError as exc:
            raise InputError(f"{where}: {exc}") from None
        if not isinstance(obj, dict):
            raise InputError(f"{where}: each line must be a JSON object, got {type(obj).__name__}")
        rid = obj.get("id")
        if isinstance(rid, bool) or not isinstance(rid, (str, int)) or (isinstance(rid, str) and not rid.strip()):
            raise InputError(f"{where}: 'id' is missing or not a non-empty string/integer")
        rid = str(rid)
        if len(rid) > MAX_ID_LENGTH:
            raise InputError(f"{where}: 'id' is longer than {MAX_ID_LENGTH} characters")
        if any(ord(c) < 32 or ord(c) == 127 for c in rid):
            raise InputError(f"{where}: 'id' must not contain control characters (line breaks, tabs, NUL)")
        where = f"record {lineno} (id {rid!r})"
        if rid in seen:
            raise InputError(f"{where}: duplicate id (first on line {seen[rid]})")
        seen[rid] = lineno
        tokens = _record_tokens(obj, model, where, vocab_size)
        image = _record_image(obj, path.parent, root, where)
        label = _record_label(obj.get("label"), where)
        rec = Record(rid, tokens, image, label, lineno, root)
        arr = rec.image_array()
        rec.digest = content_digest(tokens, arr, label)
        records.append(rec)
    if not records:
        raise InputError(f"{str(path)!r}: the input file holds no records")
    return records


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _record_label(label, where: str) -> int | None:
    """0 or 1 in any numeric spelling (0, 1, 0.0, 1.0, 1e0); anything else is refused."""
    if label is None:
        return None
    if isinstance(label, bool) or not isinstance(label, (int, float)) or label not in (0, 1):
        raise InputError(f"{where}: 'label' must be the number 0 or 1, got {label!r}")
    return int(label)


def _check_ids(toks, where: str, vocab_size: int | None, source: str) -> list[int]:
    out = []
    for t in toks:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) and not (
                isinstance(t, (float, np.floating)) and math.isfinite(t) and float(t).is_integer()):
            raise InputError(f"{where}: {source} holds {t!r}, not an integer token id")
        t = int(t)
        if t < 0 or t >= 2 ** 63:
            raise InputError(f"{where}: {source} holds token id {t}, not a non-negative 64-bit id")
        if vocab_size is not None and t >= vocab_size:
            raise InputError(f"{where}: {source} holds token id {t}, outside the vocabulary (vocab size {vocab_size})")
        out.append(t)
    return out


def _record_tokens(obj: dict, model: Model | None, where: str, vocab_size: int | None) -> list[int]:
    if "tokens" in obj:
        toks = obj["tokens"]
        if not isinstance(toks, list) or not toks or any(isinstance(t, float) for t in toks):
            raise InputError(f"{where}: 'tokens' must be a non-empty list of non-negative integer ids")
        return _check_ids(toks, where, vocab_size, "'tokens'")
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{where}: no text (give a non-empty 'text' string or a 'tokens' list)")
    if model is None or model.encode is None:
        raise InputError(f"{where}: has 'text' but the model has no encode(text) -> ids; give 'tokens' "
                         "or add encode to the model")
    toks = call_user(model.encode, where, "the model's encode(text)", text)
    try:
        toks = list(toks)
    except TypeError:
        raise InputError(f"{where}: the model's encode(text) returned {type(toks).__name__}, not a list of ids") from None
    if not toks:
        raise InputError(f"{where}: the text encodes to no tokens")
    return _check_ids(toks, where, vocab_size, "the model's encode(text)")


def _record_image(obj: dict, base: Path, root: Path, where: str):
    img = obj.get("image")
    if img is None:
        return None
    if isinstance(img, str):
        if not img or "\0" in img:
            raise InputError(f"{where}: 'image' is an empty path or contains NUL")
        p = Path(img)
        p = p if p.is_absolute() else base / p
        confine(p, root, where)  # before any look at the file: nothing is revealed about outside files
        return p
    if isinstance(img, list):
        try:
            arr = np.asarray(img, dtype=np.float32)
        except (TypeError, ValueError, RecursionError):
            raise InputError(f"{where}: inline 'image' must be a rectangular nested list of numbers") from None
        if arr.size == 0 or not np.isfinite(arr).all():
            raise InputError(f"{where}: inline 'image' is empty or has NaN/inf")
        return arr
    raise InputError(f"{where}: 'image' must be a path string or a nested list, got {type(img).__name__}")
