"""Look inside a PyTorch checkpoint without running it.

``torch.load(..., weights_only=True)`` refuses anything but tensors and plain
containers, but on its own it reports refusals in several lines that advise
``weights_only=False``, allocates whatever tensor sizes a file claims before
finding out the file cannot hold them, and reads pickle protocols 2 and 3
only. This module works on the file *before* torch does:

* :func:`scan_checkpoint` reads the checkpoint's structure (the zip archive
  ``torch.save`` writes, or the older plain-pickle format) with a pickle
  reader whose every class and function is an inert placeholder: no code
  from the file can run. It returns the globals the file references, the
  tensor bytes it claims (per storage) and the pickle protocol, after
  checking the sizes against bounds *before* anything is allocated;
* :func:`downgrade_pickle` rewrites a protocol 1 or 3-5 pickle with the
  instructions of protocol 2 that torch's weights-only reader understands
  (frames dropped, short strings widened, ``STACK_GLOBAL`` turned into
  ``GLOBAL``, implicit memo slots made explicit, bytes and bytearrays
  rebuilt as protocol 2 does, protocol 1's text integers made binary); what
  the objects mean is unchanged, and torch's reader still decides what is
  allowed. Together: every protocol ``torch.load`` itself reads (1 to 5)
  is accepted.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import struct
import zipfile
from dataclasses import dataclass, field

__all__ = [
    "REWRITTEN_OPCODES",
    "TORCH_OPCODES",
    "CheckpointScan",
    "ScanError",
    "downgrade_pickle",
    "rebuild_with_protocol_2",
    "scan_checkpoint",
]

#: tensor storages' element sizes by the storage class a checkpoint names
_ITEMSIZE = {
    "UntypedStorage": 1, "ByteStorage": 1, "CharStorage": 1, "BoolStorage": 1, "QUInt8Storage": 1,
    "QInt8Storage": 1, "QUInt4x2Storage": 1, "QUInt2x4Storage": 1, "ShortStorage": 2, "HalfStorage": 2,
    "BFloat16Storage": 2, "IntStorage": 4, "FloatStorage": 4, "QInt32Storage": 4, "LongStorage": 8,
    "DoubleStorage": 8, "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16,
}
#: opcodes torch's weights-only reader accepts (protocol 2 subset)
TORCH_OPCODES = frozenset(
    "GLOBAL NEWOBJ REDUCE BUILD APPEND APPENDS SETITEM SETITEMS MARK TUPLE TUPLE1 TUPLE2 TUPLE3 NONE NEWFALSE "
    "NEWTRUE EMPTY_TUPLE EMPTY_LIST EMPTY_DICT EMPTY_SET BININT BININT1 BININT2 BINFLOAT BINUNICODE "
    "SHORT_BINSTRING BINPERSID BINGET LONG_BINGET BINPUT LONG_BINPUT LONG1 PROTO STOP".split()
)
#: opcodes :func:`downgrade_pickle` rewrites into :data:`TORCH_OPCODES`
REWRITTEN_OPCODES = frozenset(
    "FRAME MEMOIZE STACK_GLOBAL SHORT_BINUNICODE BINUNICODE8 SHORT_BINBYTES BINBYTES BINBYTES8 BYTEARRAY8 "
    "INT LONG".split()
)


class ScanError(Exception):
    """The checkpoint's structure cannot be read, or claims more than allowed (message: why).

    ``scan`` holds what was read before the failure (its ``globals`` in particular).
    """

    def __init__(self, message: str, scan: "CheckpointScan | None" = None):
        super().__init__(message)
        self.scan = scan


@dataclass
class CheckpointScan:
    """What :func:`scan_checkpoint` found.

    Attributes
    ----------
    format : ``"zip"`` (``torch.save`` since 1.6) or ``"legacy"``.
    protocol : pickle protocol of the object structure.
    globals : ``module.name`` of every class or function the file references.
    storage_bytes : claimed bytes per tensor storage key.
    opcodes : names of the pickle instructions used.
    """

    format: str
    protocol: int
    globals: set[str] = field(default_factory=set)
    storage_bytes: dict[str, int] = field(default_factory=dict)
    opcodes: set[str] = field(default_factory=set)

    @property
    def tensor_bytes(self) -> int:
        return sum(self.storage_bytes.values())


# --------------------------------------------------------------------------- inert reading


class _Inert:
    """Stands in for every class or function a checkpoint names: accepts anything, does nothing."""

    global_name = ""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __call__(self, *args, **kwargs):
        return _Inert(*args)

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass


class _InertUnpickler(pickle.Unpickler):
    """A pickle reader that resolves no name: classes and functions become :class:`_Inert` subclasses."""

    def __init__(self, file, scan: CheckpointScan):
        super().__init__(file, encoding="bytes")
        self.scan = scan
        self._stubs: dict[str, type] = {}

    def find_class(self, module, name):
        full = f"{module}.{name}"
        self.scan.globals.add(full)
        if full not in self._stubs:
            self._stubs[full] = type("_Inert", (_Inert,), {"global_name": full})
        return self._stubs[full]

    def persistent_load(self, pid):
        if isinstance(pid, tuple) and len(pid) >= 5 and _text(pid[0]) == "storage":
            kind = getattr(pid[1], "global_name", "")
            numel = pid[4]
            if not isinstance(numel, int) or numel < 0:
                raise ScanError(f"a tensor storage claims {numel!r} elements")
            size = numel * _ITEMSIZE.get(kind.rsplit(".", 1)[-1], 8)
            key = _text(pid[2])
            self.scan.storage_bytes[key] = max(self.scan.storage_bytes.get(key, 0), size)
        return _Inert  # a class: the legacy format also persists classes (NEWOBJ needs a type)


def _text(value) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def _read_opcodes(stream, scan: CheckpointScan) -> None:
    """Instructions, protocol and referenced globals, from the opcodes alone (nothing is built)."""
    pushed: list[str | None] = [None, None]  # the last two values pushed (text, else None)
    memo: dict[int, str | None] = {}
    for op, arg, _ in pickletools.genops(stream):
        name = op.name
        scan.opcodes.add(name)
        if name == "PROTO":
            scan.protocol = max(scan.protocol, int(arg))
            continue
        if name == "FRAME":
            continue
        if name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):  # no stack effect
            memo[len(memo) if name == "MEMOIZE" else int(arg)] = pushed[-1]
            continue
        if name in ("GLOBAL", "INST"):
            scan.globals.add(str(arg).replace(" ", "."))
        elif name == "STACK_GLOBAL":
            module, qualname = pushed
            scan.globals.add(f"{module}.{qualname}" if module and qualname else "<a computed global>")
        if name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
                    "SHORT_BINSTRING"):
            value = _text(arg)
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            value = memo.get(int(arg))
        else:
            value = None
        pushed = [pushed[-1], value]


def _scan_pickle(data: bytes | io.BufferedIOBase, scan: CheckpointScan) -> None:
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    start = stream.tell()
    try:
        _read_opcodes(stream, scan)
        stream.seek(start)
        _InertUnpickler(stream, scan).load()
    except ScanError:
        raise
    except Exception as exc:  # noqa: BLE001 - any malformed pickle; nothing of it ran
        reason = f"its object data are corrupt ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"
        raise ScanError(reason, scan) from None


def scan_checkpoint(path, *, max_pickle_bytes: int, max_tensor_bytes: int) -> CheckpointScan:
    """Read a checkpoint's structure without running it; bounds checked before any allocation.

    Raises
    ------
    ScanError
        Not a checkpoint, corrupt, or claims more bytes than the bounds.
    """
    with open(path, "rb") as fh:
        head = fh.read(4)
        fh.seek(0)
        if head == b"PK\x03\x04":
            return _scan_zip(fh, max_pickle_bytes, max_tensor_bytes)
        return _scan_legacy(fh, max_pickle_bytes, max_tensor_bytes)


def _data_pkl(archive: zipfile.ZipFile) -> zipfile.ZipInfo:
    found = [info for info in archive.infolist() if info.filename.endswith("data.pkl") and info.filename.count("/") <= 1]
    if len(found) != 1:
        raise ScanError("it is a zip archive without the data.pkl record torch.save writes")
    return found[0]


def _scan_zip(fh, max_pickle_bytes: int, max_tensor_bytes: int) -> CheckpointScan:
    try:
        archive = zipfile.ZipFile(fh)
        infos = archive.infolist()
        record = _data_pkl(archive)
        total = sum(info.file_size for info in infos)
        if record.file_size > max_pickle_bytes:
            raise ScanError(f"its object data would unpack to {record.file_size / 1e6:.0f} MB "
                            f"(at most {max_pickle_bytes / 1e6:.0f} MB accepted)")
        if total > max_tensor_bytes + max_pickle_bytes:
            raise ScanError(f"its records would unpack to {total / 1e6:.0f} MB "
                            f"(at most {max_tensor_bytes / 1e6:.0f} MB of tensors accepted)")
        data = archive.read(record)
    except ScanError:
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile raises BadZipFile, ValueError, OSError ...
        raise ScanError(f"it is a damaged zip archive ({' '.join(str(exc).split())[:120]})") from None
    scan = CheckpointScan(format="zip", protocol=0)
    _scan_pickle(data, scan)
    _check_claims(scan, max_tensor_bytes)
    return scan


def _scan_legacy(fh, max_pickle_bytes: int, max_tensor_bytes: int) -> CheckpointScan:
    """The pre-1.6 format: magic number, protocol, system info, objects, storage keys, raw storages."""
    scan = CheckpointScan(format="legacy", protocol=0)
    size = fh.seek(0, io.SEEK_END)
    fh.seek(0)
    for _ in range(5):
        _scan_pickle(fh, scan)
        if fh.tell() > max_pickle_bytes:
            raise ScanError(f"its object data exceed {max_pickle_bytes / 1e6:.0f} MB")
    _check_claims(scan, max_tensor_bytes)
    # the storages follow uncompressed: the file must actually hold what it claims
    if scan.tensor_bytes > size - fh.tell():
        raise ScanError(f"it claims {scan.tensor_bytes / 1e6:.1f} MB of tensor data but holds "
                        f"{max(0, size - fh.tell()) / 1e6:.1f} MB; the file is truncated or crafted")
    return scan


def _check_claims(scan: CheckpointScan, max_tensor_bytes: int) -> None:
    if scan.tensor_bytes > max_tensor_bytes:
        raise ScanError(f"it claims {scan.tensor_bytes / 1e6:.0f} MB of tensors "
                        f"(at most {max_tensor_bytes / 1e6:.0f} MB accepted)")


# --------------------------------------------------------------------------- protocol 2


def _binunicode(text: str) -> bytes:
    data = text.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(data)) + data


def _global(module: str, name: str) -> bytes:
    if "\n" in module or "\n" in name:
        raise ScanError("it names a global with a line break")
    return b"c" + module.encode("utf-8") + b"\n" + name.encode("utf-8") + b"\n"


def _bytes_as_protocol_2(data: bytes) -> bytes:
    # what protocol 2 writes for bytes: _codecs.encode(text, 'latin1')
    return _global("_codecs", "encode") + _binunicode(data.decode("latin-1")) + _binunicode("latin1") + b"\x86R"


def _long1(value: int) -> bytes:
    data = pickle.encode_long(value)
    if len(data) > 255:
        raise ScanError("it holds an integer too large for any checkpoint")
    return b"\x8a" + bytes([len(data)]) + data


def _int_as_protocol_2(value) -> bytes:
    if value is True or value is False:
        return b"\x88" if value else b"\x89"
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    return _long1(value)


def downgrade_pickle(data: bytes) -> bytes:
    """Rewrite one pickle with protocol-2 instructions (see the module docstring).

    Instructions without a protocol-2 equivalent are kept; torch's reader
    then refuses the file.
    """
    ops = list(pickletools.genops(data))
    items: list[list] = []  # [bytes, string value or None]
    strings: dict[int, str] = {}  # memo slots holding strings
    memo: set[int] = set()

    def emit(raw: bytes, value: str | None = None) -> None:
        items.append([raw, value])

    def put(index: int) -> None:
        memo.add(index)
        raw = b"r" + struct.pack("<I", index)
        if items and items[-1][1] is not None:
            strings[index] = items[-1][1]
            items[-1][0] += raw  # travels with its string (removed together by STACK_GLOBAL)
        else:
            strings.pop(index, None)
            emit(raw)

    for i, (op, arg, pos) in enumerate(ops):
        end = ops[i + 1][2] if i + 1 < len(ops) else pos + 1
        name = op.name
        if name == "PROTO":
            emit(b"\x80\x02")
        elif name == "FRAME":
            continue
        elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"):
            emit(_binunicode(arg), arg)
        elif name in ("SHORT_BINBYTES", "BINBYTES", "BINBYTES8"):
            emit(_bytes_as_protocol_2(arg))
        elif name == "INT":  # protocol 0/1 text integers, also its booleans (I01/I00)
            emit(_int_as_protocol_2(arg))
        elif name == "LONG":
            emit(_long1(int(arg)))
        elif name == "BYTEARRAY8":
            emit(_global("builtins", "bytearray") + _bytes_as_protocol_2(bytes(arg)) + b"\x85R")
        elif name == "MEMOIZE":
            put(len(memo))
        elif name in ("BINPUT", "LONG_BINPUT"):
            put(int(arg))
        elif name in ("BINGET", "LONG_BINGET") and int(arg) in strings:
            emit(_binunicode(strings[int(arg)]), strings[int(arg)])
        elif name == "STACK_GLOBAL":
            if len(items) < 2 or items[-1][1] is None or items[-2][1] is None:
                raise ScanError("it builds a global name in a way this reader does not follow")
            qualname, module = items.pop()[1], items.pop()[1]
            emit(_global(module, qualname))
        else:
            emit(data[pos:end])
    return b"".join(raw for raw, _ in items)


def rebuild_with_protocol_2(path, scan: CheckpointScan) -> io.BytesIO:
    """An in-memory copy of the checkpoint at ``path`` whose pickles use protocol 2."""
    with open(path, "rb") as fh:
        if scan.format == "zip":
            out = io.BytesIO()
            with zipfile.ZipFile(fh) as archive, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as copy:
                record = _data_pkl(archive)
                for info in archive.infolist():
                    data = archive.read(info)
                    copy.writestr(info.filename, downgrade_pickle(data) if info.filename == record.filename else data)
            out.seek(0)
            return out
        parts = []
        for _ in range(5):
            start = fh.tell()
            for _op in pickletools.genops(fh):
                pass
            end = fh.tell()
            fh.seek(start)
            parts.append(downgrade_pickle(fh.read(end - start)))
        parts.append(fh.read())
        return io.BytesIO(b"".join(parts))
