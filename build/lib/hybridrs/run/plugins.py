"""Loading the user's model: ``--model package.module:factory`` → :class:`Model`, its device, and
its fingerprint (what identifies it in the results file).

The protocol is described in :mod:`hybridrs.run.cli`.  Everything the user's code does wrong (an
import that fails, a factory that raises or calls ``sys.exit``, a result that does not follow the
protocol) becomes an :class:`~hybridrs.run.config.InputError` naming ``--model`` or ``--device``.

**Import path.**  ``package.module`` is looked up on ``sys.path`` as it is, then in the working
folder, which is appended *last* (never put first): a folder in the working directory named like an
installed package (``PIL/``, ``torch/``) is never imported in its place.  ``path/to/file.py`` is
loaded from that file and nothing else.

**Fingerprint.**  A resumed run must use the same model.  The model's identity is, in this order:
the ``fingerprint`` attribute (or dict key) the factory's result provides (a string, or a callable
returning one, e.g. a checkpoint's hash; the factory vouches for it), else the SHA-256 of the
``state_dict`` of the result (or of its ``classify``) when it is a ``torch.nn.Module`` — names,
dtypes, shapes and bytes of every tensor — together with the source of the factory's module, else
the source of the factory's module alone (a model whose behaviour is all code).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from hybridrs.run.config import InputError


@dataclass
class Model:
    """The base classifier and what the command line needs to know about it."""

    classify: Callable
    encode: Callable[[str], Sequence[int]] | None = None
    vocab_size: int | None = None
    alphabet: Sequence[int] | None = None
    mask_id: int | None = None
    filler_id: int | None = None
    fingerprint: str = ""


def call_user(fn: Callable, where: str, what: str, *args, **kwargs) -> Any:
    """Call user code; any exception, and ``sys.exit``, becomes an InputError naming ``where``.

    Only KeyboardInterrupt (and signals) pass through.
    """
    try:
        return fn(*args, **kwargs)
    except InputError:
        raise
    except SystemExit as exc:
        raise InputError(f"{where}: {what} called sys.exit({exc.code!r})") from None
    except Exception as exc:  # noqa: BLE001 - user code: any failure is reported, with its type
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise InputError(f"{where}: {what} raised {type(exc).__name__}{': ' + detail if detail else ''}") from None


def check_device(device: str) -> str:
    """Refuse a device this machine does not have (InputError naming ``--device``)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise InputError(f"--device: unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cpu":
        return device
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device: {device!r} asked, but CUDA is not available on this machine "
                             "(no GPU, or torch built without CUDA); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"--device: {device!r} asked, but this machine has {torch.cuda.device_count()} CUDA device(s)")
        return device
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError(f"--device: {device!r} asked, but MPS is not available on this machine; use --device cpu")
        return device
    raise InputError(f"--device: {device!r} is not supported; use cpu, cuda, cuda:N or mps")


def _import_factory(spec: str) -> tuple[Callable, Any]:
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise InputError(f"--model: expected 'package.module:factory' or 'file.py:factory', got {spec!r}")
    module_name, attr = spec.split(":")
    if module_name.endswith(".py") or os.sep in module_name or (os.altsep and os.altsep in module_name):
        path = Path(module_name)
        if not path.is_file():
            raise InputError(f"--model: file {module_name!r} does not exist")
        mod_spec = importlib.util.spec_from_file_location(f"_hybridrs_model_{path.stem}", path)
        if mod_spec is None or mod_spec.loader is None:
            raise InputError(f"--model: cannot load {module_name!r} as a Python file")
        module = importlib.util.module_from_spec(mod_spec)
        call_user(mod_spec.loader.exec_module, "--model", f"importing {module_name!r}", module)
    else:
        cwd = os.getcwd()
        if cwd not in sys.path and "" not in sys.path:
            sys.path.append(cwd)  # last: installed packages win over folders in the working directory
        module = call_user(importlib.import_module, "--model", f"importing {module_name!r}", module_name)
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise InputError(f"--model: {module_name!r} has no callable {attr!r}")
    return factory, module


def load_model(spec: str, device: str = "cpu") -> Model:
    """Import ``package.module:factory`` (or ``file.py:factory``), call it and wrap the result.

    The factory gets ``device=`` when its signature has that parameter.  When it has none and
    ``device`` is not the CPU, a ``torch.nn.Module`` result is moved there (``.to(device)``);
    anything else is refused with an error naming ``--device``.
    """
    factory, module = _import_factory(spec)
    try:
        params = inspect.signature(factory).parameters
        takes_device = "device" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        takes_device = False
    if takes_device:
        obj = call_user(factory, "--model", spec, device=device)
    else:
        obj = call_user(factory, "--model", spec)
    get = (lambda k: obj.get(k)) if isinstance(obj, dict) else (lambda k: getattr(obj, k, None))
    classify = get("classify") if isinstance(obj, dict) else obj
    if not callable(classify):
        raise InputError(f"--model: {spec} must return a callable model(tokens, images) -> labels "
                         f"(or a dict with a 'classify' entry), got {type(obj).__name__}")
    if not takes_device and device != "cpu":
        import torch

        if not isinstance(classify, torch.nn.Module):
            raise InputError(f"--device: {device!r} asked, but the factory {spec} takes no device parameter and "
                             "its model is not a torch.nn.Module that could be moved there; add a device "
                             "parameter to the factory or use --device cpu")
        call_user(classify.to, "--device", f"moving the model to {device!r}", device)
    encode = get("encode")
    if encode is not None and not callable(encode):
        raise InputError(f"--model: the model's encode must be callable, got {type(encode).__name__}")
    ints = {}
    for key in ("vocab_size", "mask_id", "filler_id"):
        val = get(key)
        if val is not None and (isinstance(val, bool) or not _is_int(val) or int(val) < 0 or int(val) >= 2 ** 63):
            raise InputError(f"--model: the model's {key} must be a non-negative integer, got {val!r}")
        ints[key] = None if val is None else int(val)
    model = Model(classify=classify, encode=encode, alphabet=get("alphabet"), **ints)
    model.fingerprint = model_fingerprint(obj, classify, module, get("fingerprint"))
    return model


def _is_int(x) -> bool:
    try:
        return int(x) == x
    except (TypeError, ValueError, OverflowError):
        return False


def model_fingerprint(obj, classify, module, given=None) -> str:
    """The model's identity (module docstring): ``given`` (str or callable), else the state_dict
    and module source, else the module source.  Returns ``kind:hexdigest``."""
    if given is not None:
        val = call_user(given, "--model", "the model's fingerprint()") if callable(given) else given
        if not isinstance(val, str) or not val:
            raise InputError(f"--model: the model's fingerprint must be a non-empty string, got {val!r}")
        return "given:" + hashlib.sha256(val.encode()).hexdigest()
    h = hashlib.sha256()
    kind = "source"
    try:
        src = inspect.getsourcefile(module) or getattr(module, "__file__", None)
        h.update(Path(src).read_bytes() if src else repr(module).encode())
    except (TypeError, OSError):
        h.update(repr(module).encode())
    module_obj = _torch_module(classify) or _torch_module(obj)
    if module_obj is not None:
        import torch

        kind = "weights"
        state = call_user(module_obj.state_dict, "--model", "the model's state_dict()")
        for name, tensor in state.items():
            h.update(f"\0{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
            t = tensor.detach().to("cpu").contiguous()
            try:
                h.update(t.reshape(-1).view(dtype=torch.uint8).numpy().tobytes())
            except (RuntimeError, TypeError):
                h.update(repr(t.tolist()).encode())
    return f"{kind}:{h.hexdigest()}"


def _torch_module(x):
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.nn.Module):
        return x
    return None
