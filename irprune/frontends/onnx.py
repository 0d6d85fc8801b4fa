"""ONNX frontend: a file or ``onnx.ModelProto`` -> IR graph.

What the IR does not model is kept so the emitter can write it back unchanged: everything outside
the main graph (opsets, functions, metadata) travels in a template ModelProto with the graph
cleared; graph inputs and outputs keep their original ValueInfoProto; attributes the IR does not
interpret (subgraphs, tensors, sparse tensors, type protos) stay serialized in ``Opaque``.

``Constant`` nodes become constant values (emitted as initializers), so every pass sees weights
and shape tensors the same way. Shape inference runs on a skeleton of the model in which large
initializers are replaced by typed graph inputs, so importing never copies the weights twice.

Weights a file keeps in external data are read lazily: ``read_source`` checks every location
(inside the model's folder, no absolute paths, no symlinks out) and keeps the main graph's large
external initializers as references; importing maps each one read-only (``np.memmap`` over its
offset and length), so a model larger than memory is read page by page as passes touch it.
Small tensors and tensors in attributes or subgraphs are read into the model when it is read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper, numpy_helper

from irprune.errors import InvalidModelError, UsageError
from irprune.ir import Graph, Node, Opaque, Shape, Value
from irprune.shapes import InputShapes, declared_inputs, resolve

log = logging.getLogger(__name__)

SUPPORTED_OPSETS = range(7, 24)
MAX_ELEMENTS = 1 << 28  # per value at batch 1 (1 GiB of float32): anything larger is refused
_SKELETON_MAX_BYTES = 4096  # initializers up to this size stay in the shape-inference skeleton

_SIMPLE_ATTRS = {
    onnx.AttributeProto.FLOAT,
    onnx.AttributeProto.INT,
    onnx.AttributeProto.STRING,
    onnx.AttributeProto.FLOATS,
    onnx.AttributeProto.INTS,
    onnx.AttributeProto.STRINGS,
}


# element types whose external bytes are numpy's little-endian layout (mapped as they are)
_MAPPABLE = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.INT8,
    onnx.TensorProto.INT16,
    onnx.TensorProto.INT32,
    onnx.TensorProto.INT64,
    onnx.TensorProto.UINT8,
    onnx.TensorProto.UINT16,
    onnx.TensorProto.UINT32,
    onnx.TensorProto.UINT64,
    onnx.TensorProto.BOOL,
}


@dataclass(frozen=True, eq=False)
class ModelSource:
    """A model as read for pruning.

    For a lazy source (``folder`` set) the main graph's large initializers are still external
    references into files inside ``folder`` (checked when read); ``import_model`` maps them.
    ``path`` is the file it came from, which onnxruntime can load directly."""

    model: onnx.ModelProto
    external: bool = False  # the file kept weights in external data (the output does too)
    path: Path | None = None
    folder: Path | None = None  # set when weights are still to be read from there
    tracer: str | None = None  # lowered from a torch module by this tracer ("fx" / "export")
    shapes: InputShapes | None = None  # the deployment shape (irprune.shapes); None: resolve

    def with_shapes(
        self,
        given: Mapping[str, Sequence[int]] | None = None,
        calibration: Mapping[str, Sequence[int]] | None = None,
    ) -> ModelSource:
        """This source with its deployment shape resolved (``irprune.shapes.resolve``)."""
        return replace(self, shapes=resolve(declared_inputs(self.model), given, calibration))

    @property
    def lazy(self) -> bool:
        return self.folder is not None

    def runnable(self) -> bytes | Path:
        """What ``emit.verify.session`` takes: the file it was read from (onnxruntime reads it,
        and maps its external data, without a serialized copy here), else the serialized model
        (large models: serialize once)."""
        if self.path is not None:
            return self.path
        return self.model.SerializeToString()


def load_model(source: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    """Read a model file (with its external data) or pass a ModelProto through."""
    return read_model(source)[0]


def read_model(source: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """``load_model``, and whether the file kept its weights in external data (the output then
    does too). Reads every weight into memory; ``read_source`` reads them lazily."""
    loaded = read_source(source, lazy=False)
    return loaded.model, loaded.external


def read_source(
    source: str | Path | onnx.ModelProto | ModelSource, *, lazy: bool = True
) -> ModelSource:
    """Read a model; with ``lazy`` the main graph's large external weights stay in their files
    (see ``ModelSource``). External locations are checked before any data file is opened."""
    if isinstance(source, ModelSource):
        return source
    if isinstance(source, onnx.ModelProto):
        return ModelSource(source)
    if not isinstance(source, str | Path):
        raise UsageError(
            f"cannot prune a {type(source).__name__}: give an ONNX file path, an onnx.ModelProto"
            " or a torch.nn.Module with example_inputs="
        )
    path = Path(source)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        raise InvalidModelError(f"{path}: not a readable ONNX model ({_first_line(exc)})") from exc
    if not model.HasField("graph") or not model.graph.node:
        raise InvalidModelError(f"{path}: not an ONNX model (no graph nodes)")
    external = uses_external_data(model)
    if not external:
        return ModelSource(model, path=path)
    _check_external_locations(model, path)
    try:
        if not lazy:
            external_data_helper.load_external_data_for_model(model, str(path.parent))
            return ModelSource(model, external=True, path=path)
        _read_small_tensors(model, path.parent)
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise InvalidModelError(f"{path}: cannot read external data ({_first_line(exc)})") from exc
    return ModelSource(model, external=True, path=path, folder=path.resolve().parent)


def _read_small_tensors(model: onnx.ModelProto, folder: Path) -> None:
    """Read into the model every external tensor a lazy source does not map: small ones (shape
    inference needs their values), types numpy cannot map, tensors in attributes and subgraphs."""
    tensors: list[onnx.TensorProto] = [
        t
        for t in model.graph.initializer
        if _tensor_nbytes(t) <= _SKELETON_MAX_BYTES or t.data_type not in _MAPPABLE
    ]
    tensors += _nested_tensors(model.graph)
    for tensor in tensors:
        if external_data_helper.uses_external_data(tensor):
            external_data_helper.load_external_data_for_tensor(tensor, str(folder))
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]


def _nested_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Tensors in node attributes and subgraphs: everything but ``graph``'s own initializers."""
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            for sub in _subgraphs(a):
                yield from sub.initializer
                yield from _nested_tensors(sub)


def map_external(
    tensor: onnx.TensorProto, folder: Path, files: dict[Path, np.memmap] | None = None
) -> np.ndarray:
    """A read-only ``np.memmap`` view of an external tensor's bytes in a file inside ``folder``.
    ``files`` holds one mapping per data file, shared by the tensors in it (one file descriptor
    per file, not per tensor)."""
    info = {e.key: e.value for e in tensor.external_data}
    where = f"external data of tensor {tensor.name!r}"
    location = info.get("location", "")
    target = (folder / location).resolve()
    if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
        raise InvalidModelError(f"{where}: location {location!r} is outside {folder}; refused")
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    shape = tuple(int(d) for d in tensor.dims)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    files = {} if files is None else files
    try:
        offset = int(info.get("offset", "0"))
        length = int(info.get("length", str(nbytes)))
        if nbytes and target not in files:
            files[target] = np.memmap(target, dtype=np.uint8, mode="r")
    except (ValueError, OSError) as exc:
        raise InvalidModelError(f"{where} is unreadable ({_first_line(exc)})") from exc
    if nbytes == 0:
        return np.zeros(shape, dtype)
    whole = files[target]
    if length != nbytes or offset < 0 or offset + nbytes > whole.size:
        raise InvalidModelError(
            f"{where}: {nbytes} bytes at offset {offset} do not fit (length {length}, file "
            f"{location!r} has {whole.size} bytes)"
        )
    return whole[offset : offset + nbytes].view(dtype).reshape(shape)


def external_files(path: Path) -> set[Path]:
    """The resolved external-data files a model file refers to (its weights are not read)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError):
        return set()
    return {
        (path.resolve().parent / e.value).resolve()
        for t in external_data_helper._get_all_tensors(model)
        for e in t.external_data
        if e.key == "location" and e.value
    }


def uses_external_data(model: onnx.ModelProto) -> bool:
    """Whether any tensor of ``model`` (subgraphs and attributes included) lives in a file."""
    return any(
        external_data_helper.uses_external_data(t)
        for t in external_data_helper._get_all_tensors(model)
    )


def _check_external_locations(model: onnx.ModelProto, path: Path) -> None:
    """Refuse external-data locations outside the model's folder, before anything is opened.

    A hostile model can name ``../../etc/passwd`` or an absolute path as a tensor's data file;
    recent onnx releases refuse these too, but the guard must not depend on the onnx version.
    Symlinks are resolved, so a link inside the folder pointing out of it is refused as well.
    """
    folder = path.resolve().parent
    for tensor in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        where = f"{path}: external data of tensor {tensor.name!r}"
        if not location:
            raise InvalidModelError(f"{where} has no location")
        if Path(location).is_absolute() or "\x00" in location:
            raise InvalidModelError(f"{where} is an absolute path ({location!r}); refused")
        target = (folder / location).resolve()
        if not target.is_relative_to(folder):
            raise InvalidModelError(
                f"{where} points outside the model's folder ({location!r}); refused"
            )
        if not target.is_file():
            raise InvalidModelError(f"{where}: {location!r} is missing")


def import_model(
    source: str | Path | onnx.ModelProto | ModelSource,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> Graph:
    """Load and convert a model to the IR, with inferred shapes on every value we can. External
    weights of a file (or lazy source) become read-only memory maps.

    Every value's ``shape`` keeps the model's symbolic dims; its ``sample`` is the shape at the
    deployment shape (``irprune.shapes``): the source's resolved ``shapes``, else
    ``input_shapes`` and the batch rule (``InputShapeError`` when a dim stays unknown)."""
    loaded = read_source(source)
    if loaded.shapes is None:
        loaded = loaded.with_shapes(input_shapes)
    assert loaded.shapes is not None
    model = loaded.model
    _check_opsets(model)
    inferred = _infer_shapes(model)
    graph = _Importer(model, inferred, loaded.folder).run()
    graph.meta["input_shapes"] = loaded.shapes
    if any(_unknown(v.shape) for v in graph.inputs):
        _attach_samples(graph, _infer_shapes(model, bind=loaded.shapes.sample))
    _check_sizes(graph)
    missing = [
        v.name for v in graph.values.values() if v.const is None and _unknown(v.sample_shape)
    ]
    if missing:
        _probe_samples(model, graph, missing, loaded.folder, loaded.shapes)
        _check_sizes(graph)
    return graph


def _check_sizes(graph: Graph) -> None:
    """Refuse shapes no run could produce (negative dims) or afford (huge attribute values):
    every later step runs the model in onnxruntime, which would fail or exhaust memory."""
    for v in graph.values.values():
        shape = v.sample_shape
        if v.const is not None or shape is None:
            continue
        dims = [d for d in shape if isinstance(d, int)]
        where = f"{v.producer.op_type} {v.producer.name!r}" if v.producer else "a graph input"
        if any(d < 0 for d in dims):
            raise InvalidModelError(
                f"{where} gives {v.name!r} the impossible shape {tuple(shape)}: its attributes "
                "do not fit its inputs (e.g. a kernel larger than the padded input)"
            )
        count = int(np.prod(dims, dtype=np.float64)) if dims else 1
        if count > MAX_ELEMENTS:
            raise InvalidModelError(
                f"{where} makes {v.name!r} hold {count:.3g} elements per sample (shape "
                f"{tuple(shape)}), over the {MAX_ELEMENTS:.3g} limit: check its attributes"
            )


def _unknown(shape: Shape | None) -> bool:
    return shape is None or not all(isinstance(d, int) for d in shape)


def _probe_samples(
    model: onnx.ModelProto,
    graph: Graph,
    names: list[str],
    folder: Path | None,
    shapes: InputShapes,
) -> None:
    """Shapes shape inference cannot see (run-time shape arithmetic, control-flow outputs), read
    off onnxruntime runs with those values exposed; models onnxruntime cannot run are left as
    they are. The run at the deployment shape gives per-sample shapes; a value shape inference
    could not type at all also takes its dtype and rank from it, with the dims that change in a
    run at the second shape (every symbolic input dim changed) left unknown, so the written
    value_info never pins a dim the inputs can change."""
    from irprune.emit.verify import random_inputs, session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for name in names:
        if name not in known:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    try:
        sess = session(probe, folder=folder)
        runs = [sess.run(names, random_inputs(sess, shapes=shapes.sample))]
        second = shapes.second()
        if second is not None and any(graph.values[n].shape is None for n in names):
            runs.append(sess.run(names, random_inputs(sess, shapes=second)))
    except Exception as exc:  # onnxruntime raises untyped errors
        log.info("shape probe skipped: %s", _first_line(exc))
        return
    for k, name in enumerate(names):
        arrays = [run[k] for run in runs]
        if not all(isinstance(a, np.ndarray) for a in arrays):
            continue  # a sequence or optional value: not a tensor
        value = graph.values[name]
        value.sample = tuple(int(d) for d in arrays[0].shape)
        if value.shape is None and len(arrays) > 1 and arrays[0].ndim == arrays[1].ndim:
            value.dtype = value.dtype or _np_to_onnx(arrays[0].dtype)
            value.shape = tuple(
                a if a == b else None for a, b in zip(arrays[0].shape, arrays[1].shape, strict=True)
            )


def _attach_samples(graph: Graph, types: dict[str, onnx.TypeProto]) -> None:
    for name, tp in types.items():
        value = graph.values.get(name)
        if value is not None and value.const is None:
            value.sample = tensor_shape(tp)[1]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _check_opsets(model: onnx.ModelProto) -> None:
    default = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not default:
        raise InvalidModelError("model declares no default-domain opset")
    if default[0] not in SUPPORTED_OPSETS:
        raise InvalidModelError(
            f"opset {default[0]} is outside the supported range "
            f"{SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}"
        )


def _infer_shapes(
    model: onnx.ModelProto, *, bind: Mapping[str, tuple[int, ...]] | None = None
) -> dict[str, onnx.TypeProto]:
    """Types of every value shape inference can reach, computed on a weight-free skeleton.

    The file's own ``value_info`` is a hint, not the truth: shapes are inferred without it and
    with it, and an entry (or what inference derived from it) is kept only where it agrees with
    the inference without it (same dtype and rank, equal static dims). It still carries what
    inference alone cannot see: symbolic dim names, outputs of ops without a schema. With
    ``bind`` (the deployment shape of each input), the graph inputs take those shapes first
    (the hints are dropped): dims that depend on them through run-time shape arithmetic become
    known, for costs at that shape.
    """
    clean = _infer_on_skeleton(model, [], bind=bind)
    if bind is not None or not model.graph.value_info:
        return clean
    try:
        hinted = _infer_on_skeleton(model, list(model.graph.value_info), bind=None)
    except InvalidModelError as exc:
        log.info("the model's value_info contradicts shape inference (%s); ignored", exc)
        return clean
    merged = dict(clean)
    for name, tp in hinted.items():
        if name not in clean or _agree(clean[name], tp):
            merged[name] = tp
        else:
            log.info("value_info of %r disagrees with shape inference; ignored", name)
    return merged


def _agree(a: onnx.TypeProto, b: onnx.TypeProto) -> bool:
    (ta, sa), (tb, sb) = tensor_shape(a), tensor_shape(b)
    if ta and tb and ta != tb:
        return False
    if sa is None or sb is None:
        return True
    return len(sa) == len(sb) and all(
        x == y for x, y in zip(sa, sb, strict=True) if isinstance(x, int) and isinstance(y, int)
    )


def _infer_on_skeleton(
    model: onnx.ModelProto,
    value_info: list[onnx.ValueInfoProto],
    *,
    bind: Mapping[str, tuple[int, ...]] | None,
) -> dict[str, onnx.TypeProto]:
    skeleton = _template(model)
    g, mg = skeleton.graph, model.graph
    for field_name in ("node", "input", "output"):
        getattr(g, field_name).extend(getattr(mg, field_name))
    g.value_info.extend(value_info)
    graph_inputs = {i.name for i in model.graph.input}
    for init in model.graph.initializer:
        if _tensor_nbytes(init) <= _SKELETON_MAX_BYTES:
            skeleton.graph.initializer.append(init)
        elif init.name not in graph_inputs:
            vi = onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
            skeleton.graph.input.append(vi)
    _clear_negative_dims(skeleton.graph)
    if bind is not None:
        _bind_inputs(skeleton.graph, bind)
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        if bind is not None:
            return {}
        raise InvalidModelError(
            f"ONNX shape inference rejects the model: {_first_line(exc)}"
        ) from exc
    types: dict[str, onnx.TypeProto] = {}
    for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        types[vi.name] = vi.type
    return types


def _bind_inputs(graph: onnx.GraphProto, shapes: Mapping[str, tuple[int, ...]]) -> None:
    inits = {t.name for t in graph.initializer}
    for vi in graph.input:
        if vi.name in inits or vi.name not in shapes or not vi.type.HasField("tensor_type"):
            continue
        dims = vi.type.tensor_type.shape.dim
        for d, size in zip(dims, shapes[vi.name], strict=True):
            d.Clear()
            d.dim_value = size
    del graph.value_info[:]


def _clear_negative_dims(graph: onnx.GraphProto) -> None:
    """A dim_value of -1 (paddle2onnx's "any size") is an unnamed dim for inference, not -1."""
    for vi in (*graph.input, *graph.output, *graph.value_info):
        if vi.type.HasField("tensor_type"):
            for d in vi.type.tensor_type.shape.dim:
                if d.HasField("dim_value") and d.dim_value < 0:
                    d.Clear()


def _tensor_nbytes(t: onnx.TensorProto) -> int:
    count = int(np.prod(t.dims)) if t.dims else 1
    return count * 8


def tensor_shape(tp: onnx.TypeProto) -> tuple[int, Shape | None]:
    """(element type, shape) of a tensor type; (0, None) for non-tensor types."""
    if not tp.HasField("tensor_type"):
        return 0, None
    tt = tp.tensor_type
    if not tt.HasField("shape"):
        return tt.elem_type, None
    dims: list[int | str | None] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(d.dim_value)
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tt.elem_type, tuple(dims)


class _Importer:
    def __init__(
        self, model: onnx.ModelProto, types: dict[str, onnx.TypeProto], folder: Path | None
    ) -> None:
        self.model = model
        self.folder = folder  # lazy source: external initializers are mapped from here
        self.files: dict[Path, np.memmap] = {}  # one mapping per external data file
        self.types = types
        self.graph = Graph(name=model.graph.name)
        self.output_names = {o.name for o in model.graph.output}

    def run(self) -> Graph:
        g, mg = self.graph, self.model.graph
        for opset in self.model.opset_import:
            g.opset_imports["" if opset.domain == "ai.onnx" else opset.domain] = opset.version
        g.meta["template"] = _template(self.model).SerializeToString()
        g.meta["io"] = {vi.name: vi.SerializeToString() for vi in (*mg.input, *mg.output)}
        g.meta["graph_doc"] = mg.doc_string
        if mg.sparse_initializer:
            raise InvalidModelError("sparse initializers are not supported")
        for init in mg.initializer:
            if self.folder is not None and external_data_helper.uses_external_data(init):
                array = map_external(init, self.folder, self.files)
            else:
                array = _to_array(init)
            self._add_const(init.name, array, init.data_type)
        for vi in mg.input:
            existing = g.values.get(vi.name)
            if existing is None:
                dtype, shape = tensor_shape(vi.type)
                existing = g.add_value(Value(vi.name, dtype, shape))
            g.inputs.append(existing)
        g.add_nodes(node for proto in mg.node if (node := self._node(proto)) is not None)
        for vi in mg.output:
            if vi.name not in g.values:
                raise InvalidModelError(f"graph output {vi.name!r} is never produced")
            g.outputs.append(g.values[vi.name])
        return g

    def _add_const(self, name: str, array: np.ndarray, dtype: int) -> Value:
        if name in self.graph.values:
            raise InvalidModelError(f"value {name!r} is defined twice")
        return self.graph.add_value(Value(name, dtype, tuple(array.shape), const=array))

    def _value(self, name: str, proto: onnx.NodeProto) -> Value | None:
        if not name:
            return None
        value = self.graph.values.get(name)
        if value is not None:
            return value
        reader = f"{proto.op_type} {proto.name!r}" if proto.name else proto.op_type
        if any(name in n.output for n in self.model.graph.node):
            raise InvalidModelError(
                f"{reader} reads {name!r} before the node producing it: the graph has a cycle "
                "or its nodes are not in topological order"
            )
        raise InvalidModelError(
            f"{reader} reads {name!r}, which no initializer, graph input or node provides "
            "(a missing initializer?)"
        )

    def _node(self, proto: onnx.NodeProto) -> Node | None:
        """The IR node of ``proto`` with its output values added; None for a Constant, which
        becomes a constant value."""
        is_constant = proto.op_type == "Constant" and proto.domain in ("", "ai.onnx")
        if is_constant and proto.output[0] not in self.output_names:
            array = _constant_value(proto)
            self._add_const(proto.output[0], array, _np_to_onnx(array.dtype))
            return None
        inputs = tuple(self._value(n, proto) for n in proto.input)
        outputs = []
        for name in proto.output:
            if not name:
                name = self.graph.unique_name(f"{proto.name or proto.op_type}_unused")
            if name in self.graph.values:
                raise InvalidModelError(f"value {name!r} is defined twice")
            dtype, shape = tensor_shape(self.types[name]) if name in self.types else (0, None)
            outputs.append(self.graph.add_value(Value(name, dtype, shape)))
        attrs: dict[str, Any] = {}
        implicit: list[Value] = []
        for a in proto.attribute:
            attrs[a.name] = _attr_value(a)
            for sub in _subgraphs(a):
                implicit += [v for n in _outer_names(sub) if (v := self.graph.values.get(n))]
        return Node(
            op_type=proto.op_type,
            domain=proto.domain,
            name=proto.name,
            attrs=attrs,
            inputs=inputs,
            outputs=tuple(outputs),
            implicit_inputs=tuple({id(v): v for v in implicit}.values()),
            doc_string=proto.doc_string,
        )


def _template(model: onnx.ModelProto) -> onnx.ModelProto:
    """Everything but the graph, copied field by field so the weights are never touched."""
    template = onnx.ModelProto()
    for desc, value in model.ListFields():
        if desc.name == "graph":
            continue
        repeated = getattr(desc, "is_repeated", None)  # protobuf >= 5; older ones have label
        if repeated if repeated is not None else desc.label == desc.LABEL_REPEATED:
            getattr(template, desc.name).extend(value)
        elif desc.message_type is not None:
            getattr(template, desc.name).CopyFrom(value)
        else:
            setattr(template, desc.name, value)
    return template


def _to_array(t: onnx.TensorProto) -> np.ndarray:
    try:
        return numpy_helper.to_array(t)
    except (ValueError, TypeError, OSError) as exc:
        raise InvalidModelError(
            f"initializer {t.name!r} is unreadable ({_first_line(exc)})"
        ) from exc


def _np_to_onnx(dtype: np.dtype) -> int:
    return onnx.helper.np_dtype_to_tensor_dtype(dtype)


def _constant_value(proto: onnx.NodeProto) -> np.ndarray:
    (attr,) = proto.attribute
    kind = attr.type
    if kind == onnx.AttributeProto.TENSOR:
        return _to_array(attr.t)
    if kind == onnx.AttributeProto.FLOAT:
        return np.array(attr.f, dtype=np.float32)
    if kind == onnx.AttributeProto.FLOATS:
        return np.array(list(attr.floats), dtype=np.float32)
    if kind == onnx.AttributeProto.INT:
        return np.array(attr.i, dtype=np.int64)
    if kind == onnx.AttributeProto.INTS:
        return np.array(list(attr.ints), dtype=np.int64)
    if kind == onnx.AttributeProto.STRING:
        return np.array(attr.s, dtype=object)
    if kind == onnx.AttributeProto.STRINGS:
        return np.array(list(attr.strings), dtype=object)
    raise InvalidModelError(f"Constant node {proto.name!r} has an unsupported {attr.name} value")


def _attr_value(a: onnx.AttributeProto) -> Any:
    if a.type in _SIMPLE_ATTRS and not a.ref_attr_name:
        value = onnx.helper.get_attribute_value(a)
        if not isinstance(value, list) or value:
            return value
    return Opaque(onnx.AttributeProto.AttributeType.Name(a.type), a.SerializeToString())


def _subgraphs(a: onnx.AttributeProto) -> list[onnx.GraphProto]:
    if a.type == onnx.AttributeProto.GRAPH:
        return [a.g]
    if a.type == onnx.AttributeProto.GRAPHS:
        return list(a.graphs)
    return []


def _outer_names(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph (recursively) reads from enclosing scopes."""
    local = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    local |= {o for n in graph.node for o in n.output}
    used: set[str] = {i for n in graph.node for i in n.input if i}
    used |= {o.name for o in graph.output}
    for n in graph.node:
        for a in n.attribute:
            for sub in _subgraphs(a):
                used |= _outer_names(sub)
    return used - local
