"""A budget check of a pickle stream, run before torch's weights-only unpickler sees it.

`torch.load(weights_only=True)` lets a pickle name only tensors and plain containers, but then
builds whatever those describe, with no bound: a dict key that is a tuple nested a million deep
(hashing it overflows the C stack: SIGSEGV), `bytearray(4_600_000_000)` from a 1.4 KB file, a
storage declaring 10^12 elements, tuples that share each other until hashing one takes forever.
`PickleScan.scan` walks the opcodes without building anything and refuses (limits from
`kdcore.limits`):

- nesting of containers (tuples, lists, dicts, sets, open MARKs) deeper than `max_nesting`;
- more than `max_pickle_bytes // 16` opcodes, or one object that, with its shared references
  expanded, holds more than that many objects (hashing a shared tuple costs its expanded size);
- allocations: the elements of every storage (counted once per storage key), `bytearray(n)`,
  and tensor or storage constructors called with sizes, together over `max_tensor_elements`;
  the bytes of `bytearray(n)` and of constructor calls (memory the file does not hold, which
  torch.save never asks for) over `max_pickle_bytes` (found by fuzzing: `bytearray(900_000_000)`
  passed the element budget and took 900 MB).

Only the opcodes that torch's weights-only unpickler implements are accepted (it refuses every
other one too); anything else raises `UnsupportedPickle`. The caller caps the stream itself at
`max_pickle_bytes` before it is read.

State is kept per stack item, not per object: its depth, its expanded size and a small value (an
int, a short string, a global's name, a short tuple of those) where the checks need one.
"""

from __future__ import annotations

import math
import re
import struct
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING  # torch maps protocol-2 names the same way

from kdcore.errors import ModelLoadError
from kdcore.limits import Limits

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of torch's pre-zip format
_UNKNOWN = object()  # a value the checks do not track (a long string, a list, a tensor)
_MAX_TRACKED = 64  # tuples longer than this, and strings longer than 4×, are not tracked
_ALLOCATING = re.compile(r"torch(\.\w+)*\.\w*(Tensor|Storage)")  # torch.Tensor(n, m), UntypedStorage(n)


class PickleRefused(ModelLoadError):
    """The pickle exceeds a budget or is malformed; the message says which and why."""


class UnsupportedPickle(PickleRefused):
    """The pickle uses an opcode that torch's weights-only unpickler refuses (not torch.save output)."""


class _Node:
    __slots__ = ("depth", "size", "value")

    def __init__(self, depth: int, size: int, value: object):
        self.depth, self.size, self.value = depth, size, value


_NONE, _TRUE, _FALSE = _Node(0, 1, None), _Node(0, 1, True), _Node(0, 1, False)


class PickleScan:
    """Walks one or more pickles of one file; the allocation budget is shared between them."""

    def __init__(self, lim: Limits):
        self.max_depth = lim.max_nesting
        self.max_objects = max(lim.max_pickle_bytes // 16, 1)
        self.max_elements = lim.max_tensor_elements
        self.elements = 0  # elements of storages and allocations so far
        self.max_unbacked = lim.max_pickle_bytes
        self.unbacked = 0  # bytes of bytearray(n) and constructor calls: memory not backed by the file
        self.storages: set[object] = set()
        self.ops = 0

    def scan(self, data: bytes, pos: int = 0) -> tuple[int, object]:
        """Check the pickle starting at `data[pos]`; return (position after STOP, value of the result)."""
        stack: list[_Node] = []
        marks: list[list[_Node]] = []
        memo: dict[int, _Node] = {}
        end = len(data)

        def take(n: int) -> bytes:
            nonlocal pos
            if pos + n > end:
                raise PickleRefused("the pickle stream ends in the middle of an instruction (truncated)")
            chunk = data[pos : pos + n]
            pos += n
            return chunk

        def line() -> str:
            nonlocal pos
            stop = data.find(b"\n", pos)
            if stop < 0:
                raise PickleRefused("the pickle stream ends in the middle of an instruction (truncated)")
            raw, pos = data[pos:stop], stop + 1
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise PickleRefused("a global's name in the pickle is not valid UTF-8") from e

        def pop() -> _Node:
            if not stack:
                raise PickleRefused("the pickle takes an item from an empty stack (malformed)")
            return stack.pop()

        def pop_mark() -> list[_Node]:
            nonlocal stack
            if not marks:
                raise PickleRefused("the pickle closes a MARK it never opened (malformed)")
            items, stack = stack, marks.pop()
            return items

        def top() -> _Node:
            if not stack:
                raise PickleRefused("the pickle uses an item of an empty stack (malformed)")
            return stack[-1]

        while True:
            self.ops += 1
            if self.ops > self.max_objects:
                raise PickleRefused(
                    f"the pickle has more than {self.max_objects:,} instructions (max_pickle_bytes / 16); "
                    "a state_dict needs a few per tensor"
                )
            op = take(1)[0]
            if op == 0x80:  # PROTO
                take(1)
            elif op == 0x2E:  # STOP
                return pos, pop().value
            elif op in (0x4E, 0x89, 0x88):  # NONE, NEWFALSE, NEWTRUE
                stack.append(_NONE if op == 0x4E else _FALSE if op == 0x89 else _TRUE)
            elif op in (0x4A, 0x4B, 0x4D):  # BININT, BININT1, BININT2
                fmt = {0x4A: "<i", 0x4B: "<B", 0x4D: "<H"}[op]
                stack.append(_Node(0, 1, struct.unpack(fmt, take(struct.calcsize(fmt)))[0]))
            elif op == 0x8A:  # LONG1
                stack.append(_Node(0, 1, int.from_bytes(take(take(1)[0]), "little", signed=True)))
            elif op == 0x47:  # BINFLOAT
                stack.append(_Node(0, 1, struct.unpack(">d", take(8))[0]))
            elif op in (0x58, 0x55):  # BINUNICODE, SHORT_BINSTRING
                n = struct.unpack("<I", take(4))[0] if op == 0x58 else take(1)[0]
                raw = take(n)
                stack.append(_Node(0, 1, raw.decode("latin-1") if n <= 4 * _MAX_TRACKED else _UNKNOWN))
            elif op == 0x63:  # GLOBAL
                module, name = line(), line()
                if (module, name) in NAME_MAPPING:
                    module, name = NAME_MAPPING[(module, name)]
                elif module in IMPORT_MAPPING:
                    module = IMPORT_MAPPING[module]
                stack.append(_Node(0, 1, ("global", f"{module}.{name}")))
            elif op in (0x29, 0x5D, 0x7D, 0x8F):  # EMPTY_TUPLE, EMPTY_LIST, EMPTY_DICT, EMPTY_SET
                stack.append(_Node(1, 1, () if op == 0x29 else _UNKNOWN))
            elif op == 0x28:  # MARK
                marks.append(stack)
                stack = []
                self._check_depth(len(marks))
            elif op == 0x74:  # TUPLE
                items = pop_mark()  # first: it rebinds `stack`
                stack.append(self._container(items))
            elif op in (0x85, 0x86, 0x87):  # TUPLE1, TUPLE2, TUPLE3
                items = [pop() for _ in range(op - 0x84)][::-1]
                stack.append(self._container(items))
            elif op in (0x61, 0x73):  # APPEND, SETITEM
                items = [pop() for _ in range(1 if op == 0x61 else 2)]
                self._add(top(), items)
            elif op in (0x65, 0x75):  # APPENDS, SETITEMS
                items = pop_mark()
                self._add(top(), items)
            elif op == 0x62:  # BUILD: the state goes into the object below it
                state = pop()
                self._add(top(), [state])
            elif op == 0x52:  # REDUCE: func(*args) replaces func
                args = pop()
                stack[-1] = self._call(top(), args)
            elif op == 0x81:  # NEWOBJ: cls.__new__(cls, *args)
                args = pop()
                stack.append(self._call(pop(), args))
            elif op == 0x51:  # BINPERSID: a reference to a storage record
                self._storage(pop().value)
                stack.append(_Node(0, 1, _UNKNOWN))
            elif op in (0x68, 0x6A):  # BINGET, LONG_BINGET
                key = take(1)[0] if op == 0x68 else struct.unpack("<I", take(4))[0]
                if key not in memo:
                    raise PickleRefused(f"the pickle refers to memo entry {key}, which it never stored (malformed)")
                stack.append(memo[key])
            elif op in (0x71, 0x72):  # BINPUT, LONG_BINPUT
                key = take(1)[0] if op == 0x71 else struct.unpack("<I", take(4))[0]
                memo[key] = top()
            else:
                raise UnsupportedPickle(f"opcode {bytes([op])!r} at byte {pos - 1}")

    def _check_depth(self, depth: int) -> None:
        if depth > self.max_depth:
            raise PickleRefused(
                f"its containers are nested more than {self.max_depth} deep (max_nesting); a state_dict "
                "is nested a few levels"
            )

    def _check_size(self, size: int) -> None:
        if size > self.max_objects:
            raise PickleRefused(
                f"one of its objects holds more than {self.max_objects:,} items once its shared references "
                "are expanded (max_pickle_bytes / 16); hashing it would not finish"
            )

    def _container(self, items: list[_Node]) -> _Node:
        depth = 1 + max((i.depth for i in items), default=0)
        size = 1 + sum(i.size for i in items)
        self._check_depth(depth)
        self._check_size(size)
        value = tuple(i.value for i in items) if len(items) <= _MAX_TRACKED else _UNKNOWN
        return _Node(depth, size, value)

    def _add(self, target: _Node, items: list[_Node]) -> None:
        """Items go into `target` (a list, dict or object being built): its depth and size grow."""
        if target in (_NONE, _TRUE, _FALSE):
            raise PickleRefused("the pickle adds items to a value that is not a container (malformed)")
        if not items:
            return
        depth = max(target.depth, 1 + max(i.depth for i in items))
        size = target.size + sum(i.size for i in items)
        self._check_depth(depth)
        self._check_size(size)
        target.depth, target.size = depth, size

    def _call(self, func: _Node, args: _Node) -> _Node:
        """The result of func(*args): it may hold the arguments, so it keeps their depth and size."""
        name = func.value[1] if isinstance(func.value, tuple) and func.value[:1] == ("global",) else None
        if name is not None:
            self._allocation(name, args.value)
        return _Node(args.depth, args.size + 1, _UNKNOWN)

    def _allocation(self, name: str, args: object) -> None:
        """Count what an allow-listed callable would allocate from its integer arguments."""
        if name == "builtins.bytearray":
            sizes = [args[0]] if isinstance(args, tuple) and args and isinstance(args[0], int) else []
        elif name == "torch._utils._rebuild_qtensor":  # (storage, offset, size, ...) → torch.empty(size)
            sizes = list(args[2]) if isinstance(args, tuple) and len(args) > 2 and _ints(args[2]) else None
        elif _ALLOCATING.fullmatch(name):  # sizes as arguments, or one torch.Size-like tuple of them
            flat = args[0] if isinstance(args, tuple) and len(args) == 1 and isinstance(args[0], tuple) else args
            known = isinstance(flat, tuple) and not any(a is _UNKNOWN or isinstance(a, tuple) for a in flat)
            sizes = [a for a in flat if isinstance(a, int) and not isinstance(a, bool)] if known else None
        else:
            return
        if sizes is None:
            raise PickleRefused(f"it calls {name} with arguments that cannot be checked; torch.save never does")
        n = math.prod(max(int(s), 0) for s in sizes) if sizes else 0
        self._count(n, f"{name}(...)")
        self.unbacked += n * _itemsize(name)
        if self.unbacked > self.max_unbacked:  # zero-filled memory a tiny file can ask for
            raise PickleRefused(
                f"{name}(...) would allocate {self.unbacked:,} bytes that the file does not hold, over "
                f"{self.max_unbacked:,} (max_pickle_bytes); torch.save writes tensors as storages, not such calls"
            )

    def _storage(self, pid: object) -> None:
        """('storage', type, key, location, numel[, view]) → count numel once per key."""
        if not (isinstance(pid, tuple) and len(pid) >= 5 and isinstance(pid[4], int) and not isinstance(pid[4], bool)):
            raise PickleRefused("it holds a storage reference that cannot be checked; torch.save never writes one")
        key = pid[2] if pid[2] is not _UNKNOWN else ("#", self.ops)
        if key not in self.storages:
            self.storages.add(key)
            self._count(max(pid[4], 0), "its storages")

    def _count(self, n: int, what: str) -> None:
        self.elements += n
        if self.elements > self.max_elements:
            raise PickleRefused(
                f"{what} would allocate {self.elements:,} elements in all, over the limit of "
                f"{self.max_elements:,} (max_tensor_elements)"
            )


_ITEMSIZE = {"Double": 8, "Long": 8, "ComplexFloat": 8, "ComplexDouble": 16, "Half": 2, "BFloat16": 2, "Short": 2}
_ITEMSIZE |= {"Byte": 1, "Char": 1, "Bool": 1, "Untyped": 1, "bytearray": 1, "Int": 4, "Float": 4}


def _itemsize(name: str) -> int:
    """Bytes per element of what an allocating callable builds: torch.DoubleTensor → 8, bytearray → 1."""
    last = name.rsplit(".", 1)[-1].removesuffix("Tensor").removesuffix("Storage")
    return _ITEMSIZE.get(last, 8)  # torch.Tensor, _rebuild_qtensor, anything else: the widest common


def _ints(v: object) -> bool:
    return isinstance(v, tuple) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
