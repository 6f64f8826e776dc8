"""Fork dialects' schema: messages and fields declared in Python, added beside caffe.proto.

BVLC's schema stays the generated `caffe_pb2`. A fork's parameter message is declared where
its layer is implemented (one layer file), and the fields forks add to BVLC messages
(`PoolingParameter.ceil_mode`, `LayerParameter.prior_box_param`, ...) become protobuf
*extensions* of the BVLC messages (caffe.proto gives every message an extension range). Each
declaration is compiled at import into a small FileDescriptorProto in the default descriptor
pool, and an attribute of the BVLC class is added for every extension, so code reads
`layer.prior_box_param.min_size` exactly as it reads a BVLC field.

Text is parsed by field name (frontend/textformat.py asks `fields_by_name`), so a fork file
reads as it would in its fork; a BVLC file never reaches the extensions and parses exactly as
text_format parses it. Field numbers only matter on the wire: an extension keeps the number
the forks' caffe.proto gives it (the first dialect in `dialects.DIALECTS` that lists it) where
that number is inside the extension range and free, else it gets a private number. The
caffemodel loader reads only layer names, types and blobs, so fork fields at clashing numbers
in a binary file never matter (tests/test_dialect_schema.py checks one).

Usage (see docs/ARCHITECTURE.md, "Adding a layer type"):

    from protocaffe.proto.schema import Enum, Field, declare_message, extend

    InterpParameter = declare_message(
        "InterpParameter",
        Field("height", 1, "int32"),
        Field("zoom_factor", 3, "int32", default=1),
        param="interp_param",  # LayerParameter field; numbers from dialects.py
    )
    extend("PoolingParameter", Field("ceil_mode", 13, "bool", default=True))
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from protocaffe.proto import caffe_pb2
from protocaffe.proto.dialects import construct_name

__all__ = [
    "Enum",
    "Field",
    "declare_message",
    "declared_fields",
    "extend",
    "fields_by_name",
    "fork_constructs",
    "fork_fields",
    "generation",
    "load_declarations",
    "message_class",
    "set_field",
]

_FDP = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "double": _FDP.TYPE_DOUBLE,
    "float": _FDP.TYPE_FLOAT,
    "int64": _FDP.TYPE_INT64,
    "uint64": _FDP.TYPE_UINT64,
    "int32": _FDP.TYPE_INT32,
    "uint32": _FDP.TYPE_UINT32,
    "bool": _FDP.TYPE_BOOL,
    "string": _FDP.TYPE_STRING,
    "bytes": _FDP.TYPE_BYTES,
}
# Extension numbers for fields whose fork number is taken: [_PRIVATE, _PRIVATE + _SPAN).
_PRIVATE = 500_000_000
_SPAN = 36_000_000
# Fields of a declared message whose fork numbers clash (two forks' BNParameter) start here.
_MESSAGE_PRIVATE = 1000
_PACKAGE = "caffe"


class Field(NamedTuple):
    """One field: `type` is a scalar ("float", "int32", ...), a message name ("FillerParameter",
    or one declared earlier), an enum declared in the same message, or another message's enum
    ("PriorBoxParameter.CodeType"). `number` is the fork's."""

    name: str
    number: int
    type: str
    default: Any = None
    repeated: bool = False
    dialects: tuple[str, ...] = ()  # which forks define it (empty: those of the message)


class Enum:
    """An enum nested in a declared message: Enum("CodeType", CORNER=1, CENTER_SIZE=2)."""

    __slots__ = ("name", "values")

    def __init__(self, name: str, **values: int) -> None:
        self.name = name
        self.values = values


_POOL = descriptor_pool.Default()
_EXTENSIONS: dict[str, dict[str, FieldDescriptor]] = {}  # extendee full name -> name -> fd
# declared_fields' answers (a compile asks thousands of times); emptied by each extension
_FIELDS: dict[str, Mapping[str, FieldDescriptor]] = {}
_CLASSES: dict[str, type] = {}  # declared message name -> class
# Evidence for choosing a dialect: fork construct (see `construct_name`) -> the dialects
# whose declarations say they define it.
FIELD_DIALECTS: dict[str, set[str]] = {}
_generation = 0
# Whether every layer file has been imported (so every built-in fork declaration made).
_all_declared = False
# The built-in extensions' numbers ((extendee, field) -> number, from layers/_index.py): a
# layer file imported on its own gives its fields the numbers a full import gives them.
_builtin_numbers: dict[tuple[str, str], int] | None = None


def generation() -> int:
    """Bumped by every declaration (caches keyed on it see declarations made later)."""
    return _generation


def load_declarations() -> None:
    """Make every built-in fork declaration: they live in the layer files, which are imported
    when their layer types are first used (a BVLC net needs none of them), or all at once here
    when a name BVLC's schema lacks is looked up."""
    global _all_declared
    if not _all_declared:
        _all_declared = True
        from protocaffe.layers import import_layer_files

        import_layer_files()


def message_class(name: str) -> Any:
    """A BVLC or declared message class by name."""
    found = _CLASSES.get(name)
    if found is None and not hasattr(caffe_pb2, name):
        load_declarations()
        found = _CLASSES.get(name)
    return found or getattr(caffe_pb2, name)


def declared_fields(descriptor: Descriptor) -> Mapping[str, FieldDescriptor]:
    """`descriptor`'s fields by name with the fork fields declared so far (read-only). A name
    missing here may belong to a layer file not imported yet: `fields_by_name` is complete."""
    fields = _FIELDS.get(descriptor.full_name)
    if fields is None:
        extra = _EXTENSIONS.get(descriptor.full_name, {})
        fields = MappingProxyType({**descriptor.fields_by_name, **extra})
        _FIELDS[descriptor.full_name] = fields
    return fields


def fields_by_name(descriptor: Descriptor) -> Mapping[str, FieldDescriptor]:
    """`descriptor`'s fields by name, with every fork field declared for it (read-only)."""
    if _all_declared:
        return declared_fields(descriptor)
    return _Fields(descriptor)


class _Fields(Mapping[str, FieldDescriptor]):
    """fields_by_name before every layer file is imported: a name declared so far answers at
    once; any other name, or listing the fields, first makes every declaration."""

    __slots__ = ("_descriptor",)

    def __init__(self, descriptor: Descriptor) -> None:
        self._descriptor = descriptor

    def _complete(self) -> Mapping[str, FieldDescriptor]:
        load_declarations()
        return declared_fields(self._descriptor)

    def __getitem__(self, name: str) -> FieldDescriptor:
        found = declared_fields(self._descriptor).get(name)
        return found if found is not None else self._complete()[name]

    def __contains__(self, name: object) -> bool:
        return name in declared_fields(self._descriptor) or name in self._complete()

    def __iter__(self) -> Iterator[str]:
        return iter(self._complete())

    def __len__(self) -> int:
        return len(self._complete())


def _declaring_from_outside() -> None:
    """A declaration from outside the layer files (a plugin's, a test's) comes after every
    built-in one, as when the layer files were all imported first: so each name and number
    stays what it was (built-in numbers are fixed, the first free one goes to the newcomer)."""
    caller = sys._getframe(2).f_globals.get("__name__", "")
    if not caller.startswith("protocaffe.layers."):
        load_declarations()


def declare_message(
    name: str,
    *items: Field | Enum,
    param: str | None = None,
    numbers: dict[str, int] | None = None,
    dialects: tuple[str, ...] = (),
) -> Any:
    """Declare fork message `name` and return its class.

    `param` names the LayerParameter (and V1LayerParameter) field that holds it; its number
    per fork comes from `numbers` ({"ssd": 203}) or else from dialects.py's tables.
    `dialects` names the forks it comes from (default: those that list `param`).
    """
    from protocaffe.proto import dialects as catalogue

    _declaring_from_outside()
    if name in _CLASSES or hasattr(caffe_pb2, name):
        raise ValueError(f"message {name!r} is already declared")
    fork_numbers = dict(numbers or (catalogue.param_numbers(param) if param else {}))
    dialects = dialects or tuple(fork_numbers)
    fdp = _file(f"{name}")
    msg = fdp.message_type.add(name=name)
    enums = {e.name for e in items if isinstance(e, Enum)}
    for e in items:
        if isinstance(e, Enum):
            enum = msg.enum_type.add(name=e.name)
            for value_name, number in e.values.items():
                enum.value.add(name=value_name, number=number)
    used: set[int] = set()
    spare = _MESSAGE_PRIVATE
    for f in items:
        if isinstance(f, Field):
            number = f.number
            if number in used:
                while spare in used:
                    spare += 1
                number = spare
            used.add(number)
            msg.field.append(
                _field_proto(f, number, f".{_PACKAGE}.{name}.{f.type}" if f.type in enums else None)
            )
    if param is not None:
        for extendee in ("LayerParameter", "V1LayerParameter"):
            number = _extension_number(extendee, param, list(fork_numbers.values()))
            scope = fdp.message_type.add(name=f"{name}_{extendee}")
            ext = _FDP(name=param, number=number, label=_FDP.LABEL_OPTIONAL, type=_FDP.TYPE_MESSAGE)
            ext.type_name = f".{_PACKAGE}.{name}"
            ext.extendee = f".{_PACKAGE}.{extendee}"
            scope.extension.append(ext)
    _add(fdp)
    cls = message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
    _CLASSES[name] = cls
    if param is not None:
        for extendee in ("LayerParameter", "V1LayerParameter"):
            fd = _POOL.FindExtensionByName(f"{_PACKAGE}.{name}_{extendee}.{param}")
            _attach(extendee, fd)
        _note(param, dialects)
    for f in items:
        if isinstance(f, Field) and f.dialects:
            _note(f"{name}.{f.name}", f.dialects)
    return cls


def extend(extendee: str, *fields: Field, dialects: tuple[str, ...] = ()) -> None:
    """Add fork fields to BVLC (or declared) message `extendee`, e.g. PoolingParameter."""
    _declaring_from_outside()
    target = message_class(extendee).DESCRIPTOR
    fdp = _file(f"{extendee}_{'_'.join(f.name for f in fields)}")
    scope = fdp.message_type.add(name=f"{extendee}_{fields[0].name}_ext")
    for f in fields:
        if f.name in declared_fields(target):
            raise ValueError(f"{extendee}.{f.name} is already declared")
        number = _extension_number(extendee, f.name, [f.number])
        enum_type = None
        if f.type not in _SCALARS and f.type not in _CLASSES and not hasattr(caffe_pb2, f.type):
            enum_type = f".{target.full_name}.{f.type}"  # an enum of the extended message
        ext = _field_proto(f, number, enum_type)
        ext.extendee = f".{target.full_name}"
        scope.extension.append(ext)
    _add(fdp)
    for f in fields:
        _attach(extendee, _POOL.FindExtensionByName(f"{_PACKAGE}.{scope.name}.{f.name}"))
        _note(construct_name(target.name, f.name), f.dialects or dialects)


def _note(construct: str, dialects: tuple[str, ...]) -> None:
    FIELD_DIALECTS.setdefault(construct, set()).update(dialects)


# --- building -----------------------------------------------------------------------------


def _file(stem: str) -> descriptor_pb2.FileDescriptorProto:
    return descriptor_pb2.FileDescriptorProto(
        name=f"protocaffe/dialect/{stem}.proto",
        package=_PACKAGE,
        dependency=["caffe.proto", *sorted(_FILES)],
        syntax="proto2",
    )


_FILES: list[str] = []


def _add(fdp: descriptor_pb2.FileDescriptorProto) -> None:
    global _generation
    _POOL.AddSerializedFile(fdp.SerializeToString())
    _FILES.append(fdp.name)
    _generation += 1


def _field_proto(
    f: Field, number: int, enum_type: str | None
) -> descriptor_pb2.FieldDescriptorProto:
    label = _FDP.LABEL_REPEATED if f.repeated else _FDP.LABEL_OPTIONAL
    proto = _FDP(name=f.name, number=number, label=label)
    if f.type in _SCALARS:
        proto.type = _SCALARS[f.type]
    elif "." in f.type:  # another message's enum: "PriorBoxParameter.CodeType"
        proto.type = _FDP.TYPE_ENUM
        proto.type_name = f".{_PACKAGE}.{f.type}"
    elif enum_type is not None:
        proto.type = _FDP.TYPE_ENUM
        proto.type_name = enum_type
    else:
        proto.type = _FDP.TYPE_MESSAGE
        proto.type_name = f".{message_class(f.type).DESCRIPTOR.full_name}"
    if f.default is not None:
        if isinstance(f.default, bool):
            proto.default_value = "true" if f.default else "false"
        else:
            proto.default_value = str(f.default)
    return proto


def _extension_number(extendee: str, name: str, wanted: list[int]) -> int:
    """The fork's number if the extension range has it free, else a stable private one; a
    built-in field keeps the number the index gives it, whatever was declared before."""
    desc = message_class(extendee).DESCRIPTOR
    taken = {fd.number for fd in desc.fields}
    taken |= {fd.number for fd in _EXTENSIONS.get(desc.full_name, {}).values()}
    fixed = _builtin_number(desc.full_name, name)
    if fixed is not None and fixed not in taken:
        return fixed
    for number in wanted:
        if number not in taken and any(lo <= number < hi for lo, hi in desc.extension_ranges):
            return number
    number = _PRIVATE + zlib.crc32(f"{extendee}.{name}".encode()) % _SPAN
    while number in taken:
        number += 1
    return number


def _builtin_number(extendee: str, name: str) -> int | None:
    global _builtin_numbers
    if _builtin_numbers is None:
        from protocaffe.layers._index import EXTENSION_NUMBERS

        _builtin_numbers = EXTENSION_NUMBERS
    return _builtin_numbers.get((extendee, name))


def _attach(extendee: str, fd: FieldDescriptor) -> None:
    """Register extension `fd` by name and give the class a read-only attribute for it
    (upb messages refuse attribute assignment to non-fields: use `set_field`)."""
    cls = message_class(extendee)
    _EXTENSIONS.setdefault(cls.DESCRIPTOR.full_name, {})[fd.name] = fd
    _FIELDS.pop(cls.DESCRIPTOR.full_name, None)
    setattr(cls, fd.name, property(lambda self, fd=fd: self.Extensions[fd]))


def set_field(msg: Any, name: str, value: Any) -> None:
    """`msg.name = value` for a BVLC field or a fork (extension) scalar field."""
    fd = declared_fields(msg.DESCRIPTOR).get(name) or fields_by_name(msg.DESCRIPTOR)[name]
    if fd.is_extension:
        msg.Extensions[fd] = value
    else:
        setattr(msg, name, value)


# --- which dialect a net is read in --------------------------------------------------------


def fork_constructs(net: Any) -> set[str]:
    """The layer types of `net` and the fork fields it sets anywhere (see `fork_fields`)."""
    return {layer.type for layer in net.layer} | fork_fields(net)


def fork_fields(net: Any) -> set[str]:
    """The fork fields `net` sets anywhere (`construct_name`s: extensions of BVLC messages and
    the fields of fork messages); `PriorBoxParameter.min_size*` when a PriorBox lists several
    min_size values, which only SSD's repeated field allows."""
    found: set[str] = set()
    fork_messages = {cls.DESCRIPTOR.full_name for cls in _CLASSES.values()}
    todo = [net]
    while todo:
        msg = todo.pop()
        in_fork = msg.DESCRIPTOR.full_name in fork_messages
        for fd, value in msg.ListFields():
            if fd.is_extension or in_fork:
                found.add(construct_name(msg.DESCRIPTOR.name, fd.name))
                if fd.name == "min_size" and fd.is_repeated and len(value) > 1:
                    found.add(f"{msg.DESCRIPTOR.name}.min_size*")
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                todo.extend(value if fd.is_repeated else (value,))
    return found


def choose_dialect(net: Any, given: str | None = None, fields: set[str] | None = None) -> Any:
    """The dialects.Choice for `net`: `given` (--dialect), else the file's evidence (its
    `fork_fields`, when the caller has them, and its layer types)."""
    from protocaffe.proto import dialects

    if given is not None:
        return dialects.choose((), given)
    types = {layer.type for layer in net.layer}
    constructs = types | (fork_fields(net) if fields is None else fields)
    if not _all_declared:
        from protocaffe.layers._index import MODULES

        # The evidence of an undeclared field is only wanted for a name that could be one: a
        # fork field the net sets is declared (it was parsed), and no built-in type is one.
        if not types <= MODULES.keys():
            load_declarations()
    return dialects.choose(constructs, declared=FIELD_DIALECTS)
